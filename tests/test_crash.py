"""Crash safety: `seedtape serve` killed with SIGKILL while recordings are in flight.

The store's promise (seedtape/proxy/tapes/store.py): every commit is synced, so a crash loses at most
the transaction in flight and never corrupts what was committed. Here a real proxy records
concurrent JSON completions and streams from a slow fake upstream and is killed -9 at several
moments; after each kill a proxy must open the same store, `seedtape stats` must work, every
entry must decode and be complete, the counters must agree with the entries, everything a
client saw recorded must be there, and replay must give back every entry byte for byte.

The test process keeps the store open (read-only) the whole time, so LMDB never gets to
reset its lock file between kills: the reader slots the killed proxies held stay behind unless
a restarted proxy clears them (Store runs reader_check on open), which is checked too.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import httpx
import openai
import pytest
from conftest import API_KEY
from fake_upstream import deterministic_text
from support import run_cli

from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.store import Store

pytestmark = pytest.mark.slow

N_JSON = 24
N_STREAM = 6
STAGGER = 0.015  # seconds between request starts: answers arrive spread out, not all at once
# When to kill, per round: ("upstream", n) once the upstream has seen n requests of the round;
# ("done", n) once n requests of the round have come back complete.
KILL_AT = [("upstream", 20), ("done", 6), ("done", 16)]
HEADERS = {"authorization": f"Bearer {API_KEY}"}


def bodies_for(round_no: int) -> list[dict]:
    out = [{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"crash round {round_no} json {i}"}]}
           for i in range(N_JSON)]
    for i in range(N_STREAM):
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"crash round {round_no} stream {i}"}],
                "stream": True}
        if i % 2:
            body["stream_options"] = {"include_usage": True}
        out.insert(i * 5, body)  # streams spread among the JSON requests: some are mid-body at a kill
    return out


def readers(env) -> list[int]:
    """PIDs that own an LMDB reader slot (mdb_reader_list: a header line, then `pid thread txnid`)."""
    text = env.readers()
    return [int(line.split()[0]) for line in text.splitlines()[1:] if line.split() and line.split()[0].isdigit()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def record_and_kill(proxy, upstream, bodies: list[dict], kill_at: tuple[str, int]) -> dict:
    """Send every body concurrently through ``proxy``; SIGKILL it at ``kill_at``; what each client saw."""
    outcomes: list[dict | None] = [None] * len(bodies)
    state = {"launched": 0, "done": 0, "streaming": 0, "killed": None}
    seen_before = len(upstream.log)
    killed = asyncio.Event()

    def kill_if_due() -> None:
        what, n = kill_at
        count = state["done"] if what == "done" else len(upstream.log) - seen_before
        if state["killed"] is None and count >= n:
            os.kill(proxy.proc.pid, signal.SIGKILL)
            state["killed"] = {"launched": state["launched"], "done": state["done"], "streams_mid_body": state["streaming"],
                               "at_upstream": len(upstream.log) - seen_before}
            killed.set()

    async def one(c: httpx.AsyncClient, i: int, body: dict) -> None:
        await asyncio.sleep(i * STAGGER)
        if killed.is_set():
            outcomes[i] = {"sent": False}
            return
        state["launched"] += 1
        try:
            async with c.stream("POST", "/v1/chat/completions", json=body, headers=HEADERS) as r:
                state["streaming"] += bool(body.get("stream"))  # a stream's headers are in: its events flow
                try:
                    data = await r.aread()
                finally:
                    state["streaming"] -= bool(body.get("stream"))
            outcomes[i] = {"sent": True, "status": r.status_code, "seedtape": r.headers.get("seedtape-status"),
                           "key": r.headers.get("seedtape-key"), "body": data}
            state["done"] += 1
        except httpx.HTTPError as e:
            outcomes[i] = {"sent": True, "error": f"{type(e).__name__}: {e}"}
        kill_if_due()

    async def watch_upstream() -> None:
        while not killed.is_set():
            kill_if_due()
            await asyncio.sleep(0.005)

    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=proxy.origin, timeout=30, limits=limits) as c:
        watcher = asyncio.create_task(watch_upstream())
        await asyncio.gather(*(one(c, i, b) for i, b in enumerate(bodies)))
        watcher.cancel()
    assert state["killed"] is not None, f"the kill point {kill_at} was never reached: {outcomes}"
    proxy.proc.wait(10)
    return {"outcomes": outcomes, **state["killed"]}


def check_entry(e: TapeEntry) -> None:
    """A complete entry: its body parses and holds the whole answer the fake upstream gives."""
    want = deterministic_text(e.request["body"])
    assert e.status == 200 and e.fingerprint == "fp_fake_1", (e.key, e.status, e.fingerprint)
    if e.format == "json":
        body = json.loads(e.body)
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == want
        assert body["choices"][0]["finish_reason"] == "stop"
    else:
        assert e.format == "sse", e.format
        assert e.body.endswith(b"data: [DONE]\n\n"), e.body[-80:]
        chunks = e.sse_chunks()
        text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
        assert text == want
        assert any(c["choices"] and c["choices"][0]["finish_reason"] == "stop" for c in chunks)
        if e.extra.get("include_usage"):
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


def check_store(store: str, st: Store) -> dict:
    """`seedtape stats` works and agrees with the entries; every entry is complete; latest pointers are sound.

    ``st`` is the test's own handle on the store (LMDB allows one per process).
    """
    out = run_cli("stats", "--json", store=store, timeout=60, text=True, check=True)
    stats = json.loads(out.stdout)
    entries = list(st.entries())
    pairs = {(e.key, e.fingerprint) for e in entries}
    keys = {e.key for e in entries}
    for e in entries:
        check_entry(e)
    assert stats["entries"] == len(entries) == len(pairs)
    assert stats["request_keys"] == len(keys) == len(st.keys())
    assert set(st.keys()) == keys
    for k in keys:
        fp = st.latest_fingerprint(k)
        assert fp in st.fingerprints(k)
        assert st.get(k) is not None
    return {"stats": stats, "entries": {e.key: e for e in entries}}


async def replay_all(proxy, bodies: list[dict], entries: dict[str, TapeEntry]) -> None:
    """Replay every body sent so far: a stored one comes back byte for byte, an unstored one is a clean miss."""
    hit: set[str] = set()
    stored_json: list[dict] = []
    sem = asyncio.Semaphore(20)

    async def one(c: httpx.AsyncClient, body: dict) -> None:
        async with sem:
            r = await c.post("/v1/chat/completions", json=body, headers=HEADERS)
        key = r.headers["seedtape-key"]
        if key in entries:
            assert r.status_code == 200 and r.headers["seedtape-status"] == "hit", (r.status_code, r.text)
            assert r.content == entries[key].body
            hit.add(key)
            if not body.get("stream"):
                stored_json.append(body)
        else:
            assert r.status_code == 404 and r.headers["seedtape-status"] == "miss", (r.status_code, r.text)

    async with httpx.AsyncClient(base_url=proxy.origin, timeout=30) as c:
        await asyncio.gather(*(one(c, b) for b in bodies))
    assert hit == set(entries), "a stored entry no request replays"

    # The real SDK reads the replays too.
    sdk = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=API_KEY, max_retries=0)
    for body in stored_json[:3]:
        raw = await sdk.chat.completions.with_raw_response.create(**body)
        assert raw.headers["seedtape-status"] == "hit"
        assert raw.parse().choices[0].message.content == deterministic_text({**body, "seed": 1234})
    await sdk.close()


async def test_sigkill_while_recording_loses_nothing_committed(upstream, store, proxies):
    upstream.latency = 0.3
    upstream.chunk_delay = 0.03
    with Store(store):  # create it, so the test can hold it open (read-only) across every kill
        pass
    observer = Store(store, readonly=True)
    sent: list[dict] = []
    report = []
    try:
        for round_no, kill_at in enumerate(KILL_AT):
            p = proxies("--mode", "auto", "--store", store, "--upstream", upstream.url)
            bodies = bodies_for(round_no)
            sent += bodies
            before = len(check_store(store, observer)["entries"]) if round_no else 0
            res = await record_and_kill(p, upstream, bodies, kill_at)
            assert p.proc.returncode == -signal.SIGKILL
            outs = res["outcomes"]
            complete = [b for b, o in zip(bodies, outs) if o and o.get("status") == 200]
            assert len(complete) < len(bodies), "the kill came after every request had finished"
            assert res["launched"] - res["done"] >= 1, "nothing was in flight at the kill"
            dead = p.proc.pid
            left_behind = dead in readers(observer.env)

            # Restart on the same store: it opens, counts agree, every entry is whole and replays.
            r = proxies("--mode", "replay", "--store", store, "--upstream", upstream.url)
            found = check_store(store, observer)
            entries = found["entries"]
            for b, o in zip(bodies, outs):
                if o and o.get("status") == 200:  # the client saw it recorded: it was committed first
                    assert o["seedtape"] == ("recording" if b.get("stream") else "recorded"), o
                    assert o["key"] in entries and entries[o["key"]].body == o["body"]
            upstream_calls = len(upstream.log)
            await replay_all(r, sent, entries)
            assert len(upstream.log) == upstream_calls, "replay mode reached the upstream"
            assert dead not in readers(observer.env), "the killed proxy's reader slot was not freed"
            assert not [pid for pid in readers(observer.env) if not alive(pid)]
            r.stop()
            report.append({"round": round_no, "kill_at": kill_at, "sent": res["launched"],
                           "done_at_kill": res["done"], "in_flight_at_kill": res["launched"] - res["done"],
                           "streams_mid_body_at_kill": res["streams_mid_body"],
                           "at_upstream_at_kill": res["at_upstream"], "entries_this_round": len(entries) - before,
                           "entries_total": len(entries), "client_saw_complete": len(complete),
                           "dead_reader_slot_before_restart": left_behind})

        # After every kill the store is still writable: record what was lost, replay the rest.
        p = proxies("--mode", "auto", "--store", store, "--upstream", upstream.url)
        upstream.latency = 0.0
        upstream.chunk_delay = 0.0
        async with httpx.AsyncClient(base_url=p.origin, timeout=30) as c:
            rs = await asyncio.gather(*(c.post("/v1/chat/completions", json=b, headers=HEADERS) for b in sent))
        assert all(x.status_code == 200 for x in rs), [x.text for x in rs if x.status_code != 200][:3]
        assert {x.headers["seedtape-status"] for x in rs} <= {"hit", "recorded", "recording"}  # a stream's headers go out before it is recorded
        p.stop()
        final = check_store(store, observer)
        assert final["stats"]["entries"] == final["stats"]["request_keys"] == len(sent)
    finally:
        observer.close()
    print("\ncrash rounds:", *report, sep="\n  ")


HOLDER = """
import sys, time
from seedtape.proxy.tapes.store import Store
st = Store(sys.argv[1])
if sys.argv[2] == "write":  # killed inside a write transaction: LMDB's writer lock is held
    txn = st.env.begin(write=True)
    txn.put(b"uncommitted", b"junk", db=st._entries)
