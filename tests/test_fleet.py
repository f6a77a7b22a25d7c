"""A fleet: proxies with stores of their own sharing recordings and events through a real Redis (issue 16).

Every test runs real `seedtape serve` processes (lean mitmproxy), real LMDB stores and a real
`redis-server` on a free loopback port (tests/redis_support.py), with the fake upstream.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading

import httpx
import pytest
import redis as redislib
from conftest import API_KEY, FakeUpstream, wait_for
from redis_support import redis, redis_cluster_3, redis_server, redis_with_password  # noqa: F401 - fixtures

from seedtape.proxy.tapes.store import Store

pytestmark = pytest.mark.slow
HEADERS = {"authorization": f"Bearer {API_KEY}"}
OFFLINE = "http://127.0.0.1:9"  # the discard port: nothing answers there


def body(text: str, **kw) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **kw}


def post(proxy, payload: dict, timeout: float = 30.0) -> httpx.Response:
    return httpx.post(f"{proxy.base_url}/chat/completions", json=payload, headers=HEADERS, timeout=timeout)


def raw_of(proxy, payload: dict) -> tuple[str, str, bytes]:
    """(seedtape-status, key, body bytes) of one exchange, streamed or not."""
    with httpx.stream("POST", f"{proxy.base_url}/chat/completions", json=payload, headers=HEADERS, timeout=30) as r:
        data = r.read()
    assert r.status_code == 200, data[:300]
    return r.headers["seedtape-status"], r.headers["seedtape-key"], data


def redis_keys(url_or_server, prefix: str = "seedtape") -> list[bytes]:
    r = redislib.Redis.from_url(url_or_server.url if hasattr(url_or_server, "url") else url_or_server)
    try:
        return sorted(r.scan_iter(match=f"{prefix}:*"))
    finally:
        r.close()


def entries(store: str) -> dict[str, bytes]:
    with Store(store, readonly=True) as st:
        return {e.key: e.body for e in st.entries()}


PROMPTS = [body(f"fleet prompt {i}", **({"stream": True} if i % 3 == 0 else {})) for i in range(9)]


def test_one_proxy_records_another_replays_offline_from_the_remote(proxies, tmp_path, redis):  # noqa: F811
    up = FakeUpstream().start()
    try:
        a = proxies("--store", str(tmp_path / "a"), "--upstream", up.url, "--remote", redis.url)
        recorded = {}
        for b in PROMPTS:
            status, key, data = raw_of(a, b)
            assert status in ("recorded", "recording")
            recorded[key] = data
        assert len(up.log) == len(PROMPTS)
    finally:
        up.stop()
    # the second proxy: its own, empty store; the upstream is gone; replay only
    b = proxies("--mode", "replay", "--store", str(tmp_path / "b"), "--upstream", OFFLINE, "--remote", redis.url)
    for payload in PROMPTS:
        status, key, data = raw_of(b, payload)
        assert status == "hit" and data == recorded[key]  # byte for byte, streams included
    assert wait_for(lambda: entries(str(tmp_path / "b")) == recorded)  # copied into its local store
    b.stop()
    # ... so it replays them with the remote gone too
    redis.stop()
    c = proxies("--mode", "replay", "--store", str(tmp_path / "b"), "--upstream", OFFLINE, "--remote", redis.url)
    for payload in PROMPTS:
        assert raw_of(c, payload)[0] == "hit"


def test_three_proxies_every_recording_replays_through_every_other(proxies, tmp_path, redis):  # noqa: F811
    up = FakeUpstream().start()
    try:
        fleet = [
            proxies("--store", str(tmp_path / f"s{i}"), "--upstream", up.url, "--remote", redis.url, "--quiet")
            for i in range(3)
        ]
        mine = {i: [body(f"proxy {i} prompt {j}") for j in range(6)] for i in range(3)}
        answers = {}
        with concurrent.futures.ThreadPoolExecutor(9) as pool:
            jobs = {pool.submit(raw_of, fleet[i], b): (i, j) for i in range(3) for j, b in enumerate(mine[i])}
            for job, (i, j) in jobs.items():
                status, _, data = job.result()
                assert status == "recorded"
                answers[(i, j)] = data
    finally:
        up.stop()  # from here on nothing can go live
    for i, p in enumerate(fleet):
        for k in range(3):
            for j, b in enumerate(mine[k]):
                status, _, data = raw_of(p, b)
                assert status == "hit", (i, k, j)
                assert data == answers[(k, j)]


def test_a_read_only_proxy_reads_the_remote_and_records_locally_only(proxies, tmp_path, redis, upstream):  # noqa: F811
    writer = proxies("--store", str(tmp_path / "w"), "--upstream", upstream.url, "--remote", redis.url)
    assert raw_of(writer, body("shared"))[0] == "recorded"
    before = redis_keys(redis)
    ro = proxies("--store", str(tmp_path / "ro"), "--upstream", upstream.url, "--remote", redis.url, "--remote-readonly")
    assert raw_of(ro, body("shared"))[0] == "hit"  # from the remote
    assert raw_of(ro, body("branch only"))[0] == "recorded"  # recorded ...
    assert "branch only" not in json.dumps([k.decode() for k in redis_keys(redis)])
    assert redis_keys(redis) == before  # ... locally only: Redis was not written
    with Store(str(tmp_path / "ro"), readonly=True) as st:
        assert len(st.keys()) == 2 and st.queued_count() == 0


def test_redis_killed_and_restarted_mid_load_loses_nothing(proxies, tmp_path, upstream):
    with redis_server() as r:
        p = proxies("--store", str(tmp_path / "a"), "--upstream", upstream.url, "--remote", r.url)
        warm = [body(f"warm {i}") for i in range(10)]
        for b in warm:
            assert raw_of(p, b)[0] == "recorded"
        r.stop()  # Redis goes away under load
        failures: list[str] = []
        new: dict[str, bytes] = {}
        lock = threading.Lock()

        def client(n: int) -> None:
            for i in range(6):
                try:
                    assert raw_of(p, warm[(n + i) % len(warm)])[0] == "hit"  # local hits go on
                    status, key, data = raw_of(p, body(f"while away {n} {i}"))
                    assert status == "recorded"
                    with lock:
                        new[key] = data
                except Exception as e:  # collected and asserted below
                    failures.append(repr(e))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not failures, failures[:3]
        assert p.logged("serving from the local store, recordings queue on disk until it answers")
        # a replay miss elsewhere fails closed, naming the remote (not its password, there is none here)
        replay = proxies("--mode", "replay", "--store", str(tmp_path / "b"), "--upstream", OFFLINE, "--remote", r.url)
        miss = post(replay, body("while away 0 0"))
        assert miss.status_code == 424 and "could not be searched" in miss.json()["error"]["message"]
        assert f"127.0.0.1:{r.port}" in miss.json()["error"]["message"]
        r.start()  # back, empty (no persistence): everything queued is pushed
        assert p.logged("answers again; pushing", timeout=20)
        assert wait_for(lambda: queued_in(str(tmp_path / "a")) == 0, timeout=20)
        assert replay.logged("answers again", timeout=20)  # it pings the remote again within a second or so
        for n in range(4):
            for i in range(6):
                status, key, data = raw_of(replay, body(f"while away {n} {i}"))
                assert status == "hit" and data == new[key]


def queued_in(path: str) -> int:
    with Store(path, readonly=True) as st:
        return st.queued_count()


def test_unreachable_at_start_is_one_warning_or_with_required_a_refusal(proxies, tmp_path, upstream):
    port = _free_port()
    url = f"redis://:Pa55-never-shown@127.0.0.1:{port}/0"
    p = proxies("--store", str(tmp_path / "a"), "--upstream", upstream.url, "--remote", url)
    assert raw_of(p, body("local only"))[0] == "recorded"  # it serves, from the local store
    p.stop()
    assert p.output.count("serving from the local store") == 1
    assert "Pa55-never-shown" not in p.output
    out = subprocess.run(
        [sys.executable, "-m", "seedtape", "serve", "--port", "0", "--store", str(tmp_path / "b"), "--remote", url,
         "--remote-required"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    text = out.stdout + out.stderr
    assert "--remote-required" in text and f"127.0.0.1:{port}" in text
    assert "Pa55-never-shown" not in text and "Traceback" not in text
    helped = subprocess.run(
        [sys.executable, "-m", "seedtape", "serve", "--help"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "SEEDTAPE_REMOTE": url},
    )
    assert "--remote" in helped.stdout and "Pa55-never-shown" not in helped.stdout


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_secret_reaches_redis_and_its_password_no_log(proxies, tmp_path, upstream, redis_with_password):  # noqa: F811
    url = redis_with_password.url
    password = "s3cret-Redis-PASSWORD-4242"
    assert password in url
    p = proxies("--store", str(tmp_path / "a"), "--upstream", upstream.url, "--remote", url, "--mode", "record")
    for b in PROMPTS[:4]:
        raw_of(p, b)
    audit = proxies("--store", str(tmp_path / "b"), "--upstream", upstream.url, "--remote", url, "--mode", "audit")
    raw_of(audit, PROMPTS[1])
    r = redislib.Redis.from_url(url)
    try:
        seen = 0
        for k in r.scan_iter(match="*"):
            kind = r.type(k).decode()
            if kind == "stream":
                value = repr(r.xrange(k)).encode()
            elif kind == "string":
                value = r.get(k) or b""
            else:
                value = r.dump(k) or b""
            for v in (k, value):
                seen += 1
                assert API_KEY.encode() not in v and b"sk-seedtape-TEST" not in v, k
                assert password.encode() not in v, k
    finally:
        r.close()
    assert seen > 4
    for proc in (p, audit):
        proc.stop()
        assert password not in proc.output


def test_cluster_mode_shares_recordings(proxies, tmp_path, redis_cluster_3):  # noqa: F811
    up = FakeUpstream().start()
    try:
        a = proxies("--store", str(tmp_path / "a"), "--upstream", up.url, "--remote", redis_cluster_3.url)
        recorded = {}
        for payload in PROMPTS:
            status, key, data = raw_of(a, payload)
            assert status in ("recorded", "recording")
            recorded[key] = data
    finally:
        up.stop()
    b = proxies("--mode", "replay", "--store", str(tmp_path / "b"), "--upstream", OFFLINE, "--remote", redis_cluster_3.url)
    for payload in PROMPTS:
        status, key, data = raw_of(b, payload)
        assert status == "hit" and data == recorded[key]


def test_drift_events_of_every_proxy_and_audit_are_read_fleet_wide(proxies, tmp_path, redis, upstream):  # noqa: F811
    from support import run_cli

    stores = [str(tmp_path / f"s{i}") for i in range(2)]
    for i, st in enumerate(stores):
        rec = proxies("--store", st, "--upstream", upstream.url, "--remote", redis.url, "--quiet")
        assert raw_of(rec, body(f"drift me {i}"))[0] == "recorded"
        rec.stop()
    upstream.fingerprint = "fp_fake_2"  # the backend changes (same text): audit mode reports it
    for i, st in enumerate(stores):
        audit = proxies("--store", st, "--upstream", upstream.url, "--remote", redis.url, "--mode", "audit", "--quiet")
        raw_of(audit, body(f"drift me {i}"))
        assert wait_for(lambda st=st: len(store_events(st)) == 1)
        audit.stop()
    fleet = json.loads(run_cli("events", "--remote", redis.url, "--json", text=True, check=True).stdout)
    assert sorted(e["key"] for e in fleet) == sorted(store_events(s)[0]["key"] for s in stores)  # both proxies' events
    assert {e["verdict"] for e in fleet} == {"fingerprint-only"} and {e["source"] for e in fleet} == {"proxy"}
    one = json.loads(run_cli("events", "--remote", redis.url, "--json", "--key", fleet[0]["key"][:8], text=True).stdout)
    assert [e["key"] for e in one] == [fleet[0]["key"]]  # filtered as locally
    other = json.loads(run_cli("events", "--remote", redis.url, "--remote-prefix", "other", "--json", text=True).stdout)
    assert other == []  # prefixes keep projects apart
    # `seedtape audit --remote`: its samples join the fleet's events
    out = run_cli("audit", "--store", stores[0], "--upstream", upstream.url, "--repeats", "1", "--remote", redis.url,
                  text=True, env={"OPENAI_API_KEY": API_KEY})
    assert out.returncode in (0, 1), out.stderr
    after = json.loads(run_cli("events", "--remote", redis.url, "--json", "--source", "audit", text=True).stdout)
    assert len(after) == 1 and after[0]["key"] == store_events(stores[0])[0]["key"]
    stats = run_cli("stats", "--store", stores[0], "--remote", redis.url, "--remote-readonly", text=True, check=True).stdout
    assert "remote_prefix   seedtape" in stats and "remote_readonly yes" in stats and "queued          0" in stats


def store_events(path: str) -> list[dict]:
    with Store(path, readonly=True) as st:
        return st.events()


def test_a_hung_redis_holds_a_client_no_longer_than_the_timeout(proxies, tmp_path, redis, upstream):  # noqa: F811
    rec = proxies("--store", str(tmp_path / "a"), "--upstream", upstream.url, "--remote", redis.url, "--quiet")
    status, _, local = raw_of(rec, body("kept locally"))
    assert status == "recorded"
    rec.stop()
    p = proxies("--mode", "replay", "--store", str(tmp_path / "a"), "--upstream", OFFLINE, "--remote", redis.url,
                "--upstream-timeout", "1")
    redis.pause()  # SIGSTOP: connections open, nothing answers
    try:
        miss = post(p, body("nowhere"), timeout=20)  # held at most the 1 s timeout, not forever
        assert miss.status_code == 424 and "timed out" in miss.json()["error"]["message"]
        status, _, data = raw_of(p, body("kept locally"))  # local hits go on
        assert status == "hit" and data == local
        again = post(p, body("nowhere either"), timeout=20)  # while it is down: at once, the same error
        assert again.status_code == 424
    finally:
        redis.resume()


def test_key_by_credential_matches_across_the_fleet_with_a_shared_salt(proxies, tmp_path, redis, upstream):  # noqa: F811
    args = ("--remote", redis.url, "--key-by-credential", "--credential-salt", "fleet-salt-1")
    a = proxies("--store", str(tmp_path / "a"), "--upstream", upstream.url, *args)
    status, key, data = raw_of(a, body("who asks"))
    assert status == "recorded"
    b = proxies("--mode", "replay", "--store", str(tmp_path / "b"), "--upstream", OFFLINE, *args)
    assert raw_of(b, body("who asks")) == ("hit", key, data)  # the same key on another machine
    c = proxies("--mode", "replay", "--store", str(tmp_path / "c"), "--upstream", OFFLINE, "--remote", redis.url,
                "--key-by-credential")  # its own random salt: another key, a miss
    assert post(c, body("who asks")).status_code == 404
