"""Several proxies on one store: three processes record concurrently while others read it.

Three proxies in auto mode share one LMDB store that starts with a 64 KiB map. They record
300 distinct requests (some of them streams) plus repeats, spread across the proxies so the
same request can miss on two proxies at once, while `seedtape ls --json` and `seedtape export`
run in loops in their own processes. Afterwards every request key holds exactly one entry,
every entry is whole, no recording was lost (the entries' record counts add up to the upstream
calls), every listing and export seen on the way was consistent, and replay serves all 300.

Two kinds of proxy process:

- ``serve``: `seedtape serve`. It has no option for the initial map size and asks for the
  default 256 MiB, which LMDB takes over the store's 64 KiB (the larger one wins), so this
  run shows adoption, not growth under MapFull.
- ``mitmdump``: `mitmdump -s seedtape/addons/recorder.py --set seedtape_map_size=65536` (the
  documented way to set that option): every writer starts at 64 KiB, so the map really has to
  grow while the others write (MapFullError in one process, MapResizedError in the others).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import API_KEY
from fake_upstream import deterministic_text
from support import run_cli

from seedtape.proxy.tapes import tapefile
from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.store import Store

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
N_DISTINCT = 300
N_PROXIES = 3
SMALL_MAP = 64 * 1024
HEADERS = {"authorization": f"Bearer {API_KEY}"}
READY = re.compile(r"OPENAI_BASE_URL=(http://\S+)/v1")


def bodies() -> list[dict]:
    out = []
    for i in range(N_DISTINCT):
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"multiprocess prompt {i}"}]}
        if i % 10 == 0:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        out.append(body)
    return out


def plan() -> list[tuple[int, int]]:
    """(body index, proxy index): every body once, every other body again on another proxy, 30 a third time."""
    sends = [(i, i % N_PROXIES) for i in range(N_DISTINCT)]
    sends += [(i, (i + 1) % N_PROXIES) for i in range(0, N_DISTINCT, 2)]
    sends += [(i, (i + 2) % N_PROXIES) for i in range(30)]
    random.Random(7).shuffle(sends)
    return sends


def recorded_map_size(store: str) -> int:
    """The map size the store's meta page records (the largest any writer committed with).

    Read with lmdb itself, so the check does not rest on `seedtape stats` (which reports the same
    size, see test_stats_reports_the_store_map_size). Opening with map_size=0 adopts the meta's
    size; run in a child so this process holds no handle.
    """
    code = ("import lmdb, sys; e = lmdb.open(sys.argv[1], readonly=True, max_dbs=8, map_size=0); "
            "print(e.info()['map_size'])")
    return int(subprocess.run([sys.executable, "-c", code, store], capture_output=True, text=True, check=True).stdout)


class Server:
    """A proxy child process whose output goes to a file; ready once it prints its base URL."""

    def __init__(self, cmd: list[str], log: Path, timeout: float = 30.0):
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while not (m := READY.search(log.read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{cmd[:3]} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        self.origin = m.group(1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def proxy_cmd(kind: str, store: str, upstream: str, mode: str = "auto") -> list[str]:
    if kind == "serve":
        return [sys.executable, "-m", "seedtape", "serve", "--port", "0", "--quiet", "--mode", mode,
                "--store", store, "--upstream", upstream]
    mitmdump = Path(sys.executable).with_name("mitmdump")
    return [str(mitmdump), "-q", "--mode", f"reverse:{upstream}", "--listen-host", "127.0.0.1", "-p", "0",
            "-s", str(ROOT / "seedtape" / "addons" / "recorder.py"), "--set", f"seedtape_store={store}",
            "--set", f"seedtape_mode={mode}", "--set", f"seedtape_map_size={SMALL_MAP}",
            "--set", "connection_strategy=lazy"]


class Loop(threading.Thread):
    """Runs a `seedtape` command over and over until stopped; ``check`` judges each run's result."""

    def __init__(self, args: list[str], check):
        super().__init__(daemon=True)
        self.args, self.check = args, check
        self.stop_event = threading.Event()
        self.runs = 0
        self.failure: str | None = None

    def run(self) -> None:
        while not self.stop_event.is_set() and self.failure is None:
            self.once()

    def once(self) -> None:
        out = run_cli(*self.args, timeout=60, text=True, cwd=ROOT)
        try:
            assert out.returncode == 0, out.stderr[-2000:]
            self.check(out.stdout)
            self.runs += 1
        except Exception as e:  # reported by the test thread
            self.failure = f"seedtape {' '.join(self.args[:2])}: {type(e).__name__}: {e}"

    def finish(self) -> None:
        self.stop_event.set()
        self.join(90)
        assert self.failure is None, self.failure