else:  # killed inside a read transaction: its reader slot stays taken
    txn = st.env.begin()
    txn.get(b"anything", db=st._entries)
print("holding", flush=True)
time.sleep(120)
"""


def hold_and_kill(store: str, kind: str) -> int:
    """A process that opens the store, starts a ``kind`` transaction and is SIGKILLed inside it."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER, store, kind], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "holding"
    finally:
        child.kill()
        child.wait(10)
        child.stdout.close()
    return child.pid


async def test_processes_killed_inside_transactions_leave_no_stale_locks(upstream, store, proxies):
    """Killed inside a write transaction (writer lock held) or a read one (reader slot taken), three times over.

    The test holds the store open throughout, so LMDB cannot simply reset its lock file: the next
    proxy must open, take the writer lock the dead process held, record, and free the dead reader slots.
    """
    with Store(store):
        pass
    observer = Store(store, readonly=True)
    try:
        for round_no in range(3):
            dead_writer = hold_and_kill(store, "write")
            dead_reader = hold_and_kill(store, "read")
            assert dead_reader in readers(observer.env)  # LMDB keeps a dead reader's slot...
            p = proxies("--mode", "auto", "--store", store, "--upstream", upstream.url)
            assert not {dead_reader, dead_writer} & set(readers(observer.env))  # ...until a proxy opens the store
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"after kill {round_no}"}]}
            async with httpx.AsyncClient(base_url=p.origin, timeout=20) as c:  # a stuck writer lock times out
                r = await c.post("/v1/chat/completions", json=body, headers=HEADERS)
            assert r.status_code == 200 and r.headers["seedtape-status"] == "recorded", r.text
            p.stop()
            found = check_store(store, observer)
            assert len(found["entries"]) == round_no + 1  # the dead writer's uncommitted put is gone
            assert observer.get(r.headers["seedtape-key"]).body == r.content
    finally:
        observer.close()
