"""The Responses API and Azure through a real `seedtape serve` and the real openai SDK (issue 14).

Recorded against the fake upstream (tests/fake_upstream.py, which speaks the Responses
API with realistic event streams, function calls, server-side state and background
calls), then replayed with the upstream stopped.
"""

from __future__ import annotations

import json
import subprocess
import sys

import openai
import pytest
from test_responses_dialect import exposed

from seedtape.proxy.tapes.store import Store

TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


def sdk(proxy, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key="sk-test", max_retries=0, **kw)


def create(c: openai.OpenAI, how: str, **kw):
    """The response as the SDK returns it: plain, from a stream's last event, or the stream helper's final one."""
    if how == "plain":
        return c.responses.create(**kw)
    if how == "stream":
        events = list(c.responses.create(stream=True, **kw))
        assert events[-1].type in ("response.completed", "response.incomplete"), events[-1].type
        assert [e.sequence_number for e in events] == list(range(len(events)))
        return events[-1].response
    with c.responses.stream(**kw) as s:
        return s.get_final_response()


CASES = {
    "text": {"model": "gpt-4o-mini", "input": "Tell me about Paris"},
    "tools": {"model": "gpt-4o-mini", "input": "What is the weather in Paris?", "tools": TOOLS},
    "reasoning": {"model": "o4-mini", "input": "Think about Rome", "reasoning": {"summary": "auto"}},
    "refusal": {"model": "gpt-4o-mini", "input": "Please refuse this"},
}


