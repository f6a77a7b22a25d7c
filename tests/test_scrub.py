"""Scrubbing for exported tapes (seedtape/proxy/tapes/scrub.py): field paths, JSON and SSE bodies, secret headers."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedtape.proxy.headers import SECRET_HEADERS
from seedtape.proxy.tapes import scrub
from seedtape.proxy.tapes.scrub import SCRUBBED, FieldPath, parse_field

S = SCRUBBED


def paths(*texts: str) -> list[FieldPath]:
    return [parse_field(t) for t in texts]


# -- field paths -----------------------------------------------------------------------------------------


def test_a_path_names_where_and_its_steps():
    p = parse_field(" request.body.messages.*.content ")
    assert (p.where, p.steps) == ("request", ("body", "messages", "*", "content"))
    assert str(p) == p.text == "request.body.messages.*.content"
    assert parse_field("response.id") == FieldPath("response", ("id",), "response.id")


@pytest.mark.parametrize(
    "text", ["", "request", "response", "request.", "body.messages", "Request.id", "responses.id", "*.id", ".request.id"]
)
def test_a_path_must_start_with_request_or_response(text):
    with pytest.raises(ValueError, match=r"start with request\. or response\.") as info:
        parse_field(text)
    assert "e.g. request.body.messages.*.content" in str(info.value)  # it shows what a path looks like


@pytest.mark.parametrize("text", ["response..id", "response.id.", "request.body..x", "request.body.messages.*."])
def test_an_empty_step_is_refused(text):
    with pytest.raises(ValueError, match="empty step"):
        parse_field(text)


# -- values ------------------------------------------------------------------------------------------------

DOC = {
    "id": "chatcmpl-1",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "secret a"}},
        {"index": 1, "message": {"role": "assistant", "content": "secret b"}},
    ],
    "usage": {"total_tokens": 5},
}


def test_a_key_path_replaces_one_value():
    out, n = scrub.value(DOC, paths("response.id"))
    assert n == 1 and out == {**DOC, "id": S}


def test_star_reaches_every_item_of_an_array():
    out, n = scrub.value(DOC, paths("response.choices.*.message.content"))
    assert n == 2
    assert [c["message"]["content"] for c in out["choices"]] == [S, S]
    assert [c["message"]["role"] for c in out["choices"]] == ["assistant", "assistant"]


def test_star_reaches_every_key_of_an_object():
    out, n = scrub.value(DOC, paths("response.usage.*", "response.choices.0.message.*"))
    assert n == 3
    assert out["usage"] == {"total_tokens": S}
    assert out["choices"][0]["message"] == {"role": S, "content": S}
    assert out["choices"][1] == DOC["choices"][1]


def test_an_index_reaches_one_item():
    out, n = scrub.value(DOC, paths("response.choices.1.message.content"))
    assert n == 1
    assert [c["message"]["content"] for c in out["choices"]] == ["secret a", S]


def test_a_whole_subtree_can_be_scrubbed():
    out, n = scrub.value(DOC, paths("response.choices"))
    assert n == 1 and out["choices"] == S


@pytest.mark.parametrize(
    "text",
    [
        "response.nope",
        "response.choices.2.message",
        "response.choices.-1",
        "response.choices.x",
        "response.choices.\u0663",  # an Arabic-Indic digit is no index
        "response.id.deeper",
        "response.usage.total_tokens.x",
        "response.choices.*.nope",
    ],
)
def test_a_path_that_reaches_nothing_changes_nothing(text):
    out, n = scrub.value(DOC, paths(text))
    assert (out, n) == (DOC, 0)


def test_a_digit_step_on_an_object_is_a_key():
    out, n = scrub.value({"0": "zero", "1": "one"}, paths("response.0"))
    assert (out, n) == ({"0": S, "1": "one"}, 1)


def test_the_document_is_copied_not_changed():
    before = copy.deepcopy(DOC)
    out, n = scrub.value(DOC, paths("response.choices.*.message.content"))
    assert n == 2 and before == DOC and out is not DOC


def test_no_paths_return_the_document_itself():
    assert scrub.value(DOC, []) == (DOC, 0)


def test_request_applies_only_request_paths():
    req = {"v": 1, "method": "POST", "path": "/v1/chat/completions", "body": {"user": "u-1", "id": "keep"}}
    out, n = scrub.request(req, paths("request.body.user", "response.id", "request.namespace"))
    assert n == 1
    assert out == {**req, "body": {"user": S, "id": "keep"}}


json_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from(["a", "b", "0", "1"]), kids, max_size=3),
    max_leaves=12,
)
steps = st.lists(st.sampled_from(["a", "b", "0", "1", "*"]), min_size=1, max_size=4)


def reachable(node: object, steps: list[str]) -> int:
    """How many values a path reaches, counted independently of scrub."""
    head, rest = steps[0], steps[1:]
    if isinstance(node, dict):
        kids = list(node.values()) if head == "*" else [node[head]] if head in node else []
    elif isinstance(node, list):
        kids = node if head == "*" else [node[int(head)]] if head.isdigit() and int(head) < len(node) else []
    else:
        kids = []
    return len(kids) if not rest else sum(reachable(k, rest) for k in kids)


@settings(max_examples=200, deadline=None)
@given(doc=json_docs, steps=steps)
def test_the_count_is_the_number_of_values_the_path_reaches(doc, steps):
    path = FieldPath("response", tuple(steps), "response." + ".".join(steps))
    out, n = scrub.value(doc, [path])
    assert n == reachable(doc, steps)
    if n:
        assert SCRUBBED in json.dumps(out)
    else:
        assert out == doc
    again, _ = scrub.value(out, [path])
    assert again == out  # scrubbing twice gives the same document


# -- bodies ----------------------------------------------------------------------------------------------------


def test_a_compact_json_body_stays_compact():
    data = b'{"id":"chatcmpl-1","content":"caf\xc3\xa9"}'
    out, n = scrub.body(data, "json", paths("response.id"))
    assert n == 1
    assert out == '{"id":"[scrubbed]","content":"café"}'.encode()  # UTF-8 kept as it is, not \\u escapes


def test_a_multi_line_json_body_is_indented_by_two():
    data = json.dumps({"id": "x", "n": [1, 2]}, indent=4).encode()
    out, n = scrub.body(data, "json", paths("response.id"))
    assert n == 1
    assert out == json.dumps({"id": S, "n": [1, 2]}, indent=2).encode()


def test_an_unchanged_body_keeps_its_exact_bytes():
    data = b'{ "id" :  "x",\n"\\u00e9": 1.50 }'
    assert scrub.body(data, "json", paths("response.nope")) == (data, 0)
    assert scrub.body(data, "json", paths("request.body.id")) == (data, 0)  # request paths never touch a response
    assert scrub.body(data, "json", []) == (data, 0)


@pytest.mark.parametrize("data", [b"not json", b"\xff\xfe", b""])
def test_a_body_that_is_not_json_is_left_alone(data):
    assert scrub.body(data, "json", paths("response.id")) == (data, 0)


def test_lone_surrogates_stay_json_escapes():
    out, n = scrub.body(b'{"id": "a", "t": "\\ud800"}', "json", paths("response.id"))
    assert n == 1 and out == b'{"id":"[scrubbed]","t":"\\ud800"}'
    assert json.loads(out)["t"] == "\ud800"


SSE = (
    b'data: {"id": "c1", "choices": [{"delta": {"content": "secret"}}]}\r\n'
    b"\r\n"
    b': a comment with {"id": 1}\n'
    b"event: ignored\n"
    b'data:{"id":"c2","choices":[{"delta":{"content":"more"}}]}\n'
    b"\n"
    b'data: {"object": "usage", "choices": []}\n'
    b"\n"
    b"data: not json\n"
    b"\n"
    b"data: [DONE]\n"
    b"\n"
)


def test_in_a_stream_only_the_data_lines_that_changed_are_rewritten():
    out, n = scrub.body(SSE, "sse", paths("response.id"))
    assert n == 2
    lines_in, lines_out = SSE.splitlines(keepends=True), out.splitlines(keepends=True)
    assert len(lines_in) == len(lines_out)
    changed = [(a, b) for a, b in zip(lines_in, lines_out) if a != b]
    assert changed == [
        (lines_in[0], b'data: {"id":"[scrubbed]","choices":[{"delta":{"content":"secret"}}]}\r\n'),  # its CRLF kept
        (lines_in[4], b'data: {"id":"[scrubbed]","choices":[{"delta":{"content":"more"}}]}\n'),
    ]


def test_a_stream_path_reaches_into_every_event():
    out, n = scrub.body(SSE, "sse", paths("response.choices.*.delta.content"))
    assert n == 2
    assert b"secret" not in out and b"more" not in out
    assert out.endswith(b"data: not json\n\ndata: [DONE]\n\n")


def test_a_stream_nothing_reaches_is_unchanged():
    assert scrub.body(SSE, "sse", paths("response.nope")) == (SSE, 0)
    assert scrub.body(SSE, "sse", paths("request.body.messages")) == (SSE, 0)


def test_a_json_scalar_event_is_not_scrubbed():
    data = b'data: "a string"\n\ndata: 42\n\n'
    assert scrub.body(data, "sse", paths("response.*")) == (data, 0)


# -- headers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        *sorted(SECRET_HEADERS),
        "Authorization",
        "X-API-Key",
        "x-goog-api-key",
        "apikey",
        "x-auth-token",
        "X-Session-Id",
        "x-client-secret",
        "x-db-password",
        "COOKIE",
        "set-cookie2",
        "proxy-authenticate",
    ],
)
def test_secret_header_names_are_always_dropped(name):
    assert scrub.headers([[name, "v"]]) == ([], 0)


@pytest.mark.parametrize(
    "name",
    [
        "content-type",
        "x-request-id",
        "openai-processing-ms",
        "openai-version",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "openai-model",
        "date",
    ],
)
def test_ordinary_header_names_are_kept(name):
    assert scrub.headers([[name, "v"]]) == ([[name, "v"]], 0)


def test_headers_drop_secrets_always_and_named_ones_on_request():
    pairs = [
        ["Content-Type", "application/json"],
        ["Authorization", "Bearer sk-1"],
        ["x-request-id", "req_1"],
        ["OpenAI-Organization", "org-1"],
        ["X-Ratelimit-Limit-Requests", "100"],
        ["x-request-id", "req_2"],
        ["set-cookie", "a=b"],
    ]
    out, dropped = scrub.headers(pairs, drop=["X-Request-ID", "not-there"])
    assert out == [["Content-Type", "application/json"], ["X-Ratelimit-Limit-Requests", "100"]]
    assert dropped == 2  # the two x-request-id lines; secrets are not counted
    out, dropped = scrub.headers(pairs)
    assert out == [
        ["Content-Type", "application/json"],
        ["x-request-id", "req_1"],
        ["X-Ratelimit-Limit-Requests", "100"],
        ["x-request-id", "req_2"],
    ]
    assert dropped == 0
