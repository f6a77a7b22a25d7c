"""The SSE parser and renderer (seedtape/proxy/streams/sse.py): WHATWG event-stream rules, any chunking."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from seedtape.proxy.streams.sse import DONE, Event, SSEParser, parse, render

PROPS = settings(max_examples=300, deadline=None)


def feed_pieces(pieces: list[bytes]) -> tuple[list[Event], bool]:
    """Events from feeding ``pieces`` one by one, then closing; and whether the parser saw a non-UTF-8 line."""
    p = SSEParser()
    out: list[Event] = []
    for piece in pieces:
        out += p.feed(piece)
    out += p.close()
    return out, p.malformed


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


# Pieces that make up event streams: field names with and without the space, every line end,
# comments, unknown fields, a multi-byte character (split across feeds by the property), bad UTF-8.
TOKENS = [
    b"data:",
    b"data: ",
    b"event: ",
    b"event:",
    b"id: ",
    b": comment",
    b":",
    b"retry: 5",
    b"foo: bar",
    b"data",
    b"x",
    b'{"a": 1}',
    b" ",
    b"[DONE]",
    b"\r",
    b"\n",
    b"\r\n",
    b"\n\n",
    b"\r\n\r\n",
    b"\xc3\xa9",
    b"\xe2\x82\xac",
    b"\xff",
    b"\xc3",
]
streams = st.one_of(st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join), st.binary(max_size=80))


# -- any chunking -------------------------------------------------------------------------------------


@PROPS
@given(data=streams, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12))
@example(data=b"data: a\r\ndata: b\r\n\r\n", cuts=[8])  # a CRLF split between its CR and its LF
@example(data=b"data: caf\xc3\xa9\n\n", cuts=[10])  # a UTF-8 character split in two
@example(data=b"data: a\r\rdata: b\r", cuts=[8, 9])
def test_any_split_gives_the_events_of_feeding_it_all_at_once(data, cuts):
    whole = parse(data)
    assert feed_pieces(split_at(data, cuts)) == feed_pieces([data])
    assert feed_pieces(split_at(data, cuts))[0] == whole


@PROPS
@given(data=streams)
def test_byte_by_byte_gives_the_same_events(data):
    assert feed_pieces([data[i : i + 1] for i in range(len(data))]) == feed_pieces([data])


def test_a_cr_at_the_end_of_a_piece_waits_for_a_possible_lf():
    p = SSEParser()
    assert p.feed(b"data: a\r") == []
    assert p.pending
    assert p.feed(b"\n") == []  # CRLF: one line end, not two (a blank line would have dispatched)
    assert p.feed(b"\r\n") == [Event("a")]
    assert not p.pending


# -- line ends --------------------------------------------------------------------------------------------


DOC = "event: delta\n: a comment\ndata: one\ndata: two\n\ndata: three\n\n"
EXPECTED = [Event("one\ntwo", "delta"), Event("three")]


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_every_line_end_gives_the_same_events(eol):
    assert parse(DOC.replace("\n", eol).encode()) == EXPECTED


def test_mixed_line_ends_in_one_stream():
    assert parse(b"data: a\rdata: b\n\r\ndata: c\r\n\r") == [Event("a\nb"), Event("c")]


def test_two_crs_are_two_line_ends():
    assert parse(b"data: a\r\rdata: b\r\r") == [Event("a"), Event("b")]


# -- fields --------------------------------------------------------------------------------------------------


def test_comments_are_ignored():
    assert parse(b": keep-alive\n\n:\n\ndata: x\n: between\n\n") == [Event("x")]


def test_multi_line_data_joins_with_lf():
    assert parse(b"data: line 1\ndata:\ndata: line 3\n\n") == [Event("line 1\n\nline 3")]


def test_one_leading_space_is_removed_and_only_one():
    assert parse(b"data:x\n\ndata: x\n\ndata:  x\n\n") == [Event("x"), Event("x"), Event(" x")]


def test_a_value_keeps_later_colons():
    assert parse(b'data: {"a": "b:c"}\n\n') == [Event('{"a": "b:c"}')]


def test_a_field_name_without_colon_has_an_empty_value():
    assert parse(b"data\n\n") == [Event("")]
    assert parse(b"data\ndata\n\n") == [Event("\n")]


def test_event_field_names_one_event_only():
    events = parse(b"event: response.created\ndata: {}\n\ndata: plain\n\n")
    assert events == [Event("{}", "response.created"), Event("plain")]


def test_an_event_name_without_data_dispatches_nothing_and_does_not_leak():
    assert parse(b"event: ping\n\ndata: after\n\n") == [Event("after")]


def test_unknown_fields_are_ignored():
    assert parse(b"retry: 1000\nfoo: bar\ndata: x\nDATA: no\n\n") == [Event("x")]


def test_id_is_kept_for_later_events_as_the_last_event_id():
    assert parse(b"id: 7\ndata: a\n\ndata: b\n\n") == [Event("a", "", "7"), Event("b", "", "7")]


def test_blank_lines_alone_give_no_events():
    assert parse(b"\n\n\r\n\r\r") == []
    assert parse(b"") == []


# -- the end of the stream -------------------------------------------------------------------------------


def test_a_final_event_without_its_blank_line_is_dispatched_at_close():
    p = SSEParser()
    assert p.feed(b"data: first\n\ndata: last") == [Event("first")]
    assert p.pending
    assert p.close() == [Event("last")]
    assert not p.pending


@pytest.mark.parametrize("tail", [b"data: last\n", b"data: last\r", b"data: last\r\n", b"data: last"])
def test_close_dispatches_whatever_line_end_the_last_line_had(tail):
    assert parse(b"data: a\n\n" + tail) == [Event("a"), Event("last")]


def test_close_with_only_an_event_name_pending_dispatches_nothing():
    p = SSEParser()
    assert p.feed(b"event: x\n") == []
    assert p.close() == []


def test_done_is_an_ordinary_event_to_the_parser():
    assert DONE == "[DONE]"
    assert parse(b"data: {}\n\ndata: [DONE]\n\n") == [Event("{}"), Event(DONE)]


# -- bytes that are not UTF-8 ----------------------------------------------------------------------------


def test_a_line_that_is_not_utf8_sets_malformed_and_is_replaced():
    p = SSEParser()
    events = p.feed(b"data: ok\n\ndata: \xff\xfe\n\n")
    assert events == [Event("ok"), Event("\ufffd\ufffd")]
    assert p.malformed
    p.feed(b"data: fine again\n\n")
    assert p.malformed  # it stays set


def test_valid_utf8_never_sets_malformed():
    events, malformed = feed_pieces([b"data: caf\xc3", b"\xa9 \xe2\x82", b"\xac\n\n"])
    assert events == [Event("café €")] and not malformed


def test_a_comment_that_is_not_utf8_sets_malformed_too():
    events, malformed = feed_pieces([b": \xff\ndata: x\n\n"])
    assert events == [Event("x")] and malformed


# -- render ------------------------------------------------------------------------------------------------


def test_render_writes_event_and_data_lines_and_a_blank_line():
    assert render([Event("a\nb", "delta"), Event(DONE)]) == b"event: delta\ndata: a\ndata: b\n\ndata: [DONE]\n\n"


text_without_cr = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r"), max_size=30)
name = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"), max_size=10)
events_st = st.lists(st.builds(Event, data=text_without_cr, event=name), max_size=8)


@PROPS
@given(events=events_st)
def test_render_then_parse_round_trips(events):
    """Data may hold LFs (several data lines); ids are not rendered (see test_render_drops_the_id)."""
    assert parse(render(events)) == events


@PROPS
@given(data=streams)
def test_parse_then_render_then_parse_keeps_data_and_event_names(data):
    events = [Event(e.data, e.event) for e in parse(data)]  # a parsed event never holds a CR
    assert parse(render(events)) == events


def test_render_drops_the_id():
    assert render([Event("x", "", "7")]) == b"data: x\n\n"
