"""Whole agents record once and replay offline (issue 14, point 4): the OpenAI Agents SDK on the
Responses API, and a chat-completions tool loop written by hand with the plain SDK.

Each agent runs in a child process that knows only OPENAI_BASE_URL (the proxy), like an app
would; the tool logs every call it executes, so replay can be checked to run the same tools
with the same arguments and end with the same output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

AGENT = textwrap.dedent('''
    import json, sys
    from agents import Agent, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)  # never export traces anywhere
    calls = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny, 21C in {city}"

    agent = Agent(name="forecaster", instructions="Answer with the weather.", tools=[get_weather],
                  model="gpt-4o-mini")
    result = Runner.run_sync(agent, "What is the weather in Paris?")
    print(json.dumps({"final": result.final_output, "calls": calls}))
''')

CHAT_LOOP = textwrap.dedent('''
    import json, openai
    client = openai.OpenAI(max_retries=0)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    messages = [{"role": "user", "content": "What is the weather in Lisbon?"}]
    calls = []
    for _ in range(5):
        msg = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=tools).choices[0].message
        if not msg.tool_calls:
            break
        messages.append(msg.model_dump(exclude_none=True))
        for tc in msg.tool_calls:
            city = json.loads(tc.function.arguments)["city"]
            calls.append(city)
            messages.append({"role": "tool", "tool_call_id": tc.id, "content": f"rainy, 14C in {city}"})
    print(json.dumps({"final": msg.content, "calls": calls}))
''')


def run(proxy, script: str, key: str = "sk-test") -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(OPENAI_BASE_URL=proxy.base_url, OPENAI_API_KEY=key, OPENAI_AGENTS_DISABLE_TRACING="1")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_an_agents_sdk_agent_records_once_and_replays_offline(upstream, store, proxies):
    rec = proxies("--upstream", upstream.url, "--store", store)
    live = run(rec, AGENT)
    assert live["calls"] == ["Paris"] and "sunny, 21C in Paris" in live["final"]
    assert len(upstream.requests_to("/responses")) == 2  # the tool call, then the answer
    rec.stop()
    upstream.stop()
    rep = proxies("--mode", "replay", "--store", store)
    assert run(rep, AGENT, key="sk-anything") == live  # same tools, same arguments, same final output
    assert rep.output.count("hit POST /v1/responses") == 2


def test_a_hand_written_chat_tool_loop_records_once_and_replays_offline(upstream, store, proxies):
    rec = proxies("--upstream", upstream.url, "--store", store)
    live = run(rec, CHAT_LOOP)
    assert live["calls"] == ["Lisbon"] and "rainy, 14C in Lisbon" in live["final"]
    rec.stop()
    upstream.stop()
    rep = proxies("--mode", "replay", "--store", store)
    assert run(rep, CHAT_LOOP) == live


def test_volatile_tool_output_replays_with_a_mask_and_an_ignored_path(upstream, store, proxies):
    import openai
    import pytest

    tools = [{"type": "function", "name": "now", "parameters": {"type": "object", "properties": {}}}]

    def loop(proxy, stamp: str, call_id_suffix: str) -> str:
        c = openai.OpenAI(base_url=proxy.base_url, api_key="k", max_retries=0)
        first = c.responses.create(model="gpt-4o-mini", input="What time is it in Paris?", tools=tools)
        [call] = [o for o in first.output if o.type == "function_call"]
        second = c.responses.create(model="gpt-4o-mini", tools=tools, input=[
            {"role": "user", "content": "What time is it in Paris?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id + call_id_suffix,
             "output": f"it is {stamp} in Paris"}])
        return second.output_text

    rules = ("--mask", r"\d{4}-\d\d-\d\dT[\d:.]+Z?", "--ignore-path", "input.*.call_id")
    rec = proxies("--upstream", upstream.url, "--store", store, *rules)
    live = loop(rec, "2026-11-26T10:00:00Z", "")
    rec.stop()
    upstream.stop()
    plain = proxies("--mode", "replay", "--store", store)
    with pytest.raises(openai.NotFoundError, match="seedtape replay miss"):  # without the rules: a new time misses
        loop(plain, "2026-11-27T08:30:00Z", "-x")
    plain.stop()
    rep = proxies("--mode", "replay", "--store", store, *rules)
    assert loop(rep, "2026-11-27T08:30:00Z", "-x") == live  # another time and call id: the same recording
