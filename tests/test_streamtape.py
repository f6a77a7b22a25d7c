"""Taping a live stream and judging whether it is complete (seedtape/proxy/streams/streamtape.py), chat dialect."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedtape.proxy.dialects import CHAT, NO_FINGERPRINT
from seedtape.proxy.streams.streamtape import StreamTape

DONE = b"data: [DONE]\n\n"


def event(doc: object) -> bytes:
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def chunk(content: str | None = None, finish: str | None = None, fp: str | None = "fp_1", **extra) -> dict:
    delta = {"content": content} if content is not None else {}
    out = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    if fp is not None:
        out["system_fingerprint"] = fp
    return out


CHUNKS = [chunk(""), chunk("Hel"), chunk("lo"), chunk(finish="stop")]
USAGE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": {"total_tokens": 3}}
COMPLETE = b"".join(event(c) for c in [*CHUNKS, USAGE]) + DONE


def tape(*pieces: bytes) -> StreamTape:
    t = StreamTape(CHAT)
    for p in pieces:
        t.feed(p)
    return t


# -- complete streams ------------------------------------------------------------------------------------


def test_a_complete_stream_is_recordable():
    t = tape(COMPLETE, b"")
    assert t.verdict() == ""
    assert t.done and t.ended and not t.problem
    assert t.chunks == [*CHUNKS, USAGE]  # every JSON chunk, without the [DONE]
    assert bytes(t.raw) == COMPLETE


def test_done_alone_is_enough_when_the_client_side_ends_first():
    t = tape(COMPLETE)  # [DONE] arrived; the body has not closed (yet)
    assert t.done and not t.ended
    assert t.verdict() == ""


def test_a_clean_end_with_a_finish_reason_but_no_done_is_recordable():
    t = tape(b"".join(event(c) for c in CHUNKS), b"")
    assert t.ended and not t.done
    assert t.verdict() == ""


def test_a_last_event_without_its_blank_line_counts_at_a_clean_end():
    body = b"".join(event(c) for c in CHUNKS)[:-1]  # one LF short
    t = tape(body)
    assert len(t.chunks) == len(CHUNKS) - 1  # not dispatched yet
    t.feed(b"")
    assert t.chunks == CHUNKS and t.verdict() == ""


def test_comments_and_crlf_are_fine():
    body = b": keep-alive\r\n\r\n" + b"".join(event(c) for c in CHUNKS).replace(b"\n", b"\r\n") + b"data: [DONE]\r\n\r\n"
    t = tape(body, b"")
    assert t.chunks == CHUNKS and t.verdict() == ""


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(0, len(COMPLETE)), max_size=20))
def test_any_chunking_tapes_the_same_stream(cuts):
    points = sorted(set(cuts))
    pieces = [COMPLETE[a:b] for a, b in zip([0, *points], [*points, len(COMPLETE)]) if b > a]
    t = tape(*pieces, b"")
    assert bytes(t.raw) == COMPLETE
    assert t.chunks == [*CHUNKS, USAGE] and t.verdict() == ""
    offsets = [g[0] for g in t.gaps]
    assert offsets == [sum(len(p) for p in pieces[: i + 1]) for i in range(len(pieces))]


# -- incomplete streams ------------------------------------------------------------------------------------


def test_a_cut_stream_is_not_recordable():
    t = tape(COMPLETE[: len(COMPLETE) // 2])
    assert not t.done and not t.ended
    assert "did not finish" in t.verdict()


def test_a_cut_in_the_middle_of_an_event_leaves_that_event_out():
    body = event(CHUNKS[0]) + event(CHUNKS[1])[:20]
    t = tape(body)
    assert t.chunks == [CHUNKS[0]]
    assert "did not finish" in t.verdict()


def test_a_clean_end_without_a_finish_reason_is_not_recordable():
    t = tape(b"".join(event(c) for c in CHUNKS[:3]), b"")
    assert "finish_reason" in t.verdict()


def test_done_without_a_finish_reason_is_not_recordable():
    t = tape(b"".join(event(c) for c in CHUNKS[:3]) + DONE)
    assert t.done and "finish_reason" in t.verdict()


@pytest.mark.parametrize("body", [DONE, b"", b": only a comment\n\n"], ids=["done-only", "empty", "comment-only"])
def test_a_stream_without_chunks_is_not_recordable(body):
    t = tape(body, b"")
    assert t.chunks == [] and "no events" in t.verdict()


# -- problems ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        event({"error": {"message": "overloaded", "type": "server_error"}}),
        event(["not", "an", "object"]),
        event("a string"),
    ],
    ids=["error-object", "array", "string"],
)
def test_an_error_event_makes_the_stream_unrecordable(bad):
    t = tape(event(CHUNKS[0]) + bad + b"".join(event(c) for c in CHUNKS[1:]) + DONE, b"")
    assert "error event" in t.verdict()
    assert t.chunks == CHUNKS  # the bad event is not taken as a chunk


def test_an_event_that_is_not_json_makes_the_stream_unrecordable():
    t = tape(event(CHUNKS[0]) + b"data: {truncated\n\n" + b"".join(event(c) for c in CHUNKS[1:]) + DONE, b"")
    assert "not JSON" in t.verdict()


def test_an_event_that_is_not_utf8_makes_the_stream_unrecordable():
    t = tape(b"".join(event(c) for c in CHUNKS) + b": \xff\xfe\n\n" + DONE, b"")
    assert "UTF-8" in t.verdict()


@pytest.mark.parametrize("after", [event(CHUNKS[1]), DONE, b"data: \n\n"], ids=["chunk", "second-done", "empty-data"])
def test_events_after_done_make_the_stream_unrecordable(after):
    t = tape(COMPLETE + after, b"")
    assert t.verdict() != ""
    assert t.chunks == [*CHUNKS, USAGE]  # nothing after the end is taken


def test_a_comment_after_done_is_harmless():
    assert tape(COMPLETE + b": bye\n\n", b"").verdict() == ""


def test_the_first_problem_is_the_one_reported():
    t = tape(b"data: {bad\n\n" + event({"error": {"message": "x"}}) + COMPLETE, b"")
    assert "not JSON" in t.verdict()


# -- what the tape records about the stream ---------------------------------------------------------------


def test_gaps_record_each_read_with_increasing_offsets_and_times():
    pieces = [COMPLETE[:10], COMPLETE[10:11], COMPLETE[11:200], COMPLETE[200:]]
    t = tape(*pieces, b"")
    assert [g[0] for g in t.gaps] == [10, 11, 200, len(COMPLETE)]
    times = [g[1] for g in t.gaps]
    assert times[0] == 0 and times == sorted(times)
    assert len(t.gaps) == len(pieces)  # the clean end is not a read


def test_fingerprint_is_the_first_one_a_chunk_names():
    t = tape(
        event(chunk("", fp=None))
        + event(chunk("a", fp=""))
        + event(chunk("b", fp="fp_first"))
        + event(chunk(finish="stop", fp="fp_later"))
        + DONE
    )
    assert t.fingerprint == "fp_first"


def test_a_stream_that_names_no_fingerprint_gets_the_model_or_the_stand_in():
    t = tape(b"".join(event(chunk(c, f, fp=None)) for c, f in [("a", None), (None, "stop")]) + DONE)
    assert t.verdict() == ""
    assert t.fingerprint == "model:gpt-4o-mini-2024-07-18"
    bare = tape(b"".join(event(chunk(c, f, fp=None, model=None)) for c, f in [("a", None), (None, "stop")]) + DONE)
    assert bare.fingerprint == NO_FINGERPRINT


def test_model_is_the_first_one_a_chunk_names():
    assert tape(COMPLETE).model == "gpt-4o-mini-2024-07-18"