def check_entry(e: TapeEntry) -> None:
    """A whole entry: its body parses and holds the complete answer of the fake upstream."""
    want = deterministic_text(e.request["body"])
    if e.format == "json":
        assert json.loads(e.body)["choices"][0]["message"]["content"] == want
    else:
        assert e.format == "sse" and e.body.endswith(b"data: [DONE]\n\n")
        chunks = e.sse_chunks()
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == want
        assert chunks[-1]["usage"]["total_tokens"] > 0


async def send_all(origins: list[str], reqs: list[dict], sends: list[tuple[int, int]]) -> list[httpx.Response]:
    sem = asyncio.Semaphore(60)
    limits = httpx.Limits(max_connections=30, max_keepalive_connections=30)
    clients = [httpx.AsyncClient(base_url=o, timeout=60, limits=limits) for o in origins]

    async def one(i: int, p: int) -> httpx.Response:
        async with sem:
            return await clients[p].post("/v1/chat/completions", json=reqs[i], headers=HEADERS)

    try:
        return await asyncio.gather(*(one(i, p) for i, p in sends))
    finally:
        for c in clients:
            await c.aclose()


@pytest.mark.parametrize("kind", ["serve", "mitmdump"])
async def test_three_proxies_share_one_store(kind, upstream, tmp_path):
    store = str(tmp_path / "store")
    with Store(store, map_size=SMALL_MAP):  # the store starts small
        pass
    map_before = recorded_map_size(store)
    assert map_before == SMALL_MAP
    reqs, sends = bodies(), plan()

    listings: list[set[str]] = []
    exports: list[int] = []

    def check_ls(stdout: str) -> None:
        rows = json.loads(stdout)
        keys = {r["key"] for r in rows}
        assert len(keys) == len(rows), "ls listed a key twice"
        assert all(len(r["fingerprints"]) == 1 for r in rows), "a key with more than one entry"
        if listings:
            assert keys >= listings[-1], "a key vanished between two listings"
        listings.append(keys)

    export_dir = tmp_path / "tapes"

    def check_export(stdout: str) -> None:
        loaded = tapefile.load(export_dir)  # every file parses, every body matches its sha256
        for e in loaded:
            check_entry(e)
        assert len({e.key for e in loaded}) == len(loaded)
        if exports:
            assert len(loaded) >= exports[-1], "an export lost entries"
        exports.append(len(loaded))

    servers: list[Server] = []
    loops = [Loop(["ls", "--json", "--store", store], check_ls), Loop(["export", "--store", store, str(export_dir)], check_export)]
    try:
        for n in range(N_PROXIES):
            servers.append(Server(proxy_cmd(kind, store, upstream.url), tmp_path / f"proxy{n}.log"))
        for loop in loops:
            loop.start()
        t0 = time.monotonic()
        responses = await send_all([s.origin for s in servers], reqs, sends)
        record_seconds = time.monotonic() - t0
        for loop in loops:
            loop.finish()
        for s in servers:
            s.stop()
        logs = "\n".join(s.log.read_text() for s in servers)
        assert "Traceback" not in logs and "internal error" not in logs, logs[-3000:]
    finally:
        for loop in loops:
            loop.stop_event.set()
        for s in servers:
            s.stop()
        for loop in loops:
            if loop.is_alive():
                loop.join(90)

    bad = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
    assert not bad, bad[:5]
    statuses = [r.headers["seedtape-status"] for r in responses]
    assert set(statuses) <= {"hit", "recorded", "recording"}, set(statuses)
    keys = {r.headers["seedtape-key"] for r in responses}
    assert len(keys) == N_DISTINCT
    live = sum(s != "hit" for s in statuses)
    upstream_calls = len(upstream.requests_to("/chat/completions"))
    assert live == upstream_calls

    # One last listing and export of the finished store.
    for loop in loops:
        loop.once()
        assert loop.failure is None, loop.failure
    assert listings[-1] == keys and exports[-1] == N_DISTINCT

    with Store(store, readonly=True) as st:
        entries = list(st.entries())
        stats = st.stats()
        assert {e.key for e in entries} == keys == set(st.keys())
        assert len(entries) == len({(e.key, e.fingerprint) for e in entries}) == N_DISTINCT  # one entry per key
        assert stats["entries"] == stats["request_keys"] == N_DISTINCT
        for e in entries:
            check_entry(e)
            assert st.latest_fingerprint(e.key) == e.fingerprint
        # No recording was lost: each live answer was written (a concurrent re-record counts up, never replaces silently).
        assert sum(e.times_recorded for e in entries) == upstream_calls
        stored = {e.key: e.body for e in entries}
    assert {e.key: e.body for e in tapefile.load(export_dir)} == stored

    map_after = recorded_map_size(store)
    data_size = (Path(store) / "data.mdb").stat().st_size
    assert map_after >= data_size
    if kind == "mitmdump":
        assert map_after > SMALL_MAP, "the 64 KiB map never grew"

    # Replay serves every one of them, byte for byte.
    replay = Server(proxy_cmd("serve", store, upstream.url, mode="replay"), tmp_path / "replay.log")
    try:
        async with httpx.AsyncClient(base_url=replay.origin, timeout=60) as c:
            sem = asyncio.Semaphore(30)

            async def one(body: dict) -> httpx.Response:
                async with sem:
                    return await c.post("/v1/chat/completions", json=body, headers=HEADERS)

            replays = await asyncio.gather(*(one(b) for b in reqs))
    finally:
        replay.stop()
    assert all(r.status_code == 200 and r.headers["seedtape-status"] == "hit" for r in replays)
    assert all(r.content == stored[r.headers["seedtape-key"]] for r in replays)
    assert len(upstream.requests_to("/chat/completions")) == upstream_calls

    print(f"\n{kind}: {len(sends)} requests ({N_DISTINCT} distinct) through {N_PROXIES} proxies in {record_seconds:.1f}s; "
          f"{upstream_calls} upstream calls, {statuses.count('hit')} hits; {len(entries)} entries; "
          f"map {map_before} -> {map_after} bytes (data.mdb {data_size}); "
          f"concurrent ls runs {loops[0].runs}, export runs {loops[1].runs}")


