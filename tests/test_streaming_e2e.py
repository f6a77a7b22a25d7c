"""Streaming end to end: real `seedtape serve`, the fake upstream, the real openai SDK."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
from conftest import async_client, client, wait_for
from support import assert_openai_error, entries

MSG = [{"role": "user", "content": "Tell me a story"}]


def stream_chunks(c, messages=MSG, **kw):
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages, stream=True, **kw)
    return raw.headers, [ch.model_dump() for ch in raw.parse()]


def output(completion) -> list[dict]:
    """What matters of a completion: per choice content, refusal, tool calls, finish_reason, logprobs."""
    out = []
    for ch in completion.choices:
        m = ch.message
        out.append({
            "index": ch.index, "content": m.content, "refusal": m.refusal, "finish_reason": ch.finish_reason,
            "tool_calls": [(t.id, t.function.name, t.function.arguments) for t in (m.tool_calls or [])],
            "logprobs": ch.logprobs.model_dump() if ch.logprobs else None,
        })
    return out


def assembled(c, messages, **kw):
    """What the SDK's stream helper assembles from a streamed reply."""
    with c.chat.completions.stream(model="gpt-4o", messages=messages, **kw) as s:
        for _ in s:
            pass
        try:
            return s.get_final_completion()
        except (openai.ContentFilterFinishReasonError, openai.LengthFinishReasonError) as e:
            return e.completion  # the helper refuses these finishes but keeps what it assembled


