"""`seedtape push` and `pull` through a real redis-server: byte-for-byte round trips, filters, counts, exit statuses,
and a scan of everything Redis holds for secrets."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest
import redis as redis_py
import redis_support
from click.testing import CliRunner
from conftest import API_KEY
from redis_support import free_port
from test_tapes import fill, put

from seedtape.cli.main import cli
from seedtape.proxy.tapes import entry as tape_entry
from seedtape.proxy.tapes import tapefile
from seedtape.proxy.tapes.remote import MAGIC, Remote, RemoteConfig
from seedtape.proxy.tapes.store import Store

redis, redis_with_password, redis_cluster_3 = (
    redis_support.redis,
    redis_support.redis_with_password,
    redis_support.redis_cluster_3,
)
PASSWORD = "s3cret-Redis-PASSWORD-4242"


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def stored_bytes(path) -> dict[bytes, bytes]:
    """Every (entry key -> value) of a store's LMDB, as the bytes on disk."""
    with Store(Path(path), readonly=True) as st, st.env.begin() as txn:
        db = st.env.open_db(b"entries", txn=txn, create=False)
        return {bytes(k): bytes(v) for k, v in txn.cursor(db=db)}


def newest(path) -> dict[str, str | None]:
    with Store(Path(path), readonly=True) as st:
        return {k: st.latest_fingerprint(k) for k in st.keys()}  # noqa: SIM118 - Store is not iterable


@pytest.fixture
def filled(tmp_path):
    path = tmp_path / "a"
    with Store(path) as st:
        entries = fill(st)
    return path, entries


def test_push_pull_round_trip_byte_for_byte(redis, filled, tmp_path):
    src, _ = filled
    n = len(stored_bytes(src))
    r = run("push", "--remote", redis.url, "--store", str(src))
    assert r.exit_code == 0, r.output
    assert f"pushed: {n} entries added, 0 skipped, 0 conflicting" in r.output
    again = run("push", "--remote", redis.url, "--store", str(src), "--json")
    assert again.exit_code == 0
    assert json.loads(again.output) == {
        "remote": f"{redact(redis.url)} (prefix seedtape)", "added": 0, "skipped": n, "conflicting": 0, "refused": 0,
        "reencoded": 0,
    }  # fmt: skip
    dst = tmp_path / "b"
    r = run("pull", "--remote", redis.url, "--store", str(dst))
    assert r.exit_code == 0, r.output
    assert f"pulled: {n} entries added, 0 skipped, 0 conflicting" in r.output
    assert stored_bytes(dst) == stored_bytes(src)  # the same bytes, compressed as they were
    assert newest(dst) == newest(src)
    r = run("pull", "--remote", redis.url, "--store", str(dst))
    assert f"pulled: 0 entries added, {n} skipped, 0 conflicting" in r.output
    with Remote(RemoteConfig(redis.url)) as remote:  # what Redis holds is the store's bytes too
        assert {(e.key, e.fingerprint): raw for e, raw in remote.entries()} == {
            tuple(k.decode().split("\0")): v for k, v in stored_bytes(src).items()
        }


def redact(url: str) -> str:
    from seedtape.proxy.tapes.remote import redact_url

    return redact_url(url)


def test_filters(redis, tmp_path):
    src = tmp_path / "a"
    with Store(src) as st:
        put(st, "old one", model="gpt-4o-mini", at=time.time() - 10 * 86400)
        put(st, "new one", model="gpt-4o-mini", at=time.time() - 60)
        put(st, "other model", model="gpt-4.1", at=time.time() - 60)
    r = run("push", "--remote", redis.url, "--store", str(src), "--model", "gpt-4o-mini", "--newer-than", "1d", "--json")
    assert json.loads(r.output)["added"] == 1
    r = run("push", "--remote", redis.url, "--store", str(src), "--json")
    assert json.loads(r.output)["added"] == 2 and json.loads(r.output)["skipped"] == 1
    dst = tmp_path / "b"
    r = run("pull", "--remote", redis.url, "--store", str(dst), "--older-than", "2d", "--json")
    assert json.loads(r.output)["added"] == 1
    with Store(dst, readonly=True) as st:
        assert [e.request["body"]["messages"][0]["content"] for e in st.entries()] == ["old one"]
    with Store(src, readonly=True) as st:
        key = next(e.key for e in st.entries() if e.model == "gpt-4.1")
    r = run("pull", "--remote", redis.url, "--store", str(dst), "--key", key[:10], "--since", "2020-01-01", "--json")
    assert json.loads(r.output)["added"] == 1


