"""The remote tier on Redis (issue 16): local and remote hits, misses, recording with and without it, three proxies.

What it measures, in one run, for non-streamed `POST /v1/chat/completions`, against a real `redis-server`
(/usr/bin/redis-server, started here on a free loopback port in a temporary directory with
`--save '' --appendonly no`, stopped at the end whatever happened; tests/redis_support.py):

1. Latency of one request: `seedtape serve --mode replay --quiet` (a fresh proxy per row and round), a
   sequential client on one keep-alive connection (http.client, --requests requests per row and round
   after a warm-up), p50 and p99 per round, for
   - a local hit without `--remote`: the baseline;
   - a local hit with `--remote`: the entry is in the proxy's local store (a local hit must not pay
     for the remote);
   - a remote hit: the proxy starts on an empty local store with `--remote`, and every request is a
     prompt recorded into Redis beforehand that this proxy has not seen, so every one is a first,
     remote look-up (the proxy copies a remote hit into its local store: prompts are never reused; the
     copies are counted after the proxy stopped);
   - a miss: neither has it; the answer must be the 404 `replay_miss` whose explanation says the remote
     had none either.
   The two local-hit rows also get `wrk -t1 -c8` (--connections) for --duration seconds through
   bench/wrk_post.lua (every answer must be a 200 with `seedtape-status: hit`): throughput, wrk's
   p50/p99, the proxy's CPU use and CPU time per request.
   The prompts are recorded first by a `--mode auto --remote` proxy in front of the bench upstream (its
   store is then the local-hit rows' store); Redis must then hold one entry per prompt.
2. Recording throughput: `--mode auto --quiet` in front of bench/fast_upstream.py, `wrk -t1 -c16`
   (--record-connections) with a prompt never sent before on every request (bench/wrk_distinct.lua:
   every answer must be a 200 with `seedtape-status: recorded`), --warmup + --duration seconds, with and
   without `--remote`, each run on a fresh local store. After each run with the remote, once the proxy
   stopped: the Redis entries it added (SCAN `seedtape:e:*`) must equal the entries of its local store,
   with nothing left queued for the remote, and be at least the recorded answers wrk saw.
3. Three proxies sharing one Redis: three `--mode auto --remote` proxies (fresh local stores, unpinned)
   in front of one fast upstream record at once (three wrk -c8 runs in parallel, distinct prompts, a
   warm-up then --duration seconds). Then the upstream stops, and every prompt each proxy recorded (read
   back from its local store) is sent through each of the two others (one sequential client per
   proxy, the three in parallel): every answer must be a hit. Printed: the prompts recorded, the
   combined recording req/s, the hits over the requests sent, and the time the replay took.

Every server and load generator is its own process; all traffic stays on 127.0.0.1. When `taskset`
exists and two cores are available, the proxy under test in parts 1 and 2 is pinned to the first core,
and wrk, the sequential client (this script's thread, pinned while it times) and the upstream to the
second; Redis runs unpinned (it does little here) and part 3 is unpinned. Rounds are interleaved
(--repeats; the row order rotates per round); each figure is the median over the rounds, with min..max.
The load average is printed at the start and the end. A run with any error (a non-200 where a 200 was
due, an unexpected seedtape-status, a socket error, a replay that is not a hit, a Redis or store count
that does not match) is flagged and makes the script exit 1; it is never silently averaged in. wrk is
not a Python package: `apt-get install wrk`; without it (or without redis-server) the script exits 2.

    .venv/bin/python bench/bench_remote.py [--repeats 3] [--requests 500] [--duration 4] [--warmup 1]
        [--connections 8] [--record-connections 16] [--no-pin]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bench_baselines import port_closed
from bench_record import new_tag, rng, store_state, wrk_distinct
from bench_replay import MODEL, ROOT, run_bench, sdk_json, seedtape_cmd
from bench_responses import API_KEY, Pinning, Server, med, pct, version, wrk_run, wrk_version
from redis_support import REDIS_SERVER, RedisServer

PATH = "/v1/chat/completions"
OFFLINE = "http://127.0.0.1:9"  # discard port: a replay proxy never forwards anything
FAST_UPSTREAM = ROOT / "bench" / "fast_upstream.py"
PREFIX = "seedtape"  # --remote-prefix default
HEADERS = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
WARMUP_REQUESTS = 50  # sequential requests before each timed latency row (not timed; errors count)
REMOTE_NOTE = b"has no recording for this request either"  # a miss's explanation when a remote is configured
LATENCY_ROWS = {  # key: label
    "local": "local hit, no --remote",
    "local-remote": "local hit, --remote",
    "remote": "remote hit (local miss)",
    "miss": "miss (404, explained)",
}


def body(text: str) -> bytes:
    """A chat completion body, byte for byte as the openai SDK sends it."""
    return sdk_json({"model": MODEL, "messages": [{"role": "user", "content": text}]})


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- the sequential client -----------------------------------------------------------------------------


class Client:
    """One keep-alive connection (http.client), as a test suite's sequential client uses one."""

    def __init__(self, origin: str):
        u = urlsplit(origin)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)

    def post(self, data: bytes) -> tuple[float, int, str, bytes]:
        """Seconds, HTTP status, seedtape-status ("-" if none) and body of one request."""
        t0 = time.perf_counter()
        self.conn.request("POST", PATH, data, HEADERS)
        r = self.conn.getresponse()
        answer = r.read()
        return time.perf_counter() - t0, r.status, r.getheader("seedtape-status") or "-", answer

    def close(self) -> None:
        self.conn.close()