def test_live_stream_reaches_client_before_upstream_finishes(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    upstream.gate = threading.Event()
    stream = client(p).chat.completions.create(model="gpt-4o", messages=MSG, stream=True)
    first = next(iter(stream))  # arrives while the upstream still holds back [DONE]
    assert first.choices[0].delta.role == "assistant"
    assert entries(store) == []  # not recorded before the upstream completed
    upstream.gate.set()
    rest = list(stream)
    assert rest[-1].choices[0].finish_reason == "stop"
    assert wait_for(lambda: len(entries(store)) == 1)
    assert entries(store)[0].format == "sse"


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_records_and_replays_identically_offline(upstream, store, proxies, include_usage):
    opts = {"stream_options": {"include_usage": True}} if include_usage else {}
    rec = proxies("--upstream", upstream.url, "--store", store)
    headers, live = stream_chunks(client(rec), **opts)
    assert headers["seedtape-status"] == "recording"
    rec.stop()
    upstream.stop()
    rep = proxies("--mode", "replay", "--store", store)
    headers, again = stream_chunks(client(rep), **opts)
    assert headers["seedtape-status"] == "hit"
    assert headers["seedtape-fingerprint"] == "fp_fake_1"
    assert again == live  # same events, same order, same deltas, finish_reason and usage
    assert (again[-1]["usage"] is not None) == include_usage


def test_usage_chunk_follows_the_request_not_the_recording(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    _, live = stream_chunks(client(p), stream_options={"include_usage": True})
    headers, again = stream_chunks(client(p))  # same key: stream_options does not count
    assert headers["seedtape-status"] == "hit"
    assert again == live[:-1] and all(ch["usage"] is None for ch in again)


async def test_async_stream_and_stream_helper(upstream, store, proxies):
    rec = proxies("--upstream", upstream.url, "--store", store)
    ac = async_client(rec)
    live = [ch.model_dump() async for ch in await ac.chat.completions.create(model="gpt-4o", messages=MSG, stream=True)]
    async with ac.chat.completions.stream(model="gpt-4o", messages=MSG) as s:
        final_live = await s.get_final_completion()
    rec.stop()
    rep = proxies("--mode", "replay", "--store", store)
    ac = async_client(rep)
    again = [ch.model_dump() async for ch in await ac.chat.completions.create(model="gpt-4o", messages=MSG, stream=True)]
    assert again == live
    async with ac.chat.completions.stream(model="gpt-4o", messages=MSG) as s:
        final = await s.get_final_completion()
    assert output(final) == output(final_live)


def test_sync_stream_helper_round_trip(upstream, store, proxies):
    rec = proxies("--upstream", upstream.url, "--store", store)
    live = assembled(client(rec), MSG)
    rec.stop()
    rep = proxies("--mode", "replay", "--store", store)
    assert output(assembled(client(rep), MSG)) == output(live)


@pytest.mark.parametrize("fault", ["cut", "malformed", "error-event"])
def test_broken_streams_are_never_recorded(upstream, store, proxies, fault):
    p = proxies("--upstream", upstream.url, "--store", store)
    c = client(p)
    upstream.stream_fault = fault
    with pytest.raises((openai.APIError, httpx.HTTPError, ValueError)):  # a cut, an error event, bad JSON
        for _ in c.chat.completions.create(model="gpt-4o", messages=MSG, stream=True):
            pass
    time.sleep(0.2)
    assert entries(store) == []
    upstream.stream_fault = None
    _headers, chunks = stream_chunks(c)  # the proxy keeps serving, and records a good one
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert wait_for(lambda: len(entries(store)) == 1)
    assert wait_for(lambda: "nothing recorded" in p.output or "unrecorded" in p.output), p.output


SCENARIOS = {
    "plain": ({"content": "Tell me a story"}, {}),
    "tools": ({"content": "[tool] weather in Paris"}, {}),
    "n2": ({"content": "two answers"}, {"n": 2}),
    "logprobs": ({"content": "with logprobs"}, {"logprobs": True, "top_logprobs": 0}),
    "refusal": ({"content": "[refuse] something bad"}, {}),
    "content_filter": ({"content": "[filter] edgy"}, {}),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("recorded_as, replayed_as", [("json", "sse"), ("sse", "json"), ("json", "json"), ("sse", "sse")])
def test_round_trips_in_both_formats(upstream, store, proxies, scenario, recorded_as, replayed_as):
    msg, kw = SCENARIOS[scenario]
    messages = [{"role": "user", **msg}]
    rec = proxies("--upstream", upstream.url, "--store", store)
    c = client(rec)
    original = (c.chat.completions.create(model="gpt-4o", messages=messages, **kw)
                if recorded_as == "json" else assembled(c, messages, **kw))
    rec.stop()
    upstream.stop()
    rep = proxies("--mode", "replay", "--store", store)
    c = client(rep)
    if replayed_as == "json":
        raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages, **kw)
        headers, got = raw.headers, raw.parse()
    else:
        raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages, stream=True, **kw)
        headers = raw.headers
        got = assembled(c, messages, **kw)
    expected_status = "hit" if recorded_as == replayed_as else f"hit; converted-from={recorded_as}"
    assert headers["seedtape-status"] == expected_status
    assert output(got) == output(original)
    assert got.system_fingerprint == original.system_fingerprint


def test_converted_stream_carries_usage_when_asked(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    c = client(p)
    original = c.chat.completions.create(model="gpt-4o", messages=MSG)
    headers, chunks = stream_chunks(c, stream_options={"include_usage": True})
    assert headers["seedtape-status"] == "hit; converted-from=json"
    assert chunks[-1]["usage"] == original.usage.model_dump()


def test_legacy_completions_stream_both_ways(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    c = client(p)
    live = [ch.model_dump() for ch in c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi", stream=True)]
    assert upstream.requests_to("/completions")[0]["body"]["seed"] == 1234
    raw = c.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
    assert raw.headers["seedtape-status"] == "hit; converted-from=sse"
    assert raw.parse().choices[0].text == "".join(ch["choices"][0]["text"] for ch in live if ch["choices"])
    raw = c.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct", prompt="Say hi", stream=True)
    assert raw.headers["seedtape-status"] == "hit"
    assert [ch.model_dump() for ch in raw.parse()] == live
    assert len(upstream.log) == 1


def test_embeddings_recorded_and_replayed_without_seed(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    c = client(p)
    raw = c.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["a", "b"])
    assert raw.headers["seedtape-status"] == "recorded" and raw.headers["seedtape-seed"] == "none"
    assert "seed" not in upstream.log[0]["body"]
    p.stop()
    upstream.stop()
    rep = proxies("--mode", "replay", "--store", store)
    again = client(rep).embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [d.embedding for d in again.data] == [d.embedding for d in raw.parse().data]


def test_other_endpoints_pass_through_unrecorded(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    models = client(p).models.with_raw_response.list()
    assert models.headers["seedtape-status"] == "passthrough"
    assert entries(store) == []


def test_replay_pace_keeps_recorded_gaps(upstream, store, proxies):
    upstream.chunk_delay = 0.05
    rec = proxies("--upstream", upstream.url, "--store", store)
    stream_chunks(client(rec))
    rec.stop()
    recorded_gap = entries(store)[0].extra["gaps"][-1][1]
    assert recorded_gap > 0.5  # ~15 events, 50 ms apart
    paced = proxies("--mode", "replay", "--store", store, "--replay-pace", "2")
    t0 = time.monotonic()
    headers, chunks = stream_chunks(client(paced))
    took = time.monotonic() - t0
    assert headers["seedtape-status"] == "hit"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert took >= 2 * recorded_gap * 0.9  # sleeping can only make it slower: a lower bound does not flake


def test_stream_to_dead_upstream_is_a_clear_error(store, proxies):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()
    p = proxies("--upstream", dead, "--store", store)
    with pytest.raises(openai.APIStatusError) as info:
        client(p).chat.completions.create(model="gpt-4o", messages=MSG, stream=True)
    assert_openai_error(info.value, 502, "upstream_unreachable")
    assert dead in str(info.value)


def test_curl_stream_raw_events(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    body = {"model": "gpt-4o", "messages": MSG, "stream": True}
    with httpx.stream("POST", p.base_url + "/chat/completions", json=body) as r:
        live = b"".join(r.iter_raw())
    assert r.headers["content-type"].startswith("text/event-stream")
    assert live.endswith(b"data: [DONE]\n\n")
    assert wait_for(lambda: len(entries(store)) == 1)
    with httpx.stream("POST", p.base_url + "/chat/completions", json=body) as r:
        again = b"".join(r.iter_raw())
    assert r.headers["seedtape-status"] == "hit"
    assert again == live  # byte for byte


def test_stream_helper_at_a_length_finish_records_the_complete_stream(upstream, store, proxies):
    upstream.chunk_delay = 0.02
    p = proxies("--upstream", upstream.url, "--store", store)
    c = client(p)
    with pytest.raises(openai.LengthFinishReasonError), c.chat.completions.stream(model="gpt-4o", messages=MSG, max_tokens=3,
                                   stream_options={"include_usage": True}) as s:
        for _ in s:
            pass
        s.get_final_completion()
    assert wait_for(lambda: entries(store))
    [entry] = entries(store)
    assert entry.body.endswith(b"data: [DONE]\n\n")
    assert entry.sse_chunks()[-1]["usage"]["total_tokens"] == 22  # what the upstream completed, usage included


def test_show_prints_a_recorded_stream_one_event_per_line(upstream, store, proxies):
    from click.testing import CliRunner

    from seedtape.cli.main import cli

    p = proxies("--upstream", upstream.url, "--store", store)
    headers, chunks = stream_chunks(client(p))
    p.stop()
    r = CliRunner().invoke(cli, ["show", headers["seedtape-key"][:12], "--store", store])
    assert r.exit_code == 0, r.output
    events = r.output.split("response: 200\n", 1)[1].strip().splitlines()
    assert events[-1] == "data: [DONE]"
    assert len(events) == len(chunks) + 1
    shown = [json.loads(line.removeprefix("data: ")) for line in events[:-1]]
    assert [(c["id"], [ch["delta"].get("content") for ch in c["choices"]]) for c in shown] == \
        [(c["id"], [ch["delta"].get("content") for ch in c["choices"]]) for c in chunks]
    assert "\\n" not in r.output  # not one JSON-escaped string