def test_stats_reports_the_store_map_size(tmp_path):
    """`seedtape stats` map_size should be the store's, not the size its own read-only handle asked for."""
    store = str(tmp_path / "store")
    with Store(store, map_size=SMALL_MAP):
        pass
    out = run_cli("stats", "--json", store=store, text=True, check=True)
    assert json.loads(out.stdout)["map_size"] == recorded_map_size(store) == SMALL_MAP


def _entry(n: int) -> TapeEntry:
    request = {"v": 1, "method": "POST", "path": "/v1/chat/completions", "query": [], "namespace": "",
               "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"index prompt {n}"}], "seed": 1234}}
    return TapeEntry(key=f"{n:064x}", fingerprint="fp_fake_1", endpoint="chat.completions", request=request,
                     status=200, headers=[], body=b"{}")


def test_miss_index_refresh_does_not_pin_objects_that_die_later(tmp_path):
    """A replay proxy's miss index refreshes while another proxy records into the same store.

    Whatever is alive at that moment (here a cycle standing for a flow in flight) must still be
    collected once it becomes garbage.
    """
    import gc
    import weakref

    from seedtape.proxy.explain import nearest

    class InFlight:
        pass

    with Store(tmp_path / "store") as st:
        st.put(_entry(0))
        index = nearest.NearestIndex(st)
        try:
            index.refresh()  # the first miss builds the index
            st.put(_entry(1))  # another proxy records meanwhile
            flow = InFlight()
            flow.me = flow  # flows hold reference cycles: only the cyclic collector frees them
            alive = weakref.ref(flow)
            assert index.nearest(_entry(2).request)  # the next miss refreshes the index
            del flow  # the flow finishes
            gc.collect()
            assert alive() is None, "an object alive during a refresh is never collected"
        finally:
            gc.unfreeze()  # whatever happens, give this test process its collector back
