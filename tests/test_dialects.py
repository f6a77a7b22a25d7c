"""The API dialects: matching, streams that end, and folding a stream into one answer and back.

Round trips are the spec of cross-format replay: unfolding a JSON answer and
folding the chunks gives the answer back (in every field the SDK reads), and
folding a recorded stream then unfolding gives chunks that fold to the same.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seedtape.proxy import dialects
from seedtape.proxy.dialects import CHAT, COMPLETIONS, EMBEDDINGS, NO_FINGERPRINT
from seedtape.proxy.streams.sse import Event, parse
from seedtape.proxy.streams.streamtape import StreamTape


@pytest.mark.parametrize("method, path, name", [
    ("POST", "/v1/chat/completions", "chat.completions"),
    ("post", "/openai/deployments/d/chat/completions", "chat.completions"),
    ("POST", "/v1/completions", "completions"),
    ("POST", "/gateway/v1/embeddings", "embeddings"),
    ("GET", "/v1/chat/completions", None),
    ("POST", "/v1/models", None),
    ("POST", "/v1/chat/completions/extra", None),
])
def test_match(method, path, name):
    d = dialects.match(method, path)
    assert (d.name if d else None) == name


def test_named_and_the_registry():
    assert [d.name for d in dialects.ALL] == ["chat.completions", "completions", "embeddings", "responses"]
    assert dialects.named("embeddings") is EMBEDDINGS
    with pytest.raises(KeyError):
        dialects.named("images")
    assert (CHAT.takes_seed, COMPLETIONS.takes_seed, EMBEDDINGS.takes_seed) == (True, True, False)
    assert not EMBEDDINGS.can_stream


@pytest.mark.parametrize("body, path", [
    ({"messages": []}, "/v1/chat/completions"), ({"prompt": "x"}, "/v1/completions"),
    ({"input": "x", "model": "text-embedding-3-small"}, "/v1/embeddings"), ({"model": "m"}, "/v1/chat/completions"),
    ({"input": "x", "model": "gpt-4o-mini"}, "/v1/responses"), ({"input": [{"role": "user", "content": "x"}]}, "/v1/responses"),
])
def test_guess_path(body, path):
    assert dialects.guess_path(body) == path


def test_fingerprint_and_model():
    assert CHAT.fingerprint({"system_fingerprint": "fp_1"}) == "fp_1"
    assert CHAT.fingerprint({"system_fingerprint": ""}) == NO_FINGERPRINT
    assert CHAT.fingerprint({}) == NO_FINGERPRINT and CHAT.fingerprint(None) == NO_FINGERPRINT
    assert CHAT.stream_fingerprint([{"x": 1}, {"system_fingerprint": "fp_2"}]) == "fp_2"
    assert CHAT.model({"model": "gpt-4o"}) == "gpt-4o" and CHAT.stream_model([{}, {"model": "m"}]) == "m"


def test_answer_problem():
    assert CHAT.answer_problem({"choices": []}) == ""
    assert CHAT.answer_problem({"error": {"message": "no"}})
    assert CHAT.answer_problem(["not", "an", "object"])


text = st.text(max_size=30)
tool_call = st.fixed_dictionaries({"id": st.text(min_size=1, max_size=8), "type": st.just("function"),
                                   "function": st.fixed_dictionaries({"name": st.text(min_size=1, max_size=8),
                                                                      "arguments": text})})
chat_choice = st.fixed_dictionaries({
    "message": st.fixed_dictionaries({
        "role": st.just("assistant"), "content": st.none() | text, "refusal": st.none() | st.text(min_size=1, max_size=10),
    }, optional={"tool_calls": st.lists(tool_call, min_size=1, max_size=3)}),
    "finish_reason": st.sampled_from(["stop", "length", "tool_calls", "content_filter"]),
    "logprobs": st.none(),
})
usage = st.fixed_dictionaries({"prompt_tokens": st.integers(0, 99), "completion_tokens": st.integers(0, 99),
                               "total_tokens": st.integers(0, 200)})


def chat_answer(choices, use):
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "system_fingerprint": "fp_x", "choices": [{"index": i, **c} for i, c in enumerate(choices)], "usage": use}


def sdk_view(doc: dict) -> list:
    """What the SDK exposes per choice: content, refusal, tool calls, finish_reason."""
    out = []
    for c in doc["choices"]:
        m = c["message"]
        out.append((c["index"], m.get("content"), m.get("refusal"), c["finish_reason"],
                    [(t["id"], t["function"]["name"], t["function"]["arguments"]) for t in m.get("tool_calls") or []]))
    return out


@given(st.lists(chat_choice, min_size=1, max_size=3), usage, st.booleans())
def test_chat_unfold_then_fold_gives_the_answer_back(choices, use, include_usage):
    doc = chat_answer(choices, use)
    folded = CHAT.fold(CHAT.unfold(doc, include_usage))
    assert sdk_view(folded) == sdk_view(doc)
    assert folded["usage"] == (use if include_usage else None)
    assert {k: folded[k] for k in ("id", "created", "model", "system_fingerprint")} == \
           {k: doc[k] for k in ("id", "created", "model", "system_fingerprint")}


@given(st.lists(chat_choice, min_size=1, max_size=3), usage)
def test_chat_bytes_round_trip_both_ways(choices, use):
    doc = chat_answer(choices, use)
    stream = CHAT.to_stream(json.dumps(doc).encode(), include_usage=True)
    assert parse(stream)[-1] == Event("[DONE]")
    back = json.loads(CHAT.to_json(stream))
    assert sdk_view(back) == sdk_view(doc) and back["usage"] == use
    again = CHAT.to_stream(CHAT.to_json(stream), include_usage=True)
    assert CHAT.chunks(again) == CHAT.chunks(stream)  # a fixed point after one fold


def test_chat_fold_joins_fragmented_tool_call_arguments():
    chunks = [
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": None,
                                                                      "tool_calls": [{"index": 0, "id": "call_1",
                                                                                      "type": "function",
                                                                                      "function": {"name": "get",
                                                                                                   "arguments": ""}}]}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": 1}'}}]}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    call = CHAT.fold(chunks)["choices"][0]["message"]["tool_calls"][0]
    assert call == {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": '{"city": 1}'}}


def test_without_usage_drops_only_the_usage_chunk():
    chunks = CHAT.unfold(chat_answer([{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                                     {"total_tokens": 3}), include_usage=True)
    kept = CHAT.without_usage(chunks)
    assert len(kept) == len(chunks) - 1 and all(c.get("choices") for c in kept)
    body = CHAT.render(chunks)
    assert CHAT.chunks(CHAT.restream(body, include_usage=False)) == kept
    assert CHAT.restream(body, include_usage=True) == body


@given(st.lists(st.tuples(text, st.sampled_from(["stop", "length"])), min_size=1, max_size=3), usage)
def test_completions_round_trip(choices, use):
    doc = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m", "system_fingerprint": "fp",
           "choices": [{"index": i, "text": t, "logprobs": None, "finish_reason": f} for i, (t, f) in enumerate(choices)],
           "usage": use}
    back = COMPLETIONS.fold(COMPLETIONS.unfold(doc, include_usage=True))
    assert [(c["text"], c["finish_reason"]) for c in back["choices"]] == list(choices)
    assert back["usage"] == use
    assert COMPLETIONS.outputs(back) == COMPLETIONS.outputs(doc)


def test_embeddings_outputs_and_no_streams():
    doc = {"data": [{"index": 1, "embedding": [0.5]}, {"index": 0, "embedding": [0.1]}]}
    assert EMBEDDINGS.outputs(doc) == [{"index": 1, "embedding": [0.5]}, {"index": 0, "embedding": [0.1]}]
    assert EMBEDDINGS.output_group == "data"
    with pytest.raises(NotImplementedError, match="never streams"):
        EMBEDDINGS.fold([])


def tape_of(dialect, body: bytes, close: bool = True) -> StreamTape:
    tape = StreamTape(dialect)
    tape.feed(body)
    if close:
        tape.feed(b"")
    return tape


def test_what_ends_a_chat_stream():
    good = CHAT.render(CHAT.unfold(chat_answer([{"message": {"role": "assistant", "content": "hi"},
                                                 "finish_reason": "stop"}], None), include_usage=False))
    assert tape_of(CHAT, good, close=False).verdict() == ""  # [DONE] ends it, before the connection closes
    without_done = good.replace(b"data: [DONE]\n\n", b"")
    assert tape_of(CHAT, without_done, close=False).verdict() == "the stream did not finish"
    assert tape_of(CHAT, without_done).verdict() == ""  # a clean close with a finish_reason ends it too
    no_finish = b'data: {"choices": [{"index": 0, "delta": {"content": "x"}}]}\n\n'
    assert tape_of(CHAT, no_finish).verdict() == "the stream ended without a finish_reason"
    assert tape_of(CHAT, b'data: {"error": {"message": "boom"}}\n\n').verdict() == "the stream carried an error event"
    assert tape_of(CHAT, b"data: {not json\n\n").verdict() == "an event is not JSON"
    assert tape_of(CHAT, good + b'data: {"late": 1}\n\n').verdict() == "events after the stream's end"
    assert tape_of(CHAT, b"").verdict() == "the stream carried no events"


def test_a_stream_folded_by_outputs_of_equals_the_json_answer():
    doc = chat_answer([{"message": {"role": "assistant", "content": "one two"}, "finish_reason": "stop"}], None)
    body = json.dumps(doc).encode()
    assert CHAT.outputs_of("sse", CHAT.to_stream(body, include_usage=False)) == CHAT.outputs_of("json", body)
