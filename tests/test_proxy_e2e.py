"""End to end: a real `seedtape serve` process, the fake upstream, and the real openai SDK."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
from conftest import API_KEY, async_client, chat, client
from support import assert_openai_error, entries, plaintext

from seedtape.proxy.tapes.store import Store


def test_record_then_replay_offline_sync(upstream, store, proxies):
    rec = proxies("--upstream", upstream.url, "--store", store)
    raw = chat(client(rec), "What is the capital of France?")
    assert raw.headers["seedtape-status"] == "recorded"
    first = raw.parse()
    rec.stop()
    upstream.stop()  # from here on there is no upstream at all

    rep = proxies("--mode", "replay", "--store", store, "--upstream", upstream.url)
    raw2 = chat(client(rep), "What is the capital of France?")
    assert raw2.headers["seedtape-status"] == "hit"
    again = raw2.parse()
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.system_fingerprint == first.system_fingerprint == "fp_fake_1"
    assert again.id == first.id
    assert again._request_id == first._request_id  # safe upstream headers are replayed
    assert raw2.headers["seedtape-fingerprint"] == "fp_fake_1"
    assert raw2.headers["openai-version"] == "2020-10-01"


async def test_record_then_replay_offline_async(upstream, store, proxies):
    rec = proxies("--upstream", upstream.url, "--store", store)
    c = async_client(rec)
    first = await c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "async hi"}])
    rec.stop()
    upstream.stop()
    rep = proxies("--mode", "replay", "--store", store)
    again = await async_client(rep).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "async hi"}])
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.system_fingerprint == first.system_fingerprint


def test_injected_seed_reaches_upstream_and_client_seed_is_kept(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store, "--seed", "777")
    raw = chat(client(p), "seed me")
    assert raw.headers["seedtape-seed"] == "777; injected"
    raw = chat(client(p), "my own seed", seed=5)
    assert raw.headers["seedtape-seed"] == "5; client"
    seen = [r["body"]["seed"] for r in upstream.requests_to("/chat/completions")]
    assert seen == [777, 5]


def test_no_seed_injection(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store, "--no-seed-injection")
    raw = chat(client(p), "no seed please")
    assert raw.headers["seedtape-seed"] == "none"
    assert "seed" not in upstream.requests_to("/chat/completions")[0]["body"]


def test_legacy_completions_get_a_seed_and_replay(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    c = client(p)
    raw = c.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
    assert raw.headers["seedtape-status"] == "recorded"
    assert upstream.requests_to("/completions")[0]["body"]["seed"] == 1234
    again = c.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
    assert again.headers["seedtape-status"] == "hit"
    assert again.parse().choices[0].text == raw.parse().choices[0].text


def test_replay_miss_is_fast_clear_and_offline(upstream, store, proxies):
    Store(store).close()  # replay needs a store (an empty one starts, with a warning)
    p = proxies("--mode", "replay", "--store", store, "--upstream", upstream.url)
    c = client(p, max_retries=2)  # even with retries allowed, the SDK must not retry a miss
    t0 = time.monotonic()
    with pytest.raises(openai.NotFoundError) as info:
        c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "never recorded"}])
    elapsed = time.monotonic() - t0
    msg = str(info.value)
    assert "replay miss" in msg and "--mode auto" in msg
    key = info.value.response.headers["seedtape-key"]
    assert key in msg
    assert info.value.response.headers["seedtape-status"] == "miss"
    assert info.value.code == "replay_miss"
    assert upstream.log == []
    assert elapsed < 5  # generous: a retried miss would take the SDK's backoff on top


async def test_fifty_concurrent_requests_record_and_replay(upstream, store, proxies):
    rec = proxies("--upstream", upstream.url, "--store", store, "--quiet")
    upstream.latency = 0.05
    c = async_client(rec)

    async def ask(i: int):
        return await c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": f"question {i}"}])

    first = await asyncio.gather(*(ask(i) for i in range(50)))
    assert len(upstream.log) == 50
    assert len(entries(store)) == 50
    rec.stop()
    upstream.stop()

    rep = proxies("--mode", "replay", "--store", store, "--quiet")
    c = async_client(rep)
    again = await asyncio.gather(*(ask(i) for i in range(50)))
    assert [r.choices[0].message.content for r in again] == [r.choices[0].message.content for r in first]


def test_recordings_survive_a_restart_in_auto_mode(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    first = chat(client(p), "persist me").parse()
    assert p.stop() == 0  # SIGTERM stops cleanly
    p2 = proxies("--upstream", upstream.url, "--store", store)
    raw = chat(client(p2), "persist me")
    assert raw.headers["seedtape-status"] == "hit"
    assert raw.parse().choices[0].message.content == first.choices[0].message.content
    assert len(upstream.log) == 1


def test_sigint_stops_cleanly(upstream, store, proxies):
    import signal

    p = proxies("--upstream", upstream.url, "--store", store)
    assert p.stop(signal.SIGINT) == 0


@pytest.mark.parametrize("status, exc", [(500, openai.InternalServerError), (400, openai.BadRequestError),
                                         (429, openai.RateLimitError)])
def test_upstream_errors_pass_through_unrecorded(upstream, store, proxies, status, exc):
    p = proxies("--upstream", upstream.url, "--store", store)
    upstream.fail_with = status
    with pytest.raises(exc) as info:
        chat(client(p), "this fails")
    assert info.value.status_code == status
    assert info.value.body["message"] == "fake failure"  # the upstream's own error, unchanged
    assert info.value.response.headers["seedtape-status"] == "unrecorded"
    assert len(entries(store)) == 0
    upstream.fail_with = None
    raw = chat(client(p), "this fails")  # the same request now succeeds and is recorded
    assert raw.headers["seedtape-status"] == "recorded"
    assert len(entries(store)) == 1


def test_upstream_unreachable_gives_openai_shaped_502(store, proxies):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()  # nothing listens there now
    p = proxies("--upstream", dead, "--store", store)
    c = client(p, max_retries=2)
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        chat(c, "anyone there?")
    assert time.monotonic() - t0 < 5  # x-should-retry: false, no backoff loop
    assert_openai_error(info.value, 502, "upstream_unreachable")
    assert dead in str(info.value)
    assert len(entries(store)) == 0
    # The proxy keeps serving: a second request gets the same clear answer.
    with pytest.raises(openai.APIStatusError):
        chat(c, "still nobody?")


def test_seedtape_headers_on_every_exchange(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    c = client(p)
    for expected in ("recorded", "hit"):
        h = chat(c, "headers").headers
        assert h["seedtape-status"] == expected
        assert len(h["seedtape-key"]) == 64
        assert h["seedtape-fingerprint"] == "fp_fake_1"
        assert h["seedtape-seed"] == "1234; injected"
    r = httpx.get(p.base_url + "/models", headers={"authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200 and r.headers["seedtape-status"] == "passthrough"


def test_streamed_request_reaches_client_with_injected_seed(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    c = client(p)
    stream = c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "stream"}], stream=True)
    text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    direct = openai.OpenAI(base_url=upstream.url + "/v1", api_key="x").chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "stream"}], seed=1234)
    assert text == direct.choices[0].message.content


def test_secrets_never_reach_store_or_log(upstream, store, proxies):
    from pathlib import Path

    p = proxies("--upstream", upstream.url, "--store", store)
    c = client(p, default_headers={"OpenAI-Organization": "org-private-42", "api-key": API_KEY})
    chat(c, "keep my secrets")
    chat(c, "keep my secrets")
    p.stop()
    # the upstream did get the key: seedtape forwards it, it only never writes it
    assert upstream.log[0]["headers"]["authorization"] == f"Bearer {API_KEY}"
    blobs = b"".join(f.read_bytes() for f in Path(store).iterdir()) + plaintext(store)
    for secret in (API_KEY, "org-private-42", "org-secret-fake", "secret-cookie"):
        assert secret.encode() not in blobs, secret
        assert secret not in p.output, secret
    assert b"keep my secrets" in blobs  # the grep really reads the recording


def test_ignore_field_option(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store, "--ignore-field", "user", "--ignore-field", "temperature")
    c = client(p)
    assert chat(c, "ignore", temperature=0.2).headers["seedtape-status"] == "recorded"
    assert chat(c, "ignore", temperature=0.9, user="bob").headers["seedtape-status"] == "hit"
    # `metadata` is not on the replaced list any more: it now splits the key
    assert chat(c, "ignore", metadata={"a": "b"}, store=True).headers["seedtape-status"] == "recorded"


def test_default_ignore_list(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    c = client(p)
    assert chat(c, "defaults").headers["seedtape-status"] == "recorded"
    raw = chat(c, "defaults", user="alice", metadata={"run": "2"}, store=False)
    assert raw.headers["seedtape-status"] == "hit"


def test_fingerprint_newest_and_pinned(upstream, store, proxies):
    rec = proxies("--upstream", upstream.url, "--store", store, "--mode", "record")
    c = client(rec)
    old = chat(c, "drifting").parse()
    upstream.fingerprint = "fp_fake_2"
    upstream.noise = True  # the new backend answers differently
    new = chat(c, "drifting").parse()
    assert new.choices[0].message.content != old.choices[0].message.content
    rec.stop()

    rep = proxies("--mode", "replay", "--store", store)
    assert chat(client(rep), "drifting").parse().system_fingerprint == "fp_fake_2"  # newest wins
    pinned = proxies("--mode", "replay", "--store", store, "--fingerprint", "fp_fake_1")
    got = chat(client(pinned), "drifting").parse()
    assert got.system_fingerprint == "fp_fake_1"
    assert got.choices[0].message.content == old.choices[0].message.content
    unknown = proxies("--mode", "replay", "--store", store, "--fingerprint", "fp_other")
    with pytest.raises(openai.NotFoundError) as info:
        chat(client(unknown), "drifting")
    assert "fp_fake_1" in str(info.value) and "fp_fake_2" in str(info.value) and "fp_other" in str(info.value)


def test_namespace_header_splits_keys_and_is_not_forwarded(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    a = client(p, default_headers={"seedtape-namespace": "test_a"})
    b = client(p, default_headers={"seedtape-namespace": "test_b"})
    ka = chat(a, "same").headers["seedtape-key"]
    raw = chat(b, "same")
    assert raw.headers["seedtape-status"] == "recorded" and raw.headers["seedtape-key"] != ka
    assert all("seedtape-namespace" not in {k.lower() for k in r["headers"]} for r in upstream.log)


def test_sdk_telemetry_and_auth_do_not_split_keys(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    import openai as oa

    one = oa.OpenAI(base_url=p.base_url, api_key="sk-one", max_retries=0)
    two = oa.OpenAI(base_url=p.base_url, api_key="sk-two", max_retries=0,
                    default_headers={"x-stainless-retry-count": "3", "user-agent": "other/1.0"})
    assert chat(one, "telemetry").headers["seedtape-status"] == "recorded"
    assert chat(two, "telemetry").headers["seedtape-status"] == "hit"


def test_malformed_json_gets_a_clear_400_and_proxy_keeps_serving(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    for body in (b"{not json", b"[1, 2]", b'{"a": NaN}'):
        r = httpx.post(p.base_url + "/chat/completions", content=body, headers={"content-type": "application/json"})
        err = assert_openai_error(r, 400, "invalid_request")
        assert "seedtape" in err["message"], body
    assert upstream.log == []
    assert chat(client(p), "after garbage").headers["seedtape-status"] == "recorded"


def test_replay_mode_never_forwards_unknown_endpoints(upstream, store, proxies):
    Store(store).close()
    p = proxies("--mode", "replay", "--store", store, "--upstream", upstream.url)
    r = httpx.get(p.base_url + "/models")
    assert_openai_error(r, 400, "not_replayable")
    assert upstream.log == []


def test_passthrough_mode_forwards_untouched(upstream, store, proxies):
    p = proxies("--mode", "passthrough", "--store", store, "--upstream", upstream.url)
    raw = chat(client(p), "untouched")
    assert raw.headers.get("seedtape-status") == "passthrough"
    assert "seed" not in upstream.log[0]["body"]
    assert len(entries(store)) == 0


def test_curl_style_hand_written_json_with_gzip(upstream, store, proxies):
    import gzip

    p = proxies("--upstream", upstream.url, "--store", store)
    body = json.dumps({"messages": [{"content": "gz", "role": "user"}], "model": "gpt-4o", "temperature": 1.0})
    r = httpx.post(p.base_url + "/chat/completions", content=gzip.compress(body.encode()),
                   headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert r.status_code == 200 and r.headers["seedtape-status"] == "recorded"
    # key order, whitespace and 1.0 vs 1 do not matter: the SDK's spelling hits the same recording
    raw = chat(client(p), "gz", model="gpt-4o", temperature=1)
    assert raw.headers["seedtape-status"] == "hit"
    assert raw.headers["seedtape-key"] == r.headers["seedtape-key"]


def test_quiet_logs_warnings_only(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store, "--quiet")
    c = client(p)
    chat(c, "quiet please")
    chat(c, "quiet please")  # a hit
    r = httpx.post(p.base_url + "/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    p.stop()
    assert "OPENAI_BASE_URL=" in p.output
    assert "recorded POST" not in p.output and "hit POST" not in p.output and "key=" not in p.output
