"""Sustained load: 50 concurrent clients for a minute against one `seedtape serve`, and whether it leaks.

What it measures, per target:

- ``replay``: `seedtape serve --mode replay` answering hits from a store recorded just before;
- ``auto``: `seedtape serve --mode auto` in front of a live fake upstream (tests/fake_upstream.py),
  with a request mix that starts as misses and turns into hits: requests cycle through a pool of
  prompts (the first pass records them, later passes replay them), and a fraction of all
  requests (--new-fraction) are prompts never seen before, so recording goes on all the time;

throughput, p50/p99 latency, errors, seedtape-status counts, and the proxy's resident memory
(VmRSS, split into RssAnon and RssFile; /proc/PID/status) and open file descriptors
(/proc/PID/fd) sampled every --sample seconds: before the load, at the start and end of the timed
window, and after the clients left. Growth is printed explicitly. RssFile includes the pages of the
memory-mapped store the proxy touched, which grows with the store in auto mode; RssAnon is the
heap, where a leak would show.

The load generator is a process of its own (a minimal asyncio HTTP/1.1 keep-alive client, as in
bench_replay.py); servers run in their own processes; all traffic stays on 127.0.0.1.

    .venv/bin/python bench/bench_load.py [--duration 60] [--concurrency 50] [--targets replay,auto]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_replay
from bench_replay import (
    API_KEY,
    EXCHANGE_ERRORS,
    MODEL,
    ROOT,
    KeepAlive,
    Server,
    percentiles,
    proc_cpu_seconds,
    run_bench,
)

STATUS = re.compile(rb"\r\nseedtape-status:[ \t]*([^\r;]*)", re.I)


def seedtape_cmd(*args: str) -> list[str]:
    return bench_replay.seedtape_cmd("--quiet", *args)


def prompt_body(text: str) -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}]}).encode()


def pool_prompt(i: int) -> str:
    return f"Load test pool prompt {i}: say something."


def proc_usage(pid: int) -> dict:
    """VmRSS, RssAnon, RssFile in MiB and the number of open file descriptors of a process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            out[name] = int(value.split()[0]) / 1024
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


# -- roles run in processes of their own (python bench_load.py --role ...) -----------------------


async def load_worker(a: argparse.Namespace) -> dict:
    """Keep --concurrency keep-alive connections busy; sample the server while the timed window runs."""
    url = urlsplit(a.url)
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer %s\r\n" % (url.netloc.encode(), API_KEY.encode()))
    pool = [prompt_body(pool_prompt(i)) for i in range(a.pool)]
    every_new = round(1 / a.new_fraction) if a.new_fraction > 0 else 0
    latencies: list[float] = []
    statuses: Counter = Counter()
    state = {"measuring": False, "stop": False, "errors": 0, "error": "", "n": 0}

    def next_body() -> bytes:
        n = state["n"]
        state["n"] += 1
        if every_new and n % every_new == every_new - 1:
            return prompt_body(f"Load test fresh prompt {a.tag} {n}: never asked before.")
        return pool[n % len(pool)]

    async def worker() -> None:
        conn = KeepAlive(url.hostname, url.port)
        while not state["stop"]:
            body = next_body()
            request = head + b"content-length: %d\r\n\r\n%s" % (len(body), body)
            t0 = time.perf_counter()
            status = b""
            try:
                resp, data = await conn.exchange(request, 30)
                m = STATUS.search(resp)
                status = m.group(1).strip() if m else b"-"
                ok = resp.startswith(b"HTTP/1.1 200 ") and status in a.expect
                why = (resp.split(b"\r\n", 1)[0] + b" " + status + b" " + data[:200]).decode(errors="replace")
            except EXCHANGE_ERRORS as e:
                ok, why = False, f"{type(e).__name__}: {e}"
            if state["measuring"]:
                statuses[status.decode() or "-"] += 1
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    state["errors"] += 1
                    state["error"] = state["error"] or why
        conn.close()

    samples: list[dict] = []

    async def sampler(t0: float) -> None:
        while True:
            samples.append({"t": time.perf_counter() - t0, **proc_usage(a.server_pid)})
            await asyncio.sleep(a.sample)

    tasks = [asyncio.create_task(worker()) for _ in range(a.concurrency)]
    await asyncio.sleep(a.warmup)
    cpu0, srv0, t0 = time.process_time(), proc_cpu_seconds(a.server_pid), time.perf_counter()
    state["measuring"] = True
    sampling = asyncio.create_task(sampler(t0))
    await asyncio.sleep(a.duration)
    state["measuring"] = False
    elapsed = time.perf_counter() - t0
    sampling.cancel()
    samples.append({"t": elapsed, **proc_usage(a.server_pid)})  # the end of the window, clients still connected
    cpu1, srv1 = time.process_time(), proc_cpu_seconds(a.server_pid)
    state["stop"] = True
    await asyncio.gather(*tasks)

    p50, p99 = percentiles(latencies)
    return {"requests": len(latencies), "errors": state["errors"], "first_error": state["error"],
            "rps": len(latencies) / elapsed, "p50": p50, "p99": p99, "statuses": dict(statuses),
            "cli_cpu": (cpu1 - cpu0) / elapsed,
            "srv_cpu": (srv1 - srv0) / elapsed if srv0 is not None and srv1 is not None else None,
            "samples": samples}


