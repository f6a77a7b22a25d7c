"""Recorded Responses API calls replay offline through Node clients (issue 14): the official
`openai` SDK (`client.responses.create({stream: true})`) and the Vercel AI SDK (`ai` with the
`@ai-sdk/openai` provider, whose `generateText` and `streamText` speak the Responses API).

Versions are pinned in tests/node_client/package.json and its lock file (installed with
`npm ci`, see tests/test_other_clients.py). Each client records against the fake upstream
through a real `seedtape serve`, then replays with the upstream stopped.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from test_other_clients import NODE_DIR, _npm_ci

from seedtape.proxy.tapes.store import Store

SCRIPT = NODE_DIR / "responses.mjs"


@pytest.fixture(scope="session")
def node():
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip(f"the Node client tests need node and npm on PATH (node: {node or 'missing'})")
    _npm_ci(node, npm)

    def run(base_url: str, scenario: str, **options) -> dict:
        r = subprocess.run([node, str(SCRIPT), base_url, scenario, json.dumps(options)], cwd=NODE_DIR,
                           capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
        assert r.returncode == 0 and r.stdout.strip(), f"node failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
        return json.loads(r.stdout.strip().splitlines()[-1])

    return run


@pytest.mark.parametrize("scenario", ["openai-stream", "openai-plain", "ai-generate", "ai-stream"])
def test_a_node_client_records_and_replays_responses_offline(upstream, store, proxies, node, scenario):
    rec = proxies("--upstream", upstream.url, "--store", store)
    live = node(rec.base_url, scenario, input=f"Tell me about Paris ({scenario})")
    assert live["ok"], live
    assert live["text"]
    assert upstream.requests_to("/responses"), "the client did not use the Responses API"
    rec.stop()
    upstream.stop()
    rep = proxies("--mode", "replay", "--store", store)
    again = node(rep.base_url, scenario, input=f"Tell me about Paris ({scenario})")
    assert again == live
    assert "hit" in rep.output and "miss" not in rep.output
    if scenario == "openai-stream":
        assert live["types"][0] == "response.created" and live["types"][-1] == "response.completed"
        assert live["deltas"] == live["text"]
    with Store(store, readonly=True) as st:
        [entry] = list(st.entries())
    assert entry.endpoint == "responses"
    assert entry.format == ("sse" if scenario in ("openai-stream", "ai-stream") else "json")


def test_node_replays_a_stream_the_python_sdk_recorded(upstream, store, proxies, node):
    import openai

    rec = proxies("--upstream", upstream.url, "--store", store)
    c = openai.OpenAI(base_url=rec.base_url, api_key="sk-py", max_retries=0)
    events = list(c.responses.create(model="gpt-4o-mini", input="Tell me about Paris", stream=True))
    rec.stop()
    upstream.stop()
    rep = proxies("--mode", "replay", "--store", store)
    got = node(rep.base_url, "openai-stream", input="Tell me about Paris")
    assert got["ok"] and got["text"] == events[-1].response.output_text
    assert got["types"] == [e.type for e in events]  # the recorded events, as they were
    plain = node(rep.base_url, "openai-plain", input="Tell me about Paris")
    assert plain["text"] == got["text"] and plain["id"] == got["id"]  # assembled from the recorded stream
