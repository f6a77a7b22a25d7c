"""The remote tier on Redis (issue 16): hits local and remote, misses, recording with and without it, three proxies.

In one run, against a real `redis-server` on a free loopback port (no persistence) and the bench-only
upstream (bench/fast_upstream.py), with `seedtape serve` processes (python -m seedtape, this checkout):

1. Latency of one request, sequential on one keep-alive connection (http.client), p50/p99 per round:
   - a local hit: `--mode replay --remote` on a store that holds the recording;
   - a remote hit: `--mode replay --remote` on an empty store, every request a recording it has not
     seen (the first look-up goes to Redis; the proxy then copies it into its store);
   - a miss: neither has it (the 404 with its explanation, which says the remote had none);
   - a local hit without `--remote`, the baseline: a local hit must not pay for the remote.
2. Recording throughput: `--mode auto`, wrk -t1 -c16 for --duration seconds, every request a new
   prompt (bench/wrk_distinct.lua), with and without `--remote` (a fresh store each run); afterwards
   Redis must hold every recording (counted with SCAN).
3. Three proxies sharing one Redis: three `--mode auto` proxies on stores of their own record at once
   (three wrk -c8 runs in parallel, distinct prompts); then the upstream stops and every recording of
   every proxy is sent through each of the others: all must be hits (what is not, is an error).

Rounds are interleaved (--repeats); figures are medians with min..max. The proxy is pinned to core 0
and wrk and the upstream to core 1 for rows 1 and 2 when taskset and two cores exist (Redis runs
unpinned); row 3 is unpinned. A run with any error makes the script exit 1.

    .venv/bin/python bench/bench_remote.py [--repeats 3] [--duration 5] [--requests 300]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
from bench_responses import Pinning, Server
from redis_support import RedisServer

from seedtape.proxy.tapes.store import Store

LUA = ROOT / "bench" / "wrk_distinct.lua"
API_KEY = "sk-bench-remote"
PATH = "/v1/chat/completions"


def body(text: str) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}).encode()


def seedtape(pin: list[str], *args: str) -> list[str]:
    return [*pin, sys.executable, "-m", "seedtape", "serve", "--port", "0", "--quiet", *args]


class Client:
    def __init__(self, origin: str):
        host, port = origin.removeprefix("http://").rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def post(self, data: bytes) -> tuple[float, int, str]:
        t0 = time.perf_counter()
        self.conn.request("POST", PATH, data, {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"})
        r = self.conn.getresponse()
        r.read()
        return (time.perf_counter() - t0) * 1000, r.status, r.getheader("seedtape-status", "")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def timed(origin: str, bodies: list[bytes], want: tuple[int, str], errors: list[str], label: str) -> tuple[float, float]:
    c = Client(origin)
    times = []
    for b in bodies:
        ms, status, st = c.post(b)
        if (status, st) != want:
            errors.append(f"{label}: {status} {st}")
        times.append(ms)
    return statistics.median(times), pct(times, 0.99)


def wrk(pin: Pinning, origin: str, tag: str, seconds: int, connections: int) -> dict:
    cmd = [
        *pin.client,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        origin + PATH,
        "--",
        tag,
        "recorded",
        API_KEY,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK_RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed: {out.stdout[-1500:]} {out.stderr[-1500:]}")
    r = json.loads(line.removeprefix("WRK_RESULT "))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def remote_entries(url: str) -> int:
    import redis

    r = redis.Redis.from_url(url)
    try:
        return sum(1 for _ in r.scan_iter(match="seedtape:e:*", count=1000))
    finally:
        r.close()


def fmt(xs: list[float], unit: str = "") -> str:
    return f"{statistics.median(xs):8.2f}{unit} ({min(xs):.2f}..{max(xs):.2f})"


def bench(a: argparse.Namespace, tmp: Path, servers: list[Server]) -> int:
    pin = Pinning(not a.no_pin)
    errors: list[str] = []
    redis_srv = RedisServer(tmp / "redis").start()
    try:
        up = Server("upstream", [*pin.client, sys.executable, str(ROOT / "bench" / "fast_upstream.py")], tmp)
        servers.append(up)
        url = redis_srv.url
        print(f"redis-server on {url}; upstream {up.origin}; pinning: {pin.note}")
        print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

        # -- 1. latency: record the prompts every round needs, through a proxy writing to the remote
        rounds = a.repeats
        prompts = [body(f"remote bench prompt {i}") for i in range(a.requests * (rounds + 1))]
        seed_store = tmp / "seeded"
        rec = Server(
            "recorder", seedtape([], "--mode", "auto", "--store", str(seed_store), "--upstream", up.origin, "--remote", url), tmp
        )
        c = Client(rec.origin)
        for b in prompts:
            _, status, st = c.post(b)
            if status != 200 or st != "recorded":
                errors.append(f"recording the prompts: {status} {st}")
        rec.stop()
        print(f"recorded {len(prompts)} prompts; Redis holds {remote_entries(url)} entries")
        local_hits = prompts[: a.requests]
        lat: dict[str, dict[str, list[float]]] = {
            k: {"p50": [], "p99": []} for k in ("local", "local-no-remote", "remote", "miss")
        }
        for r in range(rounds):
            fresh = prompts[a.requests * (r + 1) : a.requests * (r + 2)]  # never seen by the remote-hit proxy's store
            rows = [
                ("local", ["--remote", url], seed_store, local_hits, (200, "hit")),
                ("local-no-remote", [], seed_store, local_hits, (200, "hit")),
                ("remote", ["--remote", url], tmp / f"empty-{r}", fresh, (200, "hit")),
                (
                    "miss",
                    ["--remote", url],
                    tmp / f"empty-{r}",
                    [body(f"never recorded {r} {i}") for i in range(a.requests // 3)],
                    (404, "miss"),
                ),
            ]
            if r % 2:
                rows.reverse()
            for name, extra, store, bodies, want in rows:
                p = Server(
                    f"replay-{name}-{r}",
                    seedtape(pin.server, "--mode", "replay", "--store", str(store), "--upstream", "http://127.0.0.1:9", *extra),
                    tmp,
                )
                if name in ("local", "local-no-remote"):
                    timed(p.origin, bodies[:50], want, errors, name)  # warm-up
                p50, p99 = timed(p.origin, bodies, want, errors, name)
                p.stop()
                lat[name]["p50"].append(p50)
                lat[name]["p99"].append(p99)

        # -- 2. recording throughput with and without the remote
        rec_rps: dict[str, list[float]] = {"with": [], "without": []}
        for r in range(rounds):
            for mode in ("with", "without") if r % 2 == 0 else ("without", "with"):
                store = tmp / f"rec-{mode}-{r}"
                extra = ["--remote", url] if mode == "with" else []
                before = remote_entries(url)
                p = Server(
                    f"record-{mode}-{r}",
                    seedtape(pin.server, "--mode", "auto", "--store", str(store), "--upstream", up.origin, *extra),
                    tmp,
                )
                res = wrk(pin, p.origin, f"rec{mode}{r}{time.time_ns()}", a.duration, 16)
                p.stop()
                bad = res["requests"] - res.get("ok", res["requests"])
                if res.get("non200") or bad > 0:
                    errors.append(f"recording {mode}: {res.get('non200')} non-200, first: {res.get('first_bad')}")
                with Store(store, readonly=True) as st:
                    stored = st.stats_counts()["entries"]
                if mode == "with" and remote_entries(url) - before < stored:
                    errors.append(f"recording with the remote: {stored} stored locally, {remote_entries(url) - before} in Redis")
                rec_rps[mode].append(res["rps"])

        # -- 3. three proxies on one Redis
        fleet = [
            Server(
                f"fleet-{i}",
                seedtape([], "--mode", "auto", "--store", str(tmp / f"fleet-{i}"), "--upstream", up.origin, "--remote", url),
                tmp,
            )
            for i in range(3)
        ]
        import concurrent.futures

        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            runs = list(
                pool.map(lambda i: wrk(Pinning(False), fleet[i].origin, f"fleet{i}-{time.time_ns()}", a.duration, 8), range(3))
            )
        fleet_rps = sum(x["rps"] for x in runs)
        up.stop()  # from here on nothing can go live
        recorded: list[list[bytes]] = []
        for i in range(3):
            with Store(tmp / f"fleet-{i}", readonly=True) as st:
                recorded.append([json.dumps(e.request["body"]).encode() for e in st.entries()])
        hits = total = 0
        t1 = time.monotonic()
        for i, p in enumerate(fleet):
            c = Client(p.origin)
            for k in range(3):
                if k == i:
                    continue
                for b in recorded[k]:
                    _, status, st = c.post(b)
                    total += 1
                    if (status, st) == (200, "hit"):
                        hits += 1
                    else:
                        errors.append(f"fleet: proxy {i} on a recording of proxy {k}: {status} {st}")
        replay_s = time.monotonic() - t1
        for p in fleet:
            p.stop()
        del t0

        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
        print(f"1. latency, {a.requests} sequential requests per round, medians of {rounds} rounds (min..max), ms")
        for name, label in (
            ("local-no-remote", "local hit, no --remote"),
            ("local", "local hit, --remote"),
            ("remote", "remote hit (local miss)"),
            ("miss", "miss (neither has it)"),
        ):
            print(f"   {label:<26} p50 {fmt(lat[name]['p50'])}   p99 {fmt(lat[name]['p99'])}")
        base = statistics.median(lat["local-no-remote"]["p50"])
        print(
            f"   local hit with / without --remote: {statistics.median(lat['local']['p50']) / base:.2f}x; "
            f"remote hit / local hit: {statistics.median(lat['remote']['p50']) / base:.2f}x"
        )
        w, wo = statistics.median(rec_rps["with"]), statistics.median(rec_rps["without"])
        print(
            f"2. recording, wrk -c16, distinct prompts: without --remote {fmt(rec_rps['without'], ' req/s')}, "
            f"with {fmt(rec_rps['with'], ' req/s')}: {w / wo:.2f}x"
        )
        print(
            f"3. three proxies, one Redis: recorded {sum(len(r) for r in recorded)} prompts at {fleet_rps:.0f} req/s "
            f"together (3 x wrk -c8, {a.duration}s); replayed through every other proxy: {hits}/{total} hits "
            f"in {replay_s:.1f}s"
        )
    finally:
        redis_srv.stop()
    if errors:
        print(f"\nERRORS ({len(errors)}): " + "; ".join(errors[:5]))
        return 1
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--requests", type=int, default=300, help="sequential requests per latency row and round")
    ap.add_argument("--no-pin", action="store_true")
    a = ap.parse_args()
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="seedtape-bench-remote-") as d:
        try:
            code = bench(a, Path(d), servers)
        finally:
            for s in servers:
                s.stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