def test_conflicts_exit_1_and_keep_both_sides(redis, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    with Store(a) as st:
        put(st, "q", reply="from a")
        put(st, "shared", reply="same everywhere")
    with Store(b) as st:
        put(st, "q", reply="from b")  # the same request key and fingerprint, another answer
        put(st, "shared", reply="same everywhere")
    assert run("push", "--remote", redis.url, "--store", str(a)).exit_code == 0
    before_b = stored_bytes(b)
    r = run("push", "--remote", redis.url, "--store", str(b))
    assert r.exit_code == 1 and "0 entries added, 1 skipped, 1 conflicting" in r.output
    r = run("pull", "--remote", redis.url, "--store", str(b), "--json")
    assert r.exit_code == 1 and json.loads(r.output)["conflicting"] == 1 and json.loads(r.output)["skipped"] == 1
    assert stored_bytes(b) == before_b  # the local entry stays
    with Remote(RemoteConfig(redis.url)) as remote:
        got = {e.body for e, _ in remote.entries()}
    assert any(b"from a" in body for body in got) and not any(b"from b" in body for body in got)


def test_push_a_tape_directory(redis, filled, tmp_path):
    src, _ = filled
    assert run("export", "--store", str(src), str(tmp_path / "tapes")).exit_code == 0
    r = run("push", "--remote", redis.url, "--tapes", str(tmp_path / "tapes"))
    assert r.exit_code == 0 and f"{len(stored_bytes(src))} entries added" in r.output
    assert run("pull", "--remote", redis.url, "--store", str(tmp_path / "b")).exit_code == 0
    loaded = {f"{e.key}\0{e.fingerprint}".encode(): e.encode() for e in tapefile.load(tmp_path / "tapes")}
    assert stored_bytes(tmp_path / "b") == loaded  # what the tapes hold, as `seedtape import` would store it
    r = run("push", "--remote", redis.url, "--tapes", str(tmp_path / "tapes"), "--store", str(src))
    assert r.exit_code == 2 and "not both" in r.output


def test_bad_remote_values_are_refused_and_the_rest_pulled(redis, tmp_path):
    a = tmp_path / "a"
    with Store(a) as st:
        bad = put(st, "to be damaged")
        put(st, "fine")
    run("push", "--remote", redis.url, "--store", str(a))
    db = redis_py.Redis.from_url(redis.url)
    k = f"seedtape:e:{{{bad.key}}}:fp_a"
    db.set(k, db.get(k)[:-5])  # truncated
    r = CliRunner().invoke(cli, ["pull", "--remote", redis.url, "--store", str(tmp_path / "b")])
    assert r.exit_code == 1
    assert "1 entry added, 0 skipped, 0 conflicting, 1 refused" in r.output
    assert f"refused: the remote {redact(redis.url)} (prefix seedtape) holds a bad entry for request key {bad.key}" in r.output


def test_unreachable_remote_exit_2_one_redacted_line(tmp_path, filled):
    src, _ = filled
    url = f"redis://me:{PASSWORD}@127.0.0.1:{free_port()}/0"
    for cmd in (["push", "--store", str(src)], ["pull", "--store", str(tmp_path / "b")]):
        r = CliRunner().invoke(cli, [*cmd, "--remote", url, "--remote-timeout", "0.5"])
        assert r.exit_code == 2, r.output
        assert PASSWORD not in r.output
        assert len(r.output.strip().splitlines()) == 1 and "redis://me:***@127.0.0.1" in r.output
    r = CliRunner().invoke(cli, ["push", "--remote", f"http://me:{PASSWORD}@x", "--store", str(src)])
    assert r.exit_code == 2 and PASSWORD not in r.output and "http://me:***@x" in r.output
    assert not (tmp_path / "b").exists()  # pull fails before it creates the store


def test_help_never_shows_a_password(monkeypatch):
    monkeypatch.setenv("SEEDTAPE_REMOTE", f"redis://me:{PASSWORD}@127.0.0.1:1/0")
    for cmd in ("push", "pull"):
        r = CliRunner().invoke(cli, [cmd, "--help"])
        assert r.exit_code == 0 and PASSWORD not in r.output and "--remote-prefix" in r.output


def test_cluster_push_pull(redis_cluster_3, filled, tmp_path):
    src, _ = filled
    url = redis_cluster_3.url
    assert run("push", "--remote", url, "--remote-prefix", "clipush", "--store", str(src)).exit_code == 0
    assert run("pull", "--remote", url, "--remote-prefix", "clipush", "--store", str(tmp_path / "b")).exit_code == 0
    assert stored_bytes(tmp_path / "b") == stored_bytes(src)


# -- the secret scan -----------------------------------------------------------------------------------------

AZURE_KEY = "SECRET-azure-apikey-5f1e93"


def everything_in(url: str) -> bytes:
    """Every key and value Redis holds, entries decompressed (their zstd frames would hide a secret)."""
    db = redis_py.Redis.from_url(url)
    out = []
    for k in db.scan_iter(count=1000):
        out.append(k)
        kind = db.type(k)
        if kind == b"string":
            v = db.get(k)
            out.append(v)
            if v.startswith(MAGIC):
                out.append(tape_entry.plaintext(v[len(MAGIC) + 32 :]))
        elif kind == b"set":
            out += list(db.smembers(k))
        elif kind == b"stream":
            out += [json.dumps({f.decode(): v.decode() for f, v in fields.items()}).encode() for _, fields in db.xrange(k)]
        else:
            out.append(db.dump(k) or b"")
    return b"\n".join(out)


def test_no_secret_reaches_redis(redis, upstream, proxies, tmp_path):
    store = str(tmp_path / "recorded")
    p = proxies("--upstream", upstream.url, "--store", store)
    c = openai.OpenAI(base_url=p.base_url, api_key=API_KEY, max_retries=0, default_headers={"api-key": AZURE_KEY})
    for text in ("hello", "again"):
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
    stream = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "s"}], stream=True)
    for _ in stream:
        pass
    p.stop()
    r = run("push", "--remote", redis.url, "--store", store, "--json")
    assert json.loads(r.output)["added"] == 3
    with Store(store, readonly=True) as st, Remote(RemoteConfig(redis.url)) as remote:
        for event in st.events():
            remote.add_event(event)
        remote.add_event({"key": "k", "note": "an event as the proxy writes it"})
    held = everything_in(redis.url)
    assert b"chat.completion" in held  # the scan does see the entries' plain text
    for secret in (API_KEY, AZURE_KEY, API_KEY.split("-")[-1]):
        assert secret.encode() not in held, secret
