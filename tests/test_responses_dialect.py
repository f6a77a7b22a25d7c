"""The Responses API dialect, unit by unit and through the real openai SDK's parsers.

The SDK reads bytes seedtape produced (a stream unfolded from a recorded response, a
response folded from a recorded stream) from an in-memory transport: what
``responses.create(stream=True)``, ``responses.stream().get_final_response()`` and
``responses.create()`` return must agree in every field the SDK exposes.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from seedtape.proxy import dialects
from seedtape.proxy.dialects import RESPONSES
from seedtape.proxy.dialects.base import StreamEvent
from seedtape.proxy.streams.sse import Event, parse
from seedtape.proxy.streams.streamtape import StreamTape

USAGE = {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 9,
         "output_tokens_details": {"reasoning_tokens": 4}, "total_tokens": 21}


def response(status: str = "completed", **extra) -> dict:
    """A Response as the API sends it: reasoning, a message, a function call, usage, no system_fingerprint."""
    doc = {
        "id": "resp_0123", "object": "response", "created_at": 1760000000, "status": status, "error": None,
        "incomplete_details": None, "instructions": "Be brief.", "max_output_tokens": None,
        "model": "gpt-4o-mini-2024-07-18", "parallel_tool_calls": True, "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None}, "store": True, "temperature": 1.0,
        "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_p": 1.0,
        "truncation": "disabled", "usage": USAGE, "metadata": {},
        "output": [
            {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Thinking briefly."}]},
            {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": "Hello there, traveller.", "annotations": [], "logprobs": []}]},
            {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "get_weather",
             "arguments": "{\"city\": \"Paris\"}", "status": "completed"},
        ],
    }
    return doc | extra


def sdk(body: bytes, content_type: str) -> openai.OpenAI:
    """The real SDK, answered from memory with ``body`` (no network)."""
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body, headers={"content-type": content_type}))
    return openai.OpenAI(api_key="k", base_url="http://seedtape.invalid/v1", http_client=httpx.Client(transport=transport),
                         max_retries=0)


def exposed(r) -> dict:
    """What the SDK exposes of a Response, for comparing the three ways of getting it."""
    calls = [(o.name, o.arguments, o.call_id) for o in r.output if o.type == "function_call"]
    summaries = [s.text for o in r.output if o.type == "reasoning" for s in o.summary]
    refusals = [c.refusal for o in r.output if o.type == "message" for c in o.content if c.type == "refusal"]
    return {"id": r.id, "text": r.output_text, "calls": calls, "summaries": summaries, "refusals": refusals,
            "status": r.status, "model": r.model, "usage": r.usage.model_dump() if r.usage else None,
            "types": [o.type for o in r.output]}


def rendered(doc: dict) -> bytes:
    return RESPONSES.render(RESPONSES.unfold(doc, include_usage=False))


def test_the_dialect_covers_post_responses_only():
    assert dialects.match("POST", "/v1/responses") is RESPONSES
    assert dialects.match("POST", "/openai/v1/responses") is RESPONSES
    assert dialects.match("GET", "/v1/responses") is None
    assert dialects.match("POST", "/v1/responses/resp_1/cancel") is None
    assert dialects.named("responses") is RESPONSES
    assert not RESPONSES.takes_seed and RESPONSES.can_stream


def test_the_fingerprint_is_the_resolved_model():
    assert RESPONSES.fingerprint(response()) == "model:gpt-4o-mini-2024-07-18"
    assert RESPONSES.fingerprint(response(system_fingerprint="fp_x")) == "fp_x"  # a server that sends one
    assert RESPONSES.fingerprint(response(model="bad\r\nmodel")) == "fp_none"  # never unsafe text
    assert RESPONSES.stream_fingerprint(RESPONSES.unfold(response(), False)) == "model:gpt-4o-mini-2024-07-18"


@pytest.mark.parametrize(("doc", "problem"), [
    (response(), ""), (response("incomplete", incomplete_details={"reason": "max_output_tokens"}), ""),
    (response("failed", error={"code": "server_error", "message": "x"}), "not a response"),
    (response("cancelled"), "the response cancelled"), ({"error": {"message": "bad"}}, "not a response"),
    ([], "not a response"), ({"object": "chat.completion"}, "not a response"),
])
def test_which_answers_are_recordable(doc, problem):
    assert (problem in RESPONSES.answer_problem(doc)) if problem else RESPONSES.answer_problem(doc) == ""


def test_outputs_compare_text_refusal_calls_reasoning_and_status():
    [out] = RESPONSES.outputs(response())
    assert out == {"index": 0, "content": "Hello there, traveller.", "refusal": None,
                   "tool_calls": [["get_weather", "{\"city\": \"Paris\"}"]], "reasoning": "Thinking briefly.",
                   "finish_reason": "completed"}
    [cut] = RESPONSES.outputs(response("incomplete", incomplete_details={"reason": "max_output_tokens"}))
    assert cut["finish_reason"] == "incomplete: max_output_tokens"


def test_unfold_is_the_api_event_sequence():
    events = RESPONSES.unfold(response(), include_usage=False)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    body = rendered(response())
    assert b"[DONE]" not in body
    parsed = parse(body)
    assert parsed[0].event == "response.created" and parsed[-1].event == "response.completed"
    assert RESPONSES.fold(RESPONSES.chunks(body)) == response()  # the round trip loses nothing


def test_an_incomplete_response_ends_with_response_incomplete():
    doc = response("incomplete", incomplete_details={"reason": "max_output_tokens"})
    events = RESPONSES.unfold(doc, include_usage=False)
    assert events[-1]["type"] == "response.incomplete" and events[-1]["response"] == doc
    assert "incomplete_details" not in events[0]["response"]


@pytest.mark.parametrize(("data", "kind"), [
    ({"type": "response.output_text.delta", "delta": "x"}, StreamEvent.CHUNK),
    ({"type": "response.completed", "response": {}}, StreamEvent.END),
    ({"type": "response.incomplete", "response": {}}, StreamEvent.END),
    ({"type": "response.failed", "response": {}}, StreamEvent.PROBLEM),
    ({"type": "error", "code": "server_error", "message": "overloaded"}, StreamEvent.PROBLEM),
])
def test_read_event(data, kind):
    assert RESPONSES.read_event(Event(json.dumps(data), data["type"]))[0] == kind
    assert RESPONSES.read_event(Event("{not json"))[0] == StreamEvent.PROBLEM


def test_a_taped_stream_is_recordable_only_with_its_terminal_event():
    body = rendered(response())
    whole = StreamTape(RESPONSES)
    for i in range(0, len(body), 97):  # any chunking
        whole.feed(body[i:i + 97])
    assert whole.done and whole.verdict() == "" and whole.fingerprint == "model:gpt-4o-mini-2024-07-18"
    assert whole.model == "gpt-4o-mini-2024-07-18"
    cut = StreamTape(RESPONSES)
    cut.feed(body[: body.index(b"event: response.completed")])
    cut.feed(b"")  # closed cleanly, but without the terminal event
    assert "without response.completed" in cut.verdict()
    failed = StreamTape(RESPONSES)
    failed.feed(body.replace(b"response.completed", b"response.failed"))
    assert "response.failed" in failed.verdict()


def test_the_sdk_sees_the_same_response_in_every_format():
    doc = response()
    plain = sdk(json.dumps(doc).encode(), "application/json").responses.create(model="gpt-4o-mini", input="hi")
    streamed = [e for e in sdk(rendered(doc), "text/event-stream").responses.create(model="gpt-4o-mini", input="hi",
                                                                                    stream=True)]
    assert streamed[-1].type == "response.completed"
    with sdk(rendered(doc), "text/event-stream").responses.stream(model="gpt-4o-mini", input="hi") as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == "Hello there, traveller."
    folded = sdk(RESPONSES.to_json(rendered(doc)), "application/json").responses.create(model="gpt-4o-mini", input="hi")
    assert exposed(plain) == exposed(streamed[-1].response) == exposed(final) == exposed(folded)
    assert exposed(final)["calls"] == [("get_weather", "{\"city\": \"Paris\"}", "call_1")]
    assert exposed(final)["summaries"] == ["Thinking briefly."]


def test_a_refusal_survives_every_format():
    doc = response(output=[{"id": "msg_r", "type": "message", "role": "assistant", "status": "completed",
                            "content": [{"type": "refusal", "refusal": "I can't help with that."}]}])
    with sdk(RESPONSES.to_stream(json.dumps(doc).encode(), False), "text/event-stream").responses.stream(
            model="m", input="x") as s:
        final = s.get_final_response()
    assert exposed(final)["refusals"] == ["I can't help with that."]
    assert exposed(final) == exposed(sdk(json.dumps(doc).encode(), "application/json").responses.create(model="m", input="x"))
