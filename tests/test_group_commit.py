"""Group commit (seedtape/proxy/tapes/writer.py): recordings written off the event loop, many per fsync.

The promise kept: a client gets its answer (a stream its end) only once its recording is on disk,
so whatever a client received replays, also after a kill -9; a burst of recordings shares commits.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import httpx
import lmdb
import pytest
from conftest import API_KEY

from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.store import Store
from seedtape.proxy.tapes.writer import GroupWriter, WriterClosed

HEADERS = {"authorization": f"Bearer {API_KEY}"}


def entry(i: int, body: bytes = b'{"ok": true}') -> TapeEntry:
    return TapeEntry(
        key=f"{i:064x}",
        fingerprint="fp_1",
        endpoint="chat",
        request={"body": {"i": i}},
        status=200,
        headers=[],
        body=body,
        format="json",
    )


# -- the store's batch ------------------------------------------------------------------------


def test_batch_writes_every_step_in_one_transaction(tmp_path):
    with Store(tmp_path / "s") as st:
        results = st.batch([st.replacing(entry(i)) for i in range(5)] + [st.adding_event({"kind": "x"})])
        assert results[:5] == [None] * 5  # nothing was replaced
        assert isinstance(results[5], str)
        assert len(st.keys()) == 5 and len(st.events()) == 1
        again = st.batch([st.replacing(entry(0, b'{"ok": false}'))])
        assert again[0] is not None and again[0].body == b'{"ok": true}'  # the entry it replaced
        assert st.get(entry(0).key).times_recorded == 2


def test_a_failing_step_is_undone_alone(tmp_path):
    def half_then_fail(txn):
        txn.put(b"junk-" + b"x", b"1", db=st._entries)
        raise ValueError("step failed")

    with Store(tmp_path / "s") as st:
        results = st.batch([st.replacing(entry(1)), half_then_fail, st.replacing(entry(2))])
        assert isinstance(results[1], ValueError)
        assert sorted(st.keys()) == sorted([entry(1).key, entry(2).key])
        assert st.env.begin(db=st._entries).get(b"junk-x") is None  # its half write was undone


def test_a_batch_grows_the_map_and_runs_again(tmp_path):
    with Store(tmp_path / "s", map_size=64 * 1024) as st:
        big = [entry(i, os.urandom(20_000)) for i in range(40)]  # far more than the first map holds
        results = st.batch([st.replacing(e) for e in big])
        assert results == [None] * 40
        assert len(st.keys()) == 40
        assert all(st.get(e.key).body == e.body and st.get(e.key).times_recorded == 1 for e in big)


# -- the writer thread ------------------------------------------------------------------------


def test_concurrent_writes_share_commits(tmp_path):
    with Store(tmp_path / "s") as st:
        w = GroupWriter(st)
        futures = []
        lock = threading.Lock()

        def submit(start: int) -> None:
            for i in range(start, start + 50):
                f = w.submit(st.replacing(entry(i)))
                with lock:
                    futures.append(f)

        threads = [threading.Thread(target=submit, args=(n * 50,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(f.result(timeout=30) is None for f in futures)
        w.close()
        assert w.writes == 400
        assert w.commits < w.writes  # some shared a commit (an fsync)
        assert len(st.keys()) == 400


def test_a_failing_write_fails_its_own_future_only(tmp_path):
    def boom(txn):
        raise RuntimeError("disk says no")

    with Store(tmp_path / "s") as st:
        w = GroupWriter(st)
        good, bad = w.submit(st.replacing(entry(1))), w.submit(boom)
        assert good.result(timeout=10) is None
        with pytest.raises(RuntimeError, match="disk says no"):
            bad.result(timeout=10)
        w.close()
        assert st.keys() == [entry(1).key]


def test_close_writes_what_is_queued_and_refuses_more(tmp_path):
    with Store(tmp_path / "s") as st:
        w = GroupWriter(st)
        futures = [w.submit(st.replacing(entry(i))) for i in range(100)]
        w.close()
        assert all(f.done() and f.exception() is None for f in futures)
        assert len(st.keys()) == 100
        late = w.submit(st.replacing(entry(500)))
        with pytest.raises(WriterClosed):
            late.result(timeout=1)


def test_a_transaction_that_fails_as_a_whole_fails_every_future(tmp_path):
    st = Store(tmp_path / "s")
    w = GroupWriter(st)
    st.env.close()  # the store goes away under the writer
    fut = w.submit(lambda txn: None)
    with pytest.raises(lmdb.Error):
        fut.result(timeout=10)
    w.close()


# -- through a real proxy -----------------------------------------------------------------------


def bodies(tag: str, n: int) -> list[dict]:
    out = []
    for i in range(n):
        body: dict = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"group {tag} {i}"}]}
        if i % 3 == 0:
            body["stream"] = True
        out.append(body)
    return out


async def test_each_answer_arrives_after_its_recording_is_on_disk(upstream, store, proxies):
    p = proxies("--mode", "auto", "--store", store, "--upstream", upstream.url)
    sent = bodies("disk", 48)
    with Store(store, readonly=True) as observer:
        missing: list[str] = []
        commits_before = observer.env.info()["last_txnid"]  # LMDB counts committed write transactions

        async def one(c: httpx.AsyncClient, body: dict) -> tuple[dict, bytes, str]:
            async with c.stream("POST", "/v1/chat/completions", json=body, headers=HEADERS) as r:
                data = await r.aread()
            assert r.status_code == 200, data[:200]
            key = r.headers["seedtape-key"]
            # The client has the whole answer (a stream: its end): the recording must be readable now.
            if observer.get(key) is None:
                missing.append(key)
            return body, data, key

        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(base_url=p.origin, timeout=30, limits=limits) as c:
            done = await asyncio.gather(*(one(c, b) for b in sent))
        assert not missing, f"{len(missing)} answers arrived before their recordings were on disk"
        for _, data, key in done:
            assert observer.get(key).body == data  # what the client got is what replay serves
        assert any(b.get("stream") for b, _, _ in done)
        assert len(observer.keys()) == len(sent)
        commits = observer.env.info()["last_txnid"] - commits_before
    assert 0 < commits < len(sent), "32 concurrent recordings never shared a commit"


async def test_kill_9_in_a_recording_storm_loses_no_answer_a_client_received(upstream, store, proxies):
    p = proxies("--mode", "auto", "--store", store, "--upstream", upstream.url)
    received: list[tuple[dict, bytes, str]] = []
    stop = asyncio.Event()
    pending = bodies("storm", 2000)

    async def client(c: httpx.AsyncClient) -> None:
        while pending and not stop.is_set():
            body = pending.pop()
            try:
                async with c.stream("POST", "/v1/chat/completions", json=body, headers=HEADERS) as r:
                    data = await r.aread()
            except httpx.HTTPError:
                return  # the proxy died under this request: the client never got an answer
            if r.status_code == 200:
                received.append((body, data, r.headers["seedtape-key"]))
            if len(received) >= 150 and not stop.is_set():
                stop.set()
                os.kill(p.proc.pid, signal.SIGKILL)

    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(base_url=p.origin, timeout=30, limits=limits) as c:
        await asyncio.gather(*(client(c) for _ in range(16)))
    p.proc.wait(10)
    assert p.proc.returncode == -signal.SIGKILL
    assert len(received) >= 150

    r = proxies("--mode", "replay", "--store", store, "--upstream", "http://127.0.0.1:9")
    with Store(store, readonly=True) as st:
        for _, data, key in received:
            e = st.get(key)
            assert e is not None, f"{key[:12]}: a client received it, but it was not on disk"
            assert e.body == data
    sem = asyncio.Semaphore(16)

    async def replay(c: httpx.AsyncClient, body: dict, data: bytes) -> None:
        async with sem:
            got = await c.post("/v1/chat/completions", json=body, headers=HEADERS)
        assert got.headers["seedtape-status"] == "hit", got.text[:200]
        assert got.content == data

    async with httpx.AsyncClient(base_url=r.origin, timeout=30) as c:
        await asyncio.gather(*(replay(c, b, d) for b, d, _ in received))


def test_the_map_grows_while_the_proxy_thread_reads_and_the_writer_writes(tmp_path):
    """LMDB remaps on a size change: reads on one thread and the writer's growth on another must not overlap."""
    with Store(tmp_path / "s", map_size=64 * 1024) as st:
        st.put(entry(0))
        w = GroupWriter(st)
        futures = [w.submit(st.replacing(entry(i, os.urandom(30_000)))) for i in range(1, 120)]
        reads = 0
        while not all(f.done() for f in futures):
            assert st.get(entry(0).key) is not None  # the proxy thread keeps reading meanwhile
            reads += 1
            time.sleep(0.0005)
        w.close()
        assert all(f.exception() is None for f in futures), [f.exception() for f in futures if f.exception()][:3]
        assert len(st.keys()) == 120 and reads > 0