def problem(status: int, st: str, answer: bytes, want: str) -> str:
    """Why an answer is not the one wanted ("hit", "recorded" or "miss"), or "" when it is."""
    if want == "miss":
        if status != 404 or st != "miss" or b"replay_miss" not in answer or REMOTE_NOTE not in answer:
            return f"HTTP {status} {st}, not the explained 404 miss naming the remote: {answer[:200]!r}"
        return ""
    if status != 200 or st != want:
        return f"HTTP {status} seedtape-status {st}, expected {want}: {answer[:200]!r}"
    return ""


@contextlib.contextmanager
def client_core(pin: Pinning) -> Iterator[None]:
    """Pin the calling thread (the sequential client) to the client core while it times."""
    if not pin.client:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(pin.client[-1])})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def sequential(origin: str, bodies: list[bytes], want: str) -> dict:
    """Send every body once, in order, on one connection; latencies in ms and the answers that were not `want`."""
    c = Client(origin)
    times, ok, errors, first = [], 0, 0, ""
    try:
        for b in bodies:
            try:
                s, status, st, answer = c.post(b)
            except (OSError, http.client.HTTPException) as e:
                errors, first = errors + 1, first or f"{type(e).__name__}: {e}"
                c.close()
                c = Client(origin)
                continue
            times.append(s * 1000)
            if why := problem(status, st, answer, want):
                errors, first = errors + 1, first or why
            else:
                ok += 1
    finally:
        c.close()
    times.sort()
    p50 = statistics.median(times) if times else float("nan")
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))] if times else float("nan")
    return {"p50": p50, "p99": p99, "n": len(times), "ok": ok, "errors": errors, "first_bad": first}