@pytest.mark.parametrize("recorded_as", ["plain", "stream"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_way_of_asking_replays_the_same_response_offline(upstream, store, proxies, recorded_as, case):
    rec = proxies("--upstream", upstream.url, "--store", store)
    original = create(sdk(rec), recorded_as, **CASES[case])
    rec.stop()
    upstream.stop()
    rep = proxies("--mode", "replay", "--store", store)
    for how in ("plain", "stream", "helper"):
        again = create(sdk(rep), "stream" if how == "stream" else how, **CASES[case])
        assert exposed(again) == exposed(original), (how, case)
    if case == "tools":
        assert exposed(original)["calls"][0][:2] == ("get_weather", '{"city": "Paris"}')
    if case == "reasoning":
        assert exposed(original)["summaries"]
    if case == "refusal":
        assert exposed(original)["refusals"]


def test_a_recorded_stream_replays_byte_for_byte(upstream, store, proxies):
    rec = proxies("--upstream", upstream.url, "--store", store)
    with sdk(rec).responses.with_streaming_response.create(stream=True, **CASES["tools"]) as r:
        live = r.read()
    rec.stop()
    rep = proxies("--mode", "replay", "--store", store)
    with sdk(rep).responses.with_streaming_response.create(stream=True, **CASES["tools"]) as r:
        assert r.headers["seedtape-status"] == "hit"
        assert r.read() == live
    assert b"[DONE]" not in live and b"event: response.completed" in live


def test_no_seed_reaches_the_responses_api(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    r = sdk(p).responses.with_raw_response.create(**CASES["text"])
    assert r.headers["seedtape-seed"] == "none"
    assert "seed" not in upstream.requests_to("/responses")[-1]["body"]
    assert r.headers["seedtape-fingerprint"] == "model:gpt-4o-mini-2024-07-18"


@pytest.mark.parametrize("fault", ["error-event", "failed", "cut"])
def test_a_stream_without_its_terminal_event_is_never_recorded(upstream, store, proxies, fault):
    upstream.stream_fault = fault
    p = proxies("--upstream", upstream.url, "--store", store)
    raised: Exception | None = None
    try:  # the SDK's helper raises an error of its own per fault
        with sdk(p).responses.stream(**CASES["text"]) as s:
            s.get_final_response()
    except Exception as e:
        raised = e
    assert raised is not None
    upstream.stream_fault = None
    assert p.logged("nothing recorded") or p.logged("unrecorded")
    with Store(store, readonly=True) as st:
        assert st.stats()["entries"] == 0


def test_an_agent_loop_chained_by_previous_response_id_replays_offline(upstream, store, proxies):
    def loop(c: openai.OpenAI) -> list:
        first = c.responses.create(model="gpt-4o-mini", input="What is the weather in Paris?", tools=TOOLS)
        [call] = [o for o in first.output if o.type == "function_call"]
        result = f"sunny, 21C in {json.loads(call.arguments)['city']}"
        second = c.responses.create(model="gpt-4o-mini", previous_response_id=first.id, tools=TOOLS,
                                    input=[{"type": "function_call_output", "call_id": call.call_id, "output": result}])
        items = c.responses.input_items.list(second.id)
        fetched = c.responses.retrieve(first.id)
        return [first.id, call.arguments, second.id, second.output_text, [i.type for i in items.data],
                fetched.output_text, fetched.id]

    rec = proxies("--upstream", upstream.url, "--store", store)
    recorded = loop(sdk(rec))
    assert "sunny, 21C in Paris" in recorded[3]  # the model used the tool's result
    rec.stop()
    upstream.stop()
    rep = proxies("--mode", "replay", "--store", store)
    assert loop(sdk(rep)) == recorded  # the recorded ids come back, so the next turn's key matches
    c = sdk(rep)
    deleted = c.responses.delete(recorded[0])
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError, match="no recorded response has the id resp_unknown"):
        c.responses.retrieve("resp_unknown")
    assert "GET /v1/responses/resp_unknown" in rep.output


def test_a_background_call_replays_as_its_final_state(upstream, store, proxies):
    def run(c: openai.OpenAI):
        r = c.responses.create(model="gpt-4o-mini", input="A slow essay about Lisbon", background=True)
        polls = 0
        while r.status in ("queued", "in_progress"):
            polls += 1
            assert polls < 20
            r = c.responses.retrieve(r.id)
        return r, polls

    rec = proxies("--upstream", upstream.url, "--store", store)
    live, polls = run(sdk(rec))
    assert polls >= 1 and live.status == "completed"
    rec.stop()
    upstream.stop()
    rep = proxies("--mode", "replay", "--store", store)
    again, polls = run(sdk(rep))
    assert polls == 0 and exposed(again) == exposed(live)  # the create call answers with the final state


def test_a_new_model_snapshot_is_drift_in_audit(upstream, store, proxies):
    rec = proxies("--upstream", upstream.url, "--store", store)
    sdk(rec).responses.create(**CASES["text"])
    rec.stop()
    upstream.snapshot = "2025-01-31"  # the alias now resolves to another snapshot, silently
    upstream.noise = True
    out = subprocess.run([sys.executable, "-m", "seedtape", "audit", "--store", store, "--upstream", upstream.url,
                          "--repeats", "1", "--json", "-", "--fail-on", "drift=0"], capture_output=True, text=True,
                         timeout=120, env={"OPENAI_API_KEY": "k", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads(out.stdout)
    [rr] = report["requests"]
    assert rr["recorded_fingerprint"] == "model:gpt-4o-mini-2024-07-18"
    assert rr["fingerprints_seen"] == ["model:gpt-4o-mini-2025-01-31"] and rr["verdicts"] == {"drift": 1}


def test_azure_responses_on_openai_v1_and_classic_chat_replay_offline(upstream, store, proxies):
    upstream.require_auth = True
    rec = proxies("--upstream", upstream.url, "--store", store)
    v1 = openai.OpenAI(base_url=rec.origin + "/openai/v1", api_key="azure-secret-KEY-1", max_retries=0)
    az = openai.AzureOpenAI(azure_endpoint=rec.origin, api_key="azure-secret-KEY-1", api_version="2024-10-21",
                            max_retries=0)
    first = v1.responses.create(model="my-deployment", input="Hello from Azure")
    chat = az.chat.completions.create(model="my-deployment", messages=[{"role": "user", "content": "Azure chat"}])
    assert upstream.log[-1]["headers"].get("api-key") == "azure-secret-KEY-1"
    rec.stop()
    upstream.stop()
    rep = proxies("--mode", "replay", "--store", store)
    v1 = openai.OpenAI(base_url=rep.origin + "/openai/v1", api_key="other", max_retries=0)
    az = openai.AzureOpenAI(azure_endpoint=rep.origin, api_key="other", api_version="2024-10-21", max_retries=0)
    assert v1.responses.create(model="my-deployment", input="Hello from Azure").output_text == first.output_text
    again = az.chat.completions.create(model="my-deployment", messages=[{"role": "user", "content": "Azure chat"}])
    assert again.choices[0].message.content == chat.choices[0].message.content
    with pytest.raises(openai.NotFoundError, match=r"query\.api-version"):  # the api-version enters the key
        openai.AzureOpenAI(azure_endpoint=rep.origin, api_key="x", api_version="2025-04-01-preview",
                           max_retries=0).chat.completions.create(
            model="my-deployment", messages=[{"role": "user", "content": "Azure chat"}])
    with Store(store, readonly=True) as st:
        raw = b"".join(e.encode() for e in st.entries())
    assert b"azure-secret-KEY-1" not in raw  # the api-key header is never stored


def test_responses_tapes_export_import_and_replay_offline(upstream, store, proxies, tmp_path):
    rec = proxies("--upstream", upstream.url, "--store", store)
    c = sdk(rec)
    plain = c.responses.create(**CASES["tools"])
    streamed = list(c.responses.create(stream=True, **CASES["reasoning"]))[-1].response
    queued = c.responses.create(model="gpt-4o-mini", input="A slow essay about Lisbon", background=True)
    while queued.status in ("queued", "in_progress"):
        queued = c.responses.retrieve(queued.id)
    rec.stop()
    upstream.stop()
    tapes, fresh = tmp_path / "tapes", str(tmp_path / "fresh")
    for args in (["export", str(tapes), "--store", store], ["import", str(tapes), "--store", fresh]):
        r = subprocess.run([sys.executable, "-m", "seedtape", *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
    assert list(tapes.rglob("*.body.sse")) and list(tapes.rglob("*.body.json"))
    rep = proxies("--mode", "replay", "--store", fresh)
    c = sdk(rep)
    assert exposed(c.responses.create(**CASES["tools"])) == exposed(plain)
    assert exposed(create(c, "helper", **CASES["reasoning"])) == exposed(streamed)
    final = c.responses.create(model="gpt-4o-mini", input="A slow essay about Lisbon", background=True)
    assert final.status == "completed" and exposed(final) == exposed(queued)
    assert c.responses.retrieve(plain.id).output_text == plain.output_text
