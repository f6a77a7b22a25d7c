"""The remote tier's store (seedtape.proxy.tapes.remote) against real redis-server processes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis as redis_py
import redis_support
from redis_support import require_redis

from seedtape.proxy.key.canonical import canonicalize
from seedtape.proxy.tapes import remote as remote_mod
from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.remote import Remote, RemoteConfig, RemoteError, redact_url

T0 = 1_700_000_000.123457
redis, redis_with_password, redis_cluster_3 = (
    redis_support.redis,
    redis_support.redis_with_password,
    redis_support.redis_cluster_3,
)
PASSWORD = "s3cret-Redis-PASSWORD-4242"


def entry(
    text: str = "hello", fp: str = "fp_a", at: float = T0, reply: str = "an answer", model: str = "gpt-4o-mini"
) -> TapeEntry:
    c = canonicalize("POST", "/v1/chat/completions", "", {"model": model, "messages": [{"role": "user", "content": text}]})
    body = json.dumps({"choices": [{"message": {"content": reply}}], "system_fingerprint": fp, "model": model}).encode()
    return TapeEntry(
        key=c.key, fingerprint=fp, endpoint="chat.completions", request=c.to_json(), status=200,
        headers=[["content-type", "application/json"]], body=body * 3, model=model, recorded_at=at, first_recorded_at=at,
    )  # fmt: skip


def remote(server, **kw) -> Remote:
    return Remote(RemoteConfig(server.url, **kw))


def raw_client(server) -> redis_py.Redis:
    return redis_py.Redis.from_url(server.url)


# -- entries -------------------------------------------------------------------------------------


def test_put_get_round_trip_byte_for_byte(redis):
    e = entry()
    raw = e.encode()
    with remote(redis) as r:
        r.ping()
        assert r.get(e.key) is None and r.get_raw(e.key, "fp_a") is None
        assert r.put(e) == "added"
        assert r.get_raw(e.key) == ("fp_a", raw)
        assert r.get_raw(e.key, "fp_a") == ("fp_a", raw)
        assert r.get(e.key) == e
        assert r.get(e.key, "fp_other") is None
        assert r.fingerprints(e.key) == ["fp_a"]
        assert list(r.keys()) == [e.key]
        assert [(x, b) for x, b in r.entries()] == [(e, raw)]
        assert r.count() == 1
        assert r.info() == {"name": r.name, "prefix": "seedtape", "readonly": False, "cluster": False, "entries": 1}
    stored = raw_client(redis).get(f"seedtape:e:{{{e.key}}}:fp_a")
    assert stored == b"SR1" + hashlib.sha256(raw).digest() + raw


def test_same_and_conflict_the_remote_keeps_its_own(redis):
    first = entry(reply="first")
    other = entry(reply="second")  # same key and fingerprint, other bytes
    with remote(redis) as r:
        assert r.put(first) == "added"
        assert r.put(first) == "same"
        assert r.put(other) == "conflict"
        assert r.get(first.key) == first
        assert r.put_many([first, other, entry("another")]) == ["same", "conflict", "added"]
        assert r.count() == 2


def test_newest_pointer_follows_recorded_at(redis):
    with remote(redis) as r:
        assert r.put(entry(fp="fp_a", at=T0)) == "added"
        assert r.put(entry(fp="fp_b", at=T0 + 10)) == "added"
        assert r.put(entry(fp="fp_c", at=T0 + 5)) == "added"  # older: stored, not the newest
        key = entry().key
        assert r.get(key).fingerprint == "fp_b"
        assert r.fingerprints(key) == ["fp_a", "fp_b", "fp_c"]
        assert r.put(entry(fp="fp_c", at=T0 + 5)) == "same"  # re-offering an older one moves nothing
        assert r.get(key).fingerprint == "fp_b"
        assert r.put(entry(fp="fp_d", at=T0 + 10)) == "added"  # as recent: it wins, as in the local store
        assert r.get(key).fingerprint == "fp_d"


def test_raw_bytes_must_be_the_entry(redis):
    e = entry()
    with remote(redis) as r:
        with pytest.raises(ValueError, match="another key or fingerprint"):
            r.put(e, entry(fp="fp_b").encode())
        with pytest.raises(ValueError, match="not an entry"):
            r.put(e, b"junk")
        with pytest.raises(ValueError, match="not a request key"):
            r.get("../etc")


def test_concurrent_puts_from_threads_keep_the_newest(redis):
    n_threads, per_thread = 8, 25
    outcomes: list[str] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        with remote(redis) as r:
            got = []
            for i in range(per_thread):
                at = T0 + ((i * 7919 + t * 104729) % 1000)  # interleaved times; distinct fingerprints
                got.append(r.put(entry(fp=f"fp_{t}_{i}", at=at)))
                got.append(r.put(entry(fp="fp_shared", reply=f"thread {t}")))  # one (key, fp), many bytes
            with lock:
                outcomes.extend(got)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    with remote(redis) as r:
        key = entry().key
        entries = {e.fingerprint: e for e, _ in r.entries()}
        assert len(entries) == n_threads * per_thread + 1
        newest = max(entries.values(), key=lambda e: e.recorded_at).recorded_at
        assert r.get(key).recorded_at == newest
    shared = [o for o in outcomes if o != "added"]
    assert outcomes.count("added") == n_threads * per_thread + 1  # exactly one writer won fp_shared
    assert set(shared) <= {"same", "conflict"}


_CHILD = """
import sys
sys.path.insert(0, {tests!r})
from test_remote import entry, T0
from seedtape.proxy.tapes.remote import Remote, RemoteConfig
r = Remote(RemoteConfig({url!r}))
start = float(sys.argv[1])
for i in range(200):
    r.put(entry(fp=f"fp_{{sys.argv[2]}}_{{i}}", at=start + (i * 37 % 200)))