def upstream_role(a: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_upstream import FakeUpstream

    up = FakeUpstream("127.0.0.1", 0)
    up.latency = a.upstream_latency
    print(f"FAKE_UPSTREAM={up.url}", flush=True)
    up.server.serve_forever()


# -- servers -------------------------------------------------------------------------------------


def upstream_calls(upstream: Server) -> int:
    import httpx

    return len(httpx.get(upstream.origin + "/_fake/log", timeout=60).json())


def record_pool(upstream: Server, store: Path, n: int, logdir: Path) -> None:
    """Record the pool of prompts through `seedtape serve --mode auto`, outside any timing."""
    import httpx

    rec = Server("seedtape record", seedtape_cmd("--mode", "auto", "--store", str(store), "--upstream", upstream.origin),
                 logdir)
    try:
        with httpx.Client(base_url=rec.origin, timeout=30) as c:
            for i in range(n):
                r = c.post("/v1/chat/completions", content=prompt_body(pool_prompt(i)),
                           headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"})
                if r.status_code != 200 or r.headers.get("seedtape-status") != "recorded":
                    raise RuntimeError(f"recording failed: {r.status_code} {r.headers.get('seedtape-status')} {r.text}")
    finally:
        rec.stop()


def run_load(server: Server, a: argparse.Namespace, expect: str, pool: int, new_fraction: float, tag: str) -> dict:
    cmd = [sys.executable, __file__, "--role", "load", "--url", server.origin, "--server-pid", str(server.proc.pid),
           "--concurrency", str(a.concurrency), "--warmup", str(a.warmup), "--duration", str(a.duration),
           "--sample", str(a.sample), "--pool", str(pool), "--new-fraction", str(new_fraction), "--tag", tag,
           "--expect", expect]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.warmup + a.duration + 120, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"load worker against {server.name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def settle(pid: int, seconds: float = 2.0) -> dict:
    """The server's usage once the clients are gone and it had a moment to close their connections."""
    time.sleep(seconds)
    return proc_usage(pid)


# -- report ----------------------------------------------------------------------------------------


def fmt_usage(label: str, u: dict) -> str:
    return f"  {label:<30} {u['VmRSS']:>9.1f} {u['RssAnon']:>11.1f} {u['RssFile']:>11.1f} {u['fds']:>5}"


def growth(a: dict, b: dict) -> str:
    return (f"VmRSS {b['VmRSS'] - a['VmRSS']:+.1f} MiB (RssAnon {b['RssAnon'] - a['RssAnon']:+.1f}, "
            f"RssFile {b['RssFile'] - a['RssFile']:+.1f}), fds {b['fds'] - a['fds']:+d}")


def report(name: str, res: dict, before: dict, after: dict, calls: int, a: argparse.Namespace) -> None:
    s = res["samples"]
    start, mid, end = s[0], s[len(s) // 2], s[-1]
    total = sum(res["statuses"].values()) or 1
    mix = ", ".join(f"{k} {v} ({v / total:.0%})" for k, v in sorted(res["statuses"].items(), key=lambda kv: -kv[1]))
    print(f"\n== {name}: {a.concurrency} keep-alive clients, {a.warmup:g}s warm-up + {a.duration:g}s timed")
    print(f"  requests {res['requests']}  errors {res['errors']}  {res['rps']:.0f} req/s  "
          f"p50 {res['p50']:.2f} ms  p99 {res['p99']:.2f} ms  server cpu {fmt_pct(res['srv_cpu'])}  "
          f"client cpu {fmt_pct(res['cli_cpu'])}")
    print(f"  seedtape-status: {mix}; upstream calls during the run (incl. warm-up): {calls}")
    if res["errors"]:
        print(f"  first error: {res['first_error']}")
    print(f"  {'proxy process':<30} {'VmRSS MiB':>9} {'RssAnon MiB':>11} {'RssFile MiB':>11} {'fds':>5}")
    print(fmt_usage("idle, before the load", before))
    print(fmt_usage(f"timed start (t={start['t']:.0f}s)", start))
    print(fmt_usage(f"timed middle (t={mid['t']:.0f}s)", mid))
    print(fmt_usage(f"timed end (t={end['t']:.0f}s)", end))
    print(fmt_usage("idle, after the clients left", after))
    series = " ".join(f"{x['RssAnon']:.1f}" for x in s)
    print(f"  RssAnon every {a.sample:g}s (MiB): {series}")
    print(f"  growth, timed start -> end:   {growth(start, end)}")
    print(f"  growth, timed middle -> end:  {growth(mid, end)}")
    print(f"  growth, idle before -> after: {growth(before, after)}")
    fd_verdict = "no growth" if after["fds"] <= before["fds"] else f"GREW by {after['fds'] - before['fds']}"
    print(f"  verdict: fds {before['fds']} -> {after['fds']} once the clients left ({fd_verdict}); ", end="")
    second_half = end["RssAnon"] - mid["RssAnon"]
    if second_half < 1.0:
        print(f"RssAnon flat in the second half of the window ({second_half:+.1f} MiB)")
    else:
        recorded = res["statuses"].get("recorded", 0)
        per = f", {(end['RssAnon'] - start['RssAnon']) * 2**20 / recorded:.0f} bytes per recording in the window" \
            if recorded else ""
        print(f"RssAnon still GROWING in the second half: {second_half:+.1f} MiB{per}")


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


# -- main --------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=60.0, help="timed seconds per target (default 60)")
    p.add_argument("--warmup", type=float, default=3.0, help="untimed seconds of load before (default 3)")
    p.add_argument("--concurrency", type=int, default=50, help="keep-alive client connections (default 50)")
    p.add_argument("--sample", type=float, default=5.0, help="seconds between memory/fd samples (default 5)")
    p.add_argument("--targets", default="replay,auto", help="comma-separated: replay, auto (default both)")
    p.add_argument("--replay-pool", type=int, default=500, help="recorded prompts the replay run cycles through")
    p.add_argument("--auto-pool", type=int, default=2000,
                   help="prompts the auto run cycles through: misses on the first pass, hits after (default 2000)")
    p.add_argument("--new-fraction", type=float, default=0.1,
                   help="fraction of auto-run requests that are prompts never seen before (default 0.1)")
    p.add_argument("--upstream-latency", type=float, default=0.0, help="seconds the fake upstream waits per answer")
    # roles
    p.add_argument("--role", choices=["main", "load", "upstream"], default="main", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    p.add_argument("--pool", type=int, default=500, help=argparse.SUPPRESS)
    p.add_argument("--tag", default="", help=argparse.SUPPRESS)
    p.add_argument("--expect", default="hit", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    for t in a.targets:
        if t not in ("replay", "auto"):
            p.error(f"unknown target {t!r}: choose from replay, auto")
    if isinstance(a.expect, str):
        a.expect = {s.encode() for s in a.expect.split(",")}
    return a


def bench(a: argparse.Namespace, tmp: Path, servers: list[Server]) -> None:
    upstream = Server("fake upstream", [sys.executable, __file__, "--role", "upstream",
                                        "--upstream-latency", str(a.upstream_latency)], tmp)
    servers.append(upstream)
    print(f"seedtape load bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"targets: {', '.join(a.targets)}", flush=True)
    for target in a.targets:
        store = tmp / f"store-{target}"
        if target == "replay":
            record_pool(upstream, store, a.replay_pool, tmp)
            server = Server("seedtape replay", seedtape_cmd("--mode", "replay", "--store", str(store),
                                                            "--upstream", upstream.origin), tmp)
            expect, pool, new = "hit", a.replay_pool, 0.0
        else:
            server = Server("seedtape auto", seedtape_cmd("--mode", "auto", "--store", str(store),
                                                          "--upstream", upstream.origin), tmp)
            expect, pool, new = "hit,recorded", a.auto_pool, a.new_fraction
        servers.append(server)
        print(f"  running {target} ({a.warmup:g}s + {a.duration:g}s)...", flush=True)
        calls0 = upstream_calls(upstream)
        before = settle(server.proc.pid, 0.5)
        res = run_load(server, a, expect, pool, new, tag=target)
        after = settle(server.proc.pid)
        report(f"seedtape serve --mode {target}", res, before, after, upstream_calls(upstream) - calls0, a)
        server.stop()
        warnings = [line for line in server.log.read_text(errors="replace").splitlines() if "Traceback" in line or "rror" in line]
        if warnings:
            print(f"  server log has {len(warnings)} error lines; first: {warnings[0][:200]}")


def main() -> None:
    a = parse_args()
    if a.role == "load":
        return print(json.dumps(asyncio.run(load_worker(a))))
    if a.role == "upstream":
        return upstream_role(a)
    run_bench(bench, a, "seedtape-bench-load-")


if __name__ == "__main__":
    main()
