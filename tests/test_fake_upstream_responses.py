"""The fake upstream speaks the Responses API (and agent-like chat, and Azure paths) well enough for
the real ``openai`` SDK: these tests point the SDK straight at the fake, no proxy in between."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest
from fake_upstream import FakeUpstream
from pydantic import BaseModel

TOOLS = [{"type": "function", "name": "get_weather", "description": "The weather in a city.", "strict": True,
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                         "additionalProperties": False}}]
CHAT_TOOLS = [{"type": "function", "function": {k: v for k, v in TOOLS[0].items() if k != "type"}}]
ASK = "What is the weather in Paris today?"
NO_COMPLETED = re.escape("Didn't receive a `response.completed` event")  # the SDK stream helper's error

TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
               *["response.output_text.delta"] * 12, "response.output_text.done", "response.content_part.done",
               "response.output_item.done", "response.completed"]
CALL_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               *["response.function_call_arguments.delta"] * 3, "response.function_call_arguments.done",
               "response.output_item.done", "response.completed"]


@pytest.fixture
def fake():
    up = FakeUpstream().start()
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture
def client(fake):
    return openai.OpenAI(base_url=fake.url + "/v1", api_key="k", max_retries=0)


def raw_events(fake, body: dict) -> list[tuple[str, str]]:
    """(event line, data line) of every server-sent event, as sent on the wire."""
    r = httpx.post(fake.url + "/v1/responses", json={**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in r.text.split("\n\n") if b]
    return [tuple(b.split("\n")) for b in blocks]


def function_calls(resp) -> list[tuple[str, str]]:
    return [(o.name, o.arguments) for o in resp.output if o.type == "function_call"]


# -- a plain response ---------------------------------------------------------------------------------


def test_create_answers_a_response_object(client, fake):
    raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input="Tell me a story")
    data = json.loads(raw.text)
    r = raw.parse()
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert r.model == "gpt-4o-mini-2024-07-18"  # the resolved snapshot
    assert "system_fingerprint" not in data
    for key in ("created_at", "previous_response_id", "instructions", "tools", "parallel_tool_calls", "text", "reasoning",
                "store", "tool_choice", "usage", "error", "incomplete_details", "metadata"):
        assert key in data, key
    assert [o.type for o in r.output] == ["message"]
    msg = r.output[0]
    assert msg.id.startswith("msg_") and msg.role == "assistant" and msg.status == "completed"
    assert msg.content[0].type == "output_text" and msg.content[0].annotations == []
    assert len(r.output_text.split()) == 12
    u = r.usage
    assert u.input_tokens > 0 and u.output_tokens == 12 and u.total_tokens == u.input_tokens + u.output_tokens
    assert u.input_tokens_details.cached_tokens == 0 and u.output_tokens_details.reasoning_tokens == 0
    assert fake.log[-1]["method"] == "POST" and fake.log[-1]["path"] == "/v1/responses"


def test_output_is_a_function_of_the_input_and_noise_or_snapshot_are_knobs(client, fake):
    a = client.responses.create(model="gpt-4o-mini", input="same question")
    b = client.responses.create(model="gpt-4o-mini", input=[{"role": "user", "content": "same question"}])
    c = client.responses.create(model="gpt-4o-mini", input="another question")
    assert a.output_text == b.output_text != c.output_text and a.id != b.id
    assert client.responses.create(model="gpt-4o-2024-08-06", input="x").model == "gpt-4o-2024-08-06"  # dated already
    fake.snapshot = "2024-12-01"  # silent model drift
    drifted = client.responses.create(model="gpt-4o-mini", input="same question")
    assert drifted.model == "gpt-4o-mini-2024-12-01" and drifted.output_text == a.output_text
    fake.noise = True
    assert client.responses.create(model="gpt-4o-mini", input="same question").output_text != a.output_text


# -- streaming ------------------------------------------------------------------------------------------


def test_stream_event_sequence(client, fake):
    events = list(client.responses.create(model="gpt-4o-mini", input="Tell me a story", stream=True))
    assert [e.type for e in events] == TEXT_EVENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created = events[0].response
    assert created.status == "in_progress" and created.output == [] and created.usage is None
    added, part = events[2], events[3]
    assert added.item.type == "message" and added.item.status == "in_progress" and added.item.content == []
    assert part.part.type == "output_text" and part.part.text == ""
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    final = events[-1].response
    assert "".join(deltas) == events[-4].text == final.output_text == events[-2].item.content[0].text
    assert {e.item_id for e in events[3:-2]} == {added.item.id} == {final.output[0].id}
    assert final.status == "completed" and final.usage.output_tokens == 12 and final.id == created.id
    assert fake.responses[final.id]["response"]["output"]  # stored


def test_stream_wire_format(fake):
    events = raw_events(fake, {"model": "gpt-4o-mini", "input": "wire"})
    for event, data in events:
        assert event.startswith("event: ") and data.startswith("data: ")
        assert json.loads(data[6:])["type"] == event[7:]
    assert events[-1][0] == "event: response.completed"
    assert not any("[DONE]" in d for _, d in events)
    deltas = [json.loads(d[6:]) for _, d in events if "output_text.delta" in d]
    assert all(d["logprobs"] == [] and "obfuscation" in d for d in deltas)
    plain = raw_events(fake, {"model": "gpt-4o-mini", "input": "wire", "stream_options": {"include_obfuscation": False}})
    assert not any("obfuscation" in d for _, d in plain)


@pytest.mark.parametrize("kw", [
    {"input": "Tell me a story"},
    {"input": ASK, "tools": TOOLS},
    {"input": ASK, "model": "o4-mini", "reasoning": {"summary": "auto"}},
    {"input": "please refuse this"},
], ids=["text", "function_call", "reasoning", "refusal"])
def test_stream_helper_final_response_equals_the_plain_one(client, kw):
    kw = {"model": "gpt-4o-mini", **kw}
    plain = client.responses.create(**kw)
    with client.responses.stream(**kw) as stream:
        types = [e.type for e in stream]
        final = stream.get_final_response()
    assert types[-1] == "response.completed"
    assert final.output_text == plain.output_text
    assert function_calls(final) == function_calls(plain)
    assert [o.type for o in final.output] == [o.type for o in plain.output]
    assert (final.status, final.model) == (plain.status, plain.model)
    assert final.usage.model_dump() == plain.usage.model_dump()


def test_function_call_stream(client):
    events = list(client.responses.create(model="gpt-4o-mini", input=ASK, tools=TOOLS, stream=True))
    assert [e.type for e in events] == CALL_EVENTS
    item = events[2].item
    assert item.type == "function_call" and item.arguments == "" and item.status == "in_progress"
    assert "".join(e.delta for e in events[3:6]) == events[6].arguments == '{"city": "Paris"}'
    assert events[7].item.arguments == '{"city": "Paris"}' and events[7].item.call_id == item.call_id


# -- the agent loop -------------------------------------------------------------------------------------


def test_agent_loop_with_input_lists(client, fake):
    history: list = [{"role": "user", "content": ASK}]
    first = client.responses.create(model="gpt-4o-mini", input=history, tools=TOOLS)
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.id.startswith("fc_") and call.call_id.startswith("call_") and call.status == "completed"
    assert first.output_text == ""
    history += first.output
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"})
    second = client.responses.create(model="gpt-4o-mini", input=history, tools=TOOLS)
    assert second.output[0].type == "message" and "sunny, 21C" in second.output_text
    sent = fake.log[-1]["body"]["input"]
    assert [i.get("type", "message") for i in sent] == ["message", "function_call", "function_call_output"]


def test_agent_loop_with_previous_response_id(client):
    first = client.responses.create(model="gpt-4o-mini", input=ASK, tools=TOOLS)
    call = first.output[0]
    second = client.responses.create(model="gpt-4o-mini", previous_response_id=first.id, tools=TOOLS,
                                     input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rain"}])
    assert second.previous_response_id == first.id and "rain" in second.output_text
    # the same conversation written out in full gets the same answer
    full = client.responses.create(model="gpt-4o-mini", tools=TOOLS, input=[
        {"role": "user", "content": ASK}, *first.output,
        {"type": "function_call_output", "call_id": call.call_id, "output": "rain"}])
    assert full.output_text == second.output_text


def test_agent_loop_streamed(client):
    with client.responses.stream(model="gpt-4o-mini", input=ASK, tools=TOOLS) as stream:
        first = stream.get_final_response()
    call = first.output[0]
    assert call.parsed_arguments == {"city": "Paris"}  # the SDK parsed the strict tool's arguments
    with client.responses.stream(model="gpt-4o-mini", previous_response_id=first.id, tools=TOOLS,
                                 input=[{"type": "function_call_output", "call_id": call.call_id, "output": "fog"}]) as stream:
        assert "fog" in stream.get_final_response().output_text


def test_tool_outputs_must_pair_with_calls(client):
    with pytest.raises(openai.BadRequestError, match="No tool call found for function call output with call_id call_nope"):
        client.responses.create(model="gpt-4o-mini", input=[{"type": "function_call_output", "call_id": "call_nope", "output": "x"}])
    first = client.responses.create(model="gpt-4o-mini", input=ASK, tools=TOOLS)
    with pytest.raises(openai.BadRequestError, match=f"No tool output found for function call {first.output[0].call_id}"):
        client.responses.create(model="gpt-4o-mini", previous_response_id=first.id, input="never mind")


def test_tool_choice_none_answers_text(client):
    r = client.responses.create(model="gpt-4o-mini", input=ASK, tools=TOOLS, tool_choice="none")
    assert r.output[0].type == "message" and r.tool_choice == "none"
    assert r.tools[0].name == "get_weather"


# -- reasoning, refusal, incomplete, structured output ----------------------------------------------------


def test_reasoning_summary(client):
    r = client.responses.create(model="o4-mini", input=ASK, reasoning={"effort": "low", "summary": "auto"})
    assert [o.type for o in r.output] == ["reasoning", "message"]
    reasoning = r.output[0]
    assert reasoning.id.startswith("rs_") and reasoning.summary[0].type == "summary_text"
    assert reasoning.summary[0].text.startswith("**Considering Paris**")
    assert r.usage.output_tokens_details.reasoning_tokens > 0 and r.reasoning.effort == "low"
    assert r.model == "o4-mini-2024-07-18"
    events = list(client.responses.create(model="o4-mini", input=ASK, reasoning={"summary": "auto"}, stream=True))
    types = [e.type for e in events]
    assert types[2:4] == ["response.output_item.added", "response.reasoning_summary_part.added"]
    done = types.index("response.reasoning_summary_text.done")
    assert set(types[4:done]) == {"response.reasoning_summary_text.delta"}
    assert types[done + 1:done + 3] == ["response.reasoning_summary_part.done", "response.output_item.done"]
    text = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert text == events[done].text == events[-1].response.output[0].summary[0].text
    # no reasoning item without the parameter, nor for a non-reasoning model
    assert [o.type for o in client.responses.create(model="o4-mini", input=ASK).output] == ["message"]
    assert [o.type for o in client.responses.create(model="gpt-4o", input=ASK, reasoning={"summary": "auto"}).output] == ["message"]


def test_refusal(client):
    r = client.responses.create(model="gpt-4o-mini", input="I want you to refuse")
    part = r.output[0].content[0]
    assert part.type == "refusal" and part.refusal and r.output_text == ""
    events = list(client.responses.create(model="gpt-4o-mini", input="I want you to refuse", stream=True))
    types = [e.type for e in events]
    assert "response.output_text.delta" not in types
    assert "".join(e.delta for e in events if e.type == "response.refusal.delta") == part.refusal
    assert events[types.index("response.refusal.done")].refusal == part.refusal
    assert events[3].part.type == "refusal"


def test_incomplete_at_max_output_tokens(client):
    r = client.responses.create(model="gpt-4o-mini", input="long story", max_output_tokens=5)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert len(r.output_text.split()) == 5 and r.output[0].status == "incomplete" and r.max_output_tokens == 5
    full = client.responses.create(model="gpt-4o-mini", input="long story")
    assert full.output_text.startswith(r.output_text) and full.status == "completed"
    events = list(client.responses.create(model="gpt-4o-mini", input="long story", max_output_tokens=5, stream=True))
    assert events[-1].type == "response.incomplete" and events[-1].response.output_text == r.output_text
    with client.responses.stream(model="gpt-4o-mini", input="long story", max_output_tokens=5) as stream:
        assert [e.type for e in stream][-1] == "response.incomplete"
        with pytest.raises(RuntimeError, match=NO_COMPLETED):
            stream.get_final_response()  # the SDK helper only finalises completed responses


def test_structured_output_parses(client):
    class Weather(BaseModel):
        city: str
        degrees: int

    r = client.responses.parse(model="gpt-4o-mini", input=ASK, text_format=Weather)
    assert isinstance(r.output_parsed, Weather) and r.output_parsed.city


# -- stored responses ------------------------------------------------------------------------------------


def test_retrieve_input_items_delete(client, fake):
    r = client.responses.create(model="gpt-4o-mini", instructions="Be brief.", input=[
        {"role": "user", "content": "first"}, {"role": "user", "content": [{"type": "input_text", "text": "second"}]}])
    assert client.responses.retrieve(r.id).model_dump() == r.model_dump()
    items = client.responses.input_items.list(r.id)
    assert [i.content[0].text for i in items.data] == ["second", "first"]  # newest first, as the API lists them
    assert all(i.id.startswith("msg_") and i.type == "message" and i.role == "user" for i in items.data)
    assert (items.first_id, items.last_id, items.has_more) == (items.data[0].id, items.data[-1].id, False)
    asc = client.responses.input_items.list(r.id, order="asc", limit=1)
    assert [i.content[0].text for i in asc.data] == ["first"] and asc.has_more
    assert [i.content[0].text for i in client.responses.input_items.list(r.id, order="asc")] == ["first", "second"]
    client.responses.delete(r.id)
    assert [(e["method"], e["path"].split("?")[0]) for e in fake.log[-5:]][-1] == ("DELETE", f"/v1/responses/{r.id}")
    assert ("GET", f"/v1/responses/{r.id}/input_items") in [(e["method"], e["path"].split("?")[0]) for e in fake.log]
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)
    deleted = httpx.delete(f"{fake.url}/v1/responses/{client.responses.create(model='m', input='x').id}").json()
    assert deleted["object"] == "response.deleted" and deleted["deleted"] is True


def test_store_false_is_not_kept(client):
    r = client.responses.create(model="gpt-4o-mini", input="x", store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_unknown_previous_response_id(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="gpt-4o-mini", input="x", previous_response_id="resp_missing")
    assert err.value.body == {"message": "Previous response with id 'resp_missing' not found.", "type": "invalid_request_error",
                              "param": "previous_response_id", "code": "previous_response_not_found"}


def test_background_polling(client, fake):
    plain = client.responses.create(model="gpt-4o-mini", input="slow job")
    r = client.responses.create(model="gpt-4o-mini", input="slow job", background=True)
    assert r.status == "queued" and r.output == [] and r.background is True
    polled = client.responses.retrieve(r.id)
    assert polled.status == "in_progress" and polled.output == []
    done = client.responses.retrieve(r.id)
    assert done.status == "completed" and done.output_text == plain.output_text and done.usage.output_tokens == 12
    fake.background_polls = 0
    assert client.responses.retrieve(client.responses.create(model="m", input="x", background=True).id).status == "completed"
    fake.background_polls = 3
    bid = client.responses.create(model="m", input="x", background=True).id
    assert [client.responses.retrieve(bid).status for _ in range(4)] == ["in_progress"] * 3 + ["completed"]


def test_cancel(client):
    r = client.responses.create(model="gpt-4o-mini", input="slow job", background=True)
    assert client.responses.cancel(r.id).status == "cancelled"
    assert client.responses.retrieve(r.id).status == "cancelled"
    done = client.responses.create(model="gpt-4o-mini", input="quick job", background=True)
    client.responses.retrieve(done.id)
    assert client.responses.retrieve(done.id).status == "completed"
    assert client.responses.cancel(done.id).status == "completed"  # finished already: nothing to cancel
    sync = client.responses.create(model="gpt-4o-mini", input="x")
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a synchronous response"):
        client.responses.cancel(sync.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_missing")


def test_retrieve_as_a_stream(client):
    r = client.responses.create(model="gpt-4o-mini", input="replay me")
    events = list(client.responses.retrieve(r.id, stream=True))
    assert [e.type for e in events] == TEXT_EVENTS and events[-1].response.output_text == r.output_text
    later = list(client.responses.retrieve(r.id, stream=True, starting_after=10))
    assert later[0].sequence_number == 11 and later[-1].type == "response.completed"


# -- knobs and faults -------------------------------------------------------------------------------------


def test_error_event_fault(client, fake):
    fake.stream_fault = "error-event"
    events = list(client.responses.create(model="gpt-4o-mini", input="x", stream=True))
    error = events[-1]
    assert (error.type, error.code, error.message) == ("error", "server_error", "overloaded")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert not any(e.type == "response.completed" for e in events)
    with client.responses.stream(model="gpt-4o-mini", input="x") as stream, \
            pytest.raises(RuntimeError, match=NO_COMPLETED):
        stream.get_final_response()


def test_failed_fault(client, fake):
    fake.stream_fault = "failed"
    events = list(client.responses.create(model="gpt-4o-mini", input="x", stream=True))
    failed = events[-1]
    assert failed.type == "response.failed" and failed.sequence_number == len(events) - 1
    assert failed.response.status == "failed" and failed.response.error.code == "server_error"
    assert client.responses.retrieve(failed.response.id).status == "failed"
    with client.responses.stream(model="gpt-4o-mini", input="x") as stream, \
            pytest.raises(RuntimeError, match=NO_COMPLETED):
        stream.get_final_response()


@pytest.mark.parametrize("fault, error", [("cut", openai.APIConnectionError), ("malformed", ValueError)])
def test_cut_and_malformed_streams(client, fake, fault, error):
    fake.stream_fault = fault
    with pytest.raises(error):
        list(client.responses.create(model="gpt-4o-mini", input="x", stream=True))


def test_gate_holds_the_terminal_event(client, fake):
    import threading
    import time

    fake.gate = threading.Event()
    seen: list[str] = []

    def consume():
        with client.responses.stream(model="gpt-4o-mini", input="gated") as stream:
            seen.extend(e.type for e in stream)

    reader = threading.Thread(target=consume)
    reader.start()
    deadline = time.monotonic() + 10
    while "response.output_item.done" not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert seen[-1] == "response.output_item.done"  # everything but the terminal event arrived
    fake.gate.set()
    reader.join(10)
    assert seen[-1] == "response.completed"


def test_failures_and_latency_apply_to_responses(client, fake):
    fake.fail_next = [500]
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model="gpt-4o-mini", input="x")
    r = client.responses.create(model="gpt-4o-mini", input="x")
    fake.fail_next = [503]
    with pytest.raises(openai.APIStatusError):
        client.responses.retrieve(r.id)
    assert client.responses.retrieve(r.id).id == r.id


def test_bad_requests(client, fake):
    with pytest.raises(openai.BadRequestError, match="Missing required parameter: 'model'"):
        client.responses.create(input="x", model="")
    with pytest.raises(openai.BadRequestError, match="Invalid value: 'bot'"):
        client.responses.create(model="m", input=[{"role": "bot", "content": "x"}])


# -- chat completions with tools -------------------------------------------------------------------------


def test_chat_tools_agent_loop(client):
    messages: list = [{"role": "user", "content": ASK}]
    first = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=CHAT_TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [choice.message, {"role": "tool", "tool_call_id": call.id, "content": "hail"}]
    second = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=CHAT_TOOLS)
    assert second.choices[0].finish_reason == "stop" and "hail" in second.choices[0].message.content
    assert second.choices[0].message.tool_calls is None
    # unchanged without tools, and the [tool] marker keeps its own scenario
    plain = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": ASK}])
    assert plain.choices[0].finish_reason == "stop" and plain.choices[0].message.tool_calls is None
    marked = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "[tool] x"}], tools=CHAT_TOOLS)
    assert [t.function.name for t in marked.choices[0].message.tool_calls] == ["lookup_0", "lookup_1"]


def test_chat_tools_agent_loop_streamed(client):
    messages: list = [{"role": "user", "content": ASK}]
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=CHAT_TOOLS, stream=True))
    fragments = [tc.function.arguments for c in chunks for tc in (c.choices[0].delta.tool_calls or []) if tc.function.arguments]
    assert len(fragments) > 1 and json.loads("".join(fragments)) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    with client.chat.completions.stream(model="gpt-4o-mini", messages=messages, tools=CHAT_TOOLS) as stream:
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [final.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "snow"}]
    with client.chat.completions.stream(model="gpt-4o-mini", messages=messages, tools=CHAT_TOOLS) as stream:
        answer = stream.get_final_completion()
    assert "snow" in answer.choices[0].message.content and answer.choices[0].finish_reason == "stop"


# -- Azure -----------------------------------------------------------------------------------------------


def test_azure_client(fake):
    fake.require_auth = True
    az = openai.AzureOpenAI(azure_endpoint=fake.url, api_version="2024-10-21", api_key="k", max_retries=0)
    r = az.chat.completions.create(model="my-deployment", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content
    sent = fake.log[-1]
    assert sent["path"] == "/openai/deployments/my-deployment/chat/completions?api-version=2024-10-21"
    assert sent["headers"]["api-key"] == "k" and "authorization" not in {k.lower() for k in sent["headers"]}
    denied = httpx.post(fake.url + "/openai/deployments/d/chat/completions?api-version=2024-10-21",
                        json={"messages": [{"role": "user", "content": "hi"}]})
    assert denied.status_code == 401 and "Incorrect API key provided" in denied.json()["error"]["message"]
    assert httpx.get(fake.url + "/v1/models").status_code == 401
    assert az.responses.create(model="my-deployment", input="hi").model == "my-deployment-2024-07-18"


def test_openai_v1_path_with_the_plain_client(fake):
    fake.require_auth = True
    c = openai.OpenAI(base_url=fake.url + "/openai/v1", api_key="k", max_retries=0)
    r = c.responses.create(model="gpt-4o-mini", input="hi")
    assert r.output_text and fake.log[-1]["path"] == "/openai/v1/responses"
    assert fake.log[-1]["headers"]["authorization"] == "Bearer k"
    assert c.responses.retrieve(r.id).id == r.id and fake.log[-1]["method"] == "GET"