"""


def test_concurrent_puts_from_two_processes(redis):
    code = _CHILD.format(tests=str(Path(__file__).parent), url=redis.url)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(T0 + s), name]) for s, name in ((0, "p"), (50, "q"))]
    assert [p.wait(60) for p in procs] == [0, 0]
    with remote(redis) as r:
        key = entry().key
        assert len(r.fingerprints(key)) == 400
        best = max((e for e, _ in r.entries()), key=lambda e: e.recorded_at)
        assert best.recorded_at == T0 + 50 + 199  # q's latest
        assert r.get(key).recorded_at == best.recorded_at


def test_readonly_refuses_every_write(redis):
    e = entry()
    with remote(redis) as w:
        w.put(e)
    with remote(redis, readonly=True) as r:
        for attempt in (lambda: r.put(entry("x")), lambda: r.put_many([entry("y")]), lambda: r.add_event({"a": 1})):
            with pytest.raises(RemoteError, match="read-only"):
                attempt()
        assert r.get(e.key) == e
        assert r.info()["readonly"] is True
    assert raw_client(redis).exists(f"seedtape:e:{{{entry('x').key}}}:fp_a") == 0


def test_prefixes_keep_projects_apart(redis):
    with remote(redis, prefix="alpha") as a, remote(redis, prefix="beta") as b:
        e = entry()
        assert a.put(e) == "added"
        a.add_event({"key": e.key, "verdict": "drift"})
        assert b.get(e.key) is None and list(b.keys()) == [] and b.events() == [] and b.count() == 0
        assert b.put(entry(reply="beta's own")) == "added"  # no conflict across prefixes
        assert a.get(e.key) == e
    assert all(k.startswith((b"alpha:", b"beta:")) for k in raw_client(redis).scan_iter())
    with pytest.raises(ValueError, match="remote prefix"):
        RemoteConfig(redis.url, prefix="a{b}*")


# -- events ----------------------------------------------------------------------------------------


def test_events_read_back_in_order_and_bounded(redis, monkeypatch):
    monkeypatch.setattr(remote_mod, "EVENTS_MAX", 100)
    with remote(redis) as r:
        ids = [r.add_event({"n": i, "key": "k", "note": "café ✓"}) for i in range(1500)]
        events = r.events()
    assert 100 <= len(events) <= 300  # MAXLEN ~ trims whole stream nodes (100 entries each)
    assert [e["n"] for e in events] == list(range(1500 - len(events), 1500))
    assert [e["id"] for e in events] == ids[-len(events) :]
    assert events[-1]["note"] == "café ✓"


def test_a_bad_event_is_skipped(redis):
    with remote(redis) as r:
        r.add_event({"n": 1})
        raw_client(redis).xadd("seedtape:events", {"event": b"not json"})
        raw_client(redis).xadd("seedtape:events", {"other": b"{}"})
        r.add_event({"n": 2})
        assert [e["n"] for e in r.events()] == [1, 2]


# -- an untrusted remote ------------------------------------------------------------------------------


def test_corrupted_values_are_refused_naming_the_key(redis):
    e, other = entry(), entry("another request")
    raw = e.encode()
    good = b"SR1" + hashlib.sha256(raw).digest() + raw
    k = f"seedtape:e:{{{e.key}}}:fp_a"
    wrong_inside = other.encode()
    cases = {
        "checksum": good[:-1] + bytes([good[-1] ^ 1]),
        "truncated": good[:-10],
        "magic": b"XX1" + good[3:],
        "another key": b"SR1" + hashlib.sha256(wrong_inside).digest() + wrong_inside,
        "does not decode": b"SR1" + hashlib.sha256(b"ST2garbage").digest() + b"ST2garbage",
        "short": b"SR1",
    }
    db = raw_client(redis)
    with remote(redis) as r:
        r.put(e)
        for why, value in cases.items():
            db.set(k, value)
            with pytest.raises(RemoteError) as info:
                r.get(e.key)
            assert e.key in str(info.value) and "not used" in str(info.value), why
            errors: list[RemoteError] = []
            assert list(r.entries(errors=errors)) == [] and len(errors) == 1
        db.set(k, good)
        db.set(f"seedtape:l:{{{e.key}}}", b'{"fingerprint": "bad fp\\n", "recorded_at": 1}')
        with pytest.raises(RemoteError, match=e.key):
            r.get(e.key)
        db.set(f"seedtape:l:{{{e.key}}}", b"[]")
        with pytest.raises(RemoteError, match="pointer"):
            r.get(e.key)
        assert r.get(e.key, "fp_a") == e  # by fingerprint the entry itself is fine
        db.delete(k)
        db.set(k, b"x")
        db.setrange(k, remote_mod.MAX_ENTRY_BYTES + 40, b"x")  # too large: refused without reading it all
        with pytest.raises(RemoteError, match="larger than"):
            r.get(e.key, "fp_a")
        db.delete(k)
        db.sadd(f"seedtape:f:{{{e.key}}}", "has space")
        with pytest.raises(RemoteError, match="fingerprint set"):
            r.fingerprints(e.key)


def test_wrong_type_and_junk_keys(redis):
    e = entry()
    db = raw_client(redis)
    db.lpush(f"seedtape:e:{{{e.key}}}:fp_a", b"x")
    db.set("seedtape:l:{nothex}", b"{}")
    with remote(redis) as r:
        with pytest.raises(RemoteError, match="WRONGTYPE"):
            r.put(e)
        with pytest.raises(RemoteError):
            r.get(e.key, "fp_a")
        assert list(r.keys()) == []


# -- faults and secrets ------------------------------------------------------------------------------------


def _no_secret(*texts: str) -> None:
    for t in texts:
        assert PASSWORD not in t and "wrong-PASS-999" not in t, t


def test_unreachable_remote_is_a_remote_error_without_the_password(redis):
    port = redis.port
    redis.stop()
    url = f"redis://me:{PASSWORD}@127.0.0.1:{port}/0"
    r = Remote(RemoteConfig(url, timeout=1))
    assert r.name == f"redis://me:***@127.0.0.1:{port}/0 (prefix seedtape)"
    _no_secret(r.name, repr(r.config), str(r.config))
    e = entry()
    calls = [r.ping, lambda: r.get(e.key), lambda: r.put(e), lambda: list(r.keys()), r.events, r.count, lambda: r.add_event({})]
    for call in calls:
        t = time.monotonic()
        with pytest.raises(RemoteError) as info:
            call()
        assert time.monotonic() - t < 2
        assert "127.0.0.1" in str(info.value)
        _no_secret(str(info.value), repr(info.value))


def test_wrong_password_is_a_remote_error_without_it(redis_with_password):
    port = redis_with_password.port
    for url in (
        f"redis://:wrong-PASS-999@127.0.0.1:{port}/0",
        f"redis://default:wrong-PASS-999@127.0.0.1:{port}/0",
        f"redis://127.0.0.1:{port}/0?password=wrong-PASS-999",
        f"redis://127.0.0.1:{port}/0",  # none at all
    ):
        r = Remote(RemoteConfig(url))
        _no_secret(r.name, repr(r.config))
        for call in (r.ping, lambda r=r: r.get(entry().key), lambda r=r: r.put(entry())):
            with pytest.raises(RemoteError) as info:
                call()
            _no_secret(str(info.value), repr(info.value))
    with Remote(RemoteConfig(redis_with_password.url)) as ok:
        ok.ping()
        assert ok.put(entry()) == "added"
        assert PASSWORD not in ok.name


def test_bad_urls_are_value_errors_without_the_password():
    for url, why in (
        (f"http://u:{PASSWORD}@h:1", "use redis://"),
        (f"redis://u:{PASSWORD}@h:notaport/0", "host or port"),
        (f"redis://u:{PASSWORD}@h:1/x", "not a number"),
        (f"redis+cluster://u:{PASSWORD}@h:1/3", "only database 0"),
        (f"redis://u:{PASSWORD}@:1/0", "no host"),
    ):
        with pytest.raises(ValueError, match=why) as info:
            RemoteConfig(url)
        _no_secret(str(info.value))
        assert "u:***@" in str(info.value)


def test_redact_url():
    assert redact_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert redact_url("rediss://:pw@h:1") == "rediss://:***@h:1"
    assert redact_url("redis://pw@h:1/0") == "redis://***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
    assert redact_url("redis+cluster://u:p@ss/w@h:1") == "redis+cluster://u:***@h:1"
    assert redact_url("redis://h:1/0?password=pw&x=1") == "redis://h:1/0?password=***&x=1"


@pytest.mark.parametrize("how", ["debug-sleep", "sigstop"])
def test_a_hung_redis_costs_at_most_the_timeout(redis, how):
    e = entry()
    with remote(redis, timeout=0.5) as r:
        r.put(e)
        if how == "sigstop":
            redis.pause()
        else:
            threading.Thread(target=lambda: raw_client(redis).execute_command("DEBUG", "SLEEP", "3"), daemon=True).start()
            time.sleep(0.2)
        try:
            for call in (lambda: r.get(e.key), lambda: r.put(entry("other")), r.ping):
                t = time.monotonic()
                with pytest.raises(RemoteError, match=r"timed out after 0\.5s"):
                    call()
                assert time.monotonic() - t < 1.5
        finally:
            if how == "sigstop":
                redis.resume()
        deadline = time.monotonic() + 10
        while True:  # it answers again once the server does
            try:
                assert r.get(e.key) == e
                break
            except RemoteError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def test_restarted_redis_is_used_again(redis):
    with remote(redis, timeout=1) as r:
        r.put(entry())
        redis.stop()
        with pytest.raises(RemoteError):
            r.ping()
        redis.restart()  # no persistence: it comes back empty
        assert r.get(entry().key) is None
        assert r.put(entry()) == "added"


# -- cluster -----------------------------------------------------------------------------------------------


def test_cluster_put_get_keys_entries_events(redis_cluster_3):
    url = redis_cluster_3.url
    assert url.startswith("redis+cluster://")
    with Remote(RemoteConfig(url, prefix="cl")) as r:
        r.ping()
        assert r.info()["cluster"] is True
        many = [entry(f"request {i}", fp=f"fp_{i % 3}", at=T0 + i) for i in range(60)]
        assert r.put_many(many) == ["added"] * 60
        assert r.put(many[0]) == "same" and r.put(entry("request 0", fp="fp_0", reply="other")) == "conflict"
        assert r.put(entry("request 0", fp="fp_z", at=T0 + 100)) == "added"
        assert r.get(many[0].key).fingerprint == "fp_z"
        assert r.fingerprints(many[0].key) == ["fp_0", "fp_z"]
        assert sorted(r.keys()) == sorted({e.key for e in many})
        got = {(e.key, e.fingerprint): raw for e, raw in r.entries()}
        assert len(got) == 61 and all(got[(e.key, e.fingerprint)] == e.encode() for e in many[1:])
        for i in range(5):
            r.add_event({"n": i})
        assert [e["n"] for e in r.events()] == list(range(5))
        assert r.count() == 61
    # the entries really are spread over the masters
    per_node = [int(n.cli("dbsize").strip()) for n in redis_cluster_3.nodes]
    assert sum(1 for n in per_node if n > 0) == 3


def test_cluster_unreachable_is_a_remote_error():
    require_redis()
    from redis_support import free_port

    r = Remote(RemoteConfig(f"redis+cluster://u:{PASSWORD}@127.0.0.1:{free_port()}", timeout=0.5))
    with pytest.raises(RemoteError) as info:
        r.ping()
    _no_secret(str(info.value))