def record_prompts(origin: str, bodies: list[bytes], threads: int = 8) -> dict:
    """Record every body through an auto-mode proxy, a few clients at once (not timed)."""
    chunks = [bodies[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        runs = list(pool.map(lambda chunk: sequential(origin, chunk, "recorded"), chunks))
    return {"errors": sum(r["errors"] for r in runs), "first_bad": next((r["first_bad"] for r in runs if r["first_bad"]), "")}


# -- Redis and the stores --------------------------------------------------------------------------------


def redis_entries(url: str) -> int:
    """Entries in the remote: keys `PREFIX:e:*`, counted with SCAN."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return sum(1 for _ in client.scan_iter(match=f"{PREFIX}:e:*", count=1000))
    finally:
        client.close()


def queued(path: Path) -> int:
    from seedtape.proxy.tapes.store import Store

    with Store(path, readonly=True) as s:
        return s.queued_count()


def recorded_bodies(path: Path) -> list[bytes]:
    """The bodies of the prompts a store holds, rebuilt as wrk_distinct.lua sent them."""
    from seedtape.proxy.tapes.store import Store

    with Store(path, readonly=True) as s:
        requests = [req for _, req in s.requests()]
    return [body(req["body"]["messages"][0]["content"]) for req in requests]


# -- the runs ----------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, a: argparse.Namespace, tmp: Path, servers: list[Server], redis_url: str):
        self.a, self.tmp, self.servers, self.url = a, tmp, servers, redis_url
        self.pin = Pinning(not a.no_pin)
        self.hit_wrk = argparse.Namespace(threads=1, connections=a.connections)  # what wrk_run reads

    def start(self, name: str, cmd: list[str]) -> Server:
        self.servers.append(Server(name, cmd, self.tmp))
        return self.servers[-1]

    def stop(self, server: Server) -> None:
        server.stop()
        self.servers.remove(server)

    def proxy(self, name: str, pinned: bool, mode: str, store: Path, upstream: str, remote: bool = True) -> Server:
        """`seedtape serve --quiet` from this checkout, with `--remote` on the bench's Redis unless told otherwise."""
        args = [
            "--mode",
            mode,
            "--store",
            str(store),
            "--upstream",
            upstream,
            "--quiet",
            *(["--remote", self.url] if remote else []),
        ]
        return self.start(name, [*(self.pin.server if pinned else []), *seedtape_cmd(*args)])

    def upstream(self, pinned: bool = True) -> Server:
        return self.start(
            "fast upstream", [*(self.pin.client if pinned else []), sys.executable, str(FAST_UPSTREAM), "--port", "0"]
        )

    # 1. latency (and local-hit throughput)
    def latency_run(self, key: str, rnd: int, prompts: dict[str, list[bytes]], bodies_file: Path) -> dict:
        a = self.a
        store = prompts["store"] if key.startswith("local") else self.tmp / f"empty-{key}-{rnd}"
        p = self.proxy(f"{key} round {rnd}", True, "replay", store, OFFLINE, remote=key != "local")
        try:
            if key.startswith("local"):
                warm, timed, want = prompts["local"][:WARMUP_REQUESTS], prompts["local"][: a.requests], "hit"
            elif key == "remote":
                warm, timed, want = prompts[f"warm{rnd}"], prompts[f"timed{rnd}"], "hit"
            else:
                never = [body(f"Never recorded {rnd}-{i}: say something.") for i in range(WARMUP_REQUESTS + a.requests)]
                warm, timed, want = never[:WARMUP_REQUESTS], never[WARMUP_REQUESTS:], "miss"
            w = sequential(p.origin, warm, want)
            with client_core(self.pin):
                r = sequential(p.origin, timed, want)
            r["errors"] += w["errors"]
            r["first_bad"] = r["first_bad"] or (w["first_bad"] and f"(warm-up) {w['first_bad']}")
            if key.startswith("local"):
                r["wrk"] = wrk_run(self.hit_wrk, self.pin, p, "chat", bodies_file, a.duration)
        finally:
            self.stop(p)
        if key == "remote":  # the copies of the remote hits into the local store, after the proxy stopped
            r["copied"] = store_state(store)["entries"]
            r["asked"] = len(warm) + len(timed)
        return r

    # 2. recording throughput
    def record_run(self, mode: str, rnd: int, upstream: Server) -> dict:
        a, store = self.a, self.tmp / f"record-{mode}-{rnd}"
        before = redis_entries(self.url)
        p = self.proxy(f"record {mode} round {rnd}", True, "auto", store, upstream.origin, remote=mode == "with")
        try:
            warm = (
                wrk_distinct(self.pin, p.origin, new_tag("w", mode, rnd), "recorded", a.warmup, a.record_connections)
                if a.warmup
                else None
            )
            r = wrk_distinct(
                self.pin, p.origin, new_tag("t", mode, rnd), "recorded", a.duration, a.record_connections, p.proc.pid
            )
        finally:
            self.stop(p)
        if warm and warm["errors"]:
            r["errors"] += warm["errors"]
            r["first_bad"] = r["first_bad"] or f"(warm-up) {warm['first_bad']}"
        answered = r["recorded"] + (warm["recorded"] if warm else 0)
        r["local"], r["queued"] = store_state(store)["entries"], queued(store)
        r["redis"] = redis_entries(self.url) - before
        if r["local"] < answered:
            r["errors"] += 1
            r["first_bad"] = r["first_bad"] or f"store: {r['local']} entries for {answered} recorded answers"
        if mode == "with" and (r["redis"] != r["local"] or r["queued"] or r["redis"] < answered):
            r["errors"] += 1
            r["first_bad"] = r["first_bad"] or (
                f"Redis gained {r['redis']} entries; the local store holds {r['local']} ({r['queued']} queued) "
                f"for {answered} recorded answers"
            )
        r["check"] = f"{r['redis']}/{r['local']}" if mode == "with" else f"-/{r['local']}"
        return r

    # 3. three proxies, one Redis
    def fleet_run(self, rnd: int) -> dict:
        a = self.a
        before = redis_entries(self.url)
        upstream = self.upstream(pinned=False)
        proxies = [
            self.proxy(f"fleet {i} round {rnd}", False, "auto", self.tmp / f"fleet-{rnd}-{i}", upstream.origin) for i in range(3)
        ]
        unpinned = Pinning(False)
        try:

            def load(tag: str, seconds: int) -> list[dict]:  # the three wrk runs at once
                def one(i: int) -> dict:
                    return wrk_distinct(
                        unpinned, proxies[i].origin, new_tag(tag, rnd, i), "recorded", seconds, a.fleet_connections
                    )

                with ThreadPoolExecutor(3) as pool:
                    return list(pool.map(one, range(3)))

            warm = load("fw", a.warmup) if a.warmup else []
            runs = load("ft", a.duration)
            self.stop(upstream)  # from here on nothing can be recorded: a miss is an error
            if not port_closed(upstream.origin):
                raise RuntimeError("the fast upstream still answers after it was stopped")
            time.sleep(0.2)  # wrk's abandoned requests end (failed) once the upstream is gone
            recorded = [recorded_bodies(self.tmp / f"fleet-{rnd}-{i}") for i in range(3)]
            in_redis = redis_entries(self.url) - before

            def replay(j: int) -> dict:  # every prompt the two others recorded, through proxy j
                return sequential(proxies[j].origin, [b for k in range(3) if k != j for b in recorded[k]], "hit")

            t0 = time.perf_counter()
            with ThreadPoolExecutor(3) as pool:
                replays = list(pool.map(replay, range(3)))
            replay_s = time.perf_counter() - t0
        finally:
            for p in proxies:
                self.stop(p)
            if upstream in self.servers:
                self.stop(upstream)
        every = [*warm, *runs, *replays]
        errors = sum(r["errors"] for r in every)
        first = next((r["first_bad"] for r in every if r["first_bad"]), "")
        n = sum(len(x) for x in recorded)
        answered = sum(r["recorded"] for r in [*warm, *runs])
        if in_redis != n or n < answered:
            errors += 1
            first = first or f"Redis gained {in_redis} entries; the three stores hold {n}, for {answered} recorded answers"
        return {
            "rps": sum(r["rps"] for r in runs),
            "per_proxy": [r["rps"] for r in runs],
            "recorded": n,
            "redis": in_redis,
            "sent": 2 * n,
            "hits": sum(r["ok"] for r in replays),
            "replay_s": replay_s,
            "replay_rps": 2 * n / replay_s if replay_s else float("nan"),
            "errors": errors,
            "first_bad": first,
        }


def bench(a: argparse.Namespace, tmp: Path, servers: list[Server]) -> None:
    load_start = load_avg()
    redis_srv = RedisServer(tmp / "redis")
    try:
        redis_srv.start()
        run(a, tmp, servers, redis_srv, load_start)
    finally:
        redis_srv.stop()


def run(a: argparse.Namespace, tmp: Path, servers: list[Server], redis_srv: RedisServer, load_start: str) -> None:
    b = Bench(a, tmp, servers, redis_srv.url)
    redis_version = redis_srv.cli("info", "server").partition("redis_version:")[2].split()[0:1] or ["?"]
    print(
        f"seedtape remote-tier bench (issue 16): {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, mitmproxy "
        f"{version('mitmproxy')}, seedtape {version('seedtape')}, redis-server {redis_version[0]} on 127.0.0.1:"
        f"{redis_srv.port} (redis-py {version('redis')}), wrk {wrk_version()}\npinning: {b.pin.note}\n"
        f"load average at start: {load_start}",
        flush=True,
    )

    # The prompts of part 1, recorded into a local store and Redis by an auto-mode proxy.
    upstream = b.upstream()
    prompts: dict = {"store": tmp / "seeded", "local": [body(f"Local prompt {i}: say something.") for i in range(a.requests)]}
    for r in range(a.repeats):
        prompts[f"warm{r}"] = [body(f"Remote warm-up prompt {r}-{i}: say something.") for i in range(WARMUP_REQUESTS)]
        prompts[f"timed{r}"] = [body(f"Remote prompt {r}-{i}: say something.") for i in range(a.requests)]
    every = [x for k, v in prompts.items() if k != "store" for x in v]
    t0 = time.perf_counter()
    recorder = b.proxy("recorder", False, "auto", prompts["store"], upstream.origin)
    try:
        rec = record_prompts(recorder.origin, every)
    finally:
        b.stop(recorder)
    held = redis_entries(b.url)
    print(
        f"recorded {len(every)} prompts through `--mode auto --remote` in {time.perf_counter() - t0:.1f}s; "
        f"Redis holds {held} entries",
        flush=True,
    )
    if rec["errors"] or held != len(every):
        raise RuntimeError(
            f"recording the prompts: {rec['errors']} errors ({rec['first_bad']}); "
            f"Redis holds {held} entries for {len(every)} prompts"
        )
    bodies_file = tmp / "local-bodies.jsonl"  # wrk_post.lua cycles through these: all local hits
    bodies_file.write_bytes(b"".join(x + b"\n" for x in prompts["local"]))

    lat: dict[str, list[dict]] = {k: [] for k in LATENCY_ROWS}
    recs: dict[str, list[dict]] = {"without": [], "with": []}
    fleet: list[dict] = []
    keys = list(LATENCY_ROWS)
    for rnd in range(a.repeats):  # interleaved: every part once per round, the rows' order rotating
        for key in keys[rnd % len(keys) :] + keys[: rnd % len(keys)]:
            lat[key].append(x := b.latency_run(key, rnd, prompts, bodies_file))
            print(
                f"  round {rnd + 1} {LATENCY_ROWS[key]:<24} p50 {x['p50']:.3f} ms p99 {x['p99']:.3f} ms"
                + (f", wrk {x['wrk']['rps']:.0f} req/s" if "wrk" in x else "")
                + (f"  !! {x['errors']} errors: {x['first_bad']}" if x["errors"] else ""),
                flush=True,
            )
        for mode in ("without", "with") if rnd % 2 == 0 else ("with", "without"):
            recs[mode].append(x := b.record_run(mode, rnd, upstream))
            print(
                f"  round {rnd + 1} recording {mode + ' --remote':<16} {x['rps']:.0f} req/s, Redis/local {x['check']}"
                + (f"  !! {x['errors']} errors: {x['first_bad']}" if x["errors"] else ""),
                flush=True,
            )
        fleet.append(x := b.fleet_run(rnd))
        print(
            f"  round {rnd + 1} three proxies: {x['rps']:.0f} req/s recording, {x['hits']}/{x['sent']} replay hits "
            f"in {x['replay_s']:.1f}s" + (f"  !! {x['errors']} errors: {x['first_bad']}" if x["errors"] else ""),
            flush=True,
        )
    b.stop(upstream)
    a.status = report(a, lat, recs, fleet)
    print(f"\nload average at start {load_start}, at end {load_avg()} ({os.cpu_count()} CPUs)")


# -- the report ----------------------------------------------------------------------------------------------


def report(a: argparse.Namespace, lat: dict[str, list[dict]], recs: dict[str, list[dict]], fleet: list[dict]) -> int:
    flagged = 0
    print(f"\nMedians of {a.repeats} interleaved rounds (min..max); errors: all runs of the row, warm-ups included.")
    print(
        f"\n1. One request at a time: `--mode replay`, http.client on one keep-alive connection, {a.requests} "
        f"requests per row and round after {WARMUP_REQUESTS} warm-up requests; ms"
    )
    head = f"{'row':<26} {'errors':>6} {'p50':>7} {'range p50':>13} {'p99':>7} {'range p99':>13}"
    print(head + "\n" + "-" * len(head))
    m = {}
    for key, label in LATENCY_ROWS.items():
        runs = lat[key]
        errors = sum(r["errors"] for r in runs)
        flagged += errors
        m[key] = {"p50": med(runs, "p50"), "p99": med(runs, "p99")}
        print(
            f"{label + (' (!)' if errors else ''):<26} {errors:>6} {m[key]['p50']:>7.3f} {rng(runs, 'p50', '.3f'):>13} "
            f"{m[key]['p99']:>7.3f} {rng(runs, 'p99', '.3f'):>13}"
        )
    copies = lat["remote"][-1]
    print(
        f"p50 ratios: local hit with / without --remote {m['local-remote']['p50'] / m['local']['p50']:.2f}x; "
        f"remote hit / local hit {m['remote']['p50'] / m['local-remote']['p50']:.2f}x; "
        f"miss / local hit {m['miss']['p50'] / m['local-remote']['p50']:.2f}x. Remote hits copied into the local "
        f"store (last round): {copies['copied']}/{copies['asked']}"
    )
    print(f"\n   Local-hit throughput: wrk -t1 -c{a.connections} (bench/wrk_post.lua), {a.duration}s per run")
    head = (
        f"{'row':<26} {'errors':>6} {'req/s':>7} {'range req/s':>11} {'p50 ms':>7} {'p99 ms':>7} {'srv cpu':>7} "
        f"{'cpu us/req':>10}"
    )
    print(head + "\n" + "-" * len(head))
    rps = {}
    for key in ("local", "local-remote"):
        runs = [r["wrk"] for r in lat[key] if "wrk" in r]
        errors = sum(r["errors"] for r in runs)
        flagged += errors
        x = {k: med(runs, k) for k in ("rps", "p50", "p99", "srv_cpu", "cpu_us")}
        rps[key] = x["rps"]
        print(
            f"{LATENCY_ROWS[key] + (' (!)' if errors else ''):<26} {errors:>6} {x['rps']:>7.0f} {rng(runs, 'rps', '.0f'):>11} "
            f"{x['p50']:>7.2f} {x['p99']:>7.2f} {pct(x['srv_cpu']):>7} {x['cpu_us']:>10.0f}"
        )
    print(f"local-hit req/s with / without --remote: {rps['local-remote'] / rps['local']:.2f}x")

    print(
        f"\n2. Recording: `--mode auto` in front of bench/fast_upstream.py, wrk -t1 -c{a.record_connections} "
        f"(bench/wrk_distinct.lua, a new prompt per request), {a.warmup}s warm-up + {a.duration}s per run, a fresh "
        f"store per run; Redis/local: entries Redis gained / entries in the local store (last run)"
    )
    head = (
        f"{'row':<26} {'errors':>6} {'req/s':>7} {'range req/s':>11} {'p50 ms':>7} {'p99 ms':>7} {'srv cpu':>7} "
        f"{'cpu us/req':>10} {'Redis/local':>11}"
    )
    print(head + "\n" + "-" * len(head))
    for mode in ("without", "with"):
        runs = recs[mode]
        errors = sum(r["errors"] for r in runs)
        flagged += errors
        x = {k: med(runs, k) for k in ("rps", "p50", "p99", "srv_cpu", "cpu_us")}
        rps[mode] = x["rps"]
        print(
            f"{f'auto, {mode} --remote' + (' (!)' if errors else ''):<26} {errors:>6} {x['rps']:>7.0f} "
            f"{rng(runs, 'rps', '.0f'):>11} {x['p50']:>7.2f} {x['p99']:>7.2f} {pct(x['srv_cpu']):>7} "
            f"{x['cpu_us']:>10.0f} {runs[-1]['check']:>11}"
        )
    print(f"recording req/s with / without --remote: {rps['with'] / rps['without']:.2f}x")

    errors = sum(r["errors"] for r in fleet)
    flagged += errors
    per = [statistics.median(r["per_proxy"][i] for r in fleet) for i in range(3)]
    print(
        f"\n3. Three `--mode auto --remote` proxies on one Redis (unpinned), 3 x wrk -t1 -c{a.fleet_connections} in "
        f"parallel for {a.duration}s, then the upstream stopped and every prompt replayed through the two other proxies"
    )
    print(
        f"   errors {errors}{' (!)' if errors else ''}; recorded {med(fleet, 'recorded'):.0f} prompts per round "
        f"({rng(fleet, 'recorded', '.0f')}), Redis gained as many ({rng(fleet, 'redis', '.0f')}); combined "
        f"{med(fleet, 'rps'):.0f} req/s ({rng(fleet, 'rps', '.0f')}; per proxy {' + '.join(f'{x:.0f}' for x in per)})"
    )
    print(
        f"   replay everywhere: {sum(r['hits'] for r in fleet)}/{sum(r['sent'] for r in fleet)} hits over all rounds "
        f"({100 * sum(r['hits'] for r in fleet) / max(1, sum(r['sent'] for r in fleet)):.2f}%); "
        f"{med(fleet, 'replay_s'):.1f}s per round ({rng(fleet, 'replay_s', '.1f')}), "
        f"{med(fleet, 'replay_rps'):.0f} req/s over 3 sequential clients"
    )
    if flagged:
        print(f"\n!! {flagged} errors: see the rows marked (!); the first of each:")
        for r in [
            *(x for v in lat.values() for x in v),
            *(x["wrk"] for v in lat.values() for x in v if "wrk" in x),
            *(x for v in recs.values() for x in v),
            *fleet,
        ]:
            if r["errors"]:
                print(f"   {r['errors']} x {r['first_bad']}")
        return 1
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--requests", type=int, default=500, help="sequential requests per latency row and round (default 500)")
    p.add_argument("--duration", type=int, default=4, help="seconds per timed wrk run (default 4)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of wrk warm-up before each recording run (default 1)")
    p.add_argument("--connections", type=int, default=8, help="wrk connections for local-hit throughput (default 8)")
    p.add_argument("--record-connections", type=int, default=16, help="wrk connections when recording (default 16)")
    p.add_argument("--fleet-connections", type=int, default=8, help="wrk connections per proxy of the three (default 8)")
    p.add_argument("--no-pin", action="store_true", help="do not pin the proxy and its clients to cores")
    a = p.parse_args()
    a.status = 0
    return a


def main() -> None:
    a = parse_args()
    for tool, how in (("wrk", "apt-get install wrk"), (REDIS_SERVER, "apt-get install redis-server")):
        if not shutil.which(tool):
            print(f"bench_remote.py needs {tool}, which is not there. Install it with: {how} (Debian/Ubuntu)", file=sys.stderr)
            sys.exit(2)
    run_bench(bench, a, prefix="seedtape-bench-remote-")
    sys.exit(a.status)


if __name__ == "__main__":
    main()
