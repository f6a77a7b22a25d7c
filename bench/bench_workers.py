"""Replay throughput of `seedtape serve --workers 2` against one worker, measured with wrk (issue 15, point 3).

What it measures, in one run, for non-streamed `POST /v1/chat/completions` replay hits: req/s and
wrk's latency p50/p99 under `wrk -t1 -c16` (16 keep-alive connections, --connections), and the CPU
the whole server (supervisor and workers) used per request, for

1. `seedtape serve --mode replay --quiet` (one process: the baseline), and
2. the same with `--workers 2` (a supervisor and two workers on one port, SO_REUSEPORT),

both on one store that `seedtape serve --mode auto` recorded from tests/fake_upstream.py just
before (the upstream is stopped: every answer is offline). Before timing, every body is sent once to
each row on a connection of its own and must come back a hit. bench/wrk_post.lua counts every
answer that is not a 200 with `seedtape-status: hit` as an error; a run with any error is flagged
and makes the script exit 1.

Issue 15's goal: replay at c=16 with 2 workers at least 1.6x one worker, on this 2-core machine.
Nothing is pinned: wrk and the servers share the machine's cores (on 2 cores wrk's own CPU is taken
from what the two workers could use, so the ceiling is below 2x; the CPU use of wrk is printed).
SO_REUSEPORT spreads connections by a hash of their addresses, so 16 connections are not always
split 8/8; each run prints the split it got (connections per worker, from /proc).

Rounds are interleaved (--repeats; the order alternates), each figure is the median over the rounds.

    .venv/bin/python bench/bench_workers.py [--repeats 3] [--connections 16] [--duration 5]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_baselines import record_through
from bench_hit import checkout_note
from bench_replay import ROOT, chat_bodies, proc_cpu_seconds, run_bench, sdk_json, seedtape_cmd
from bench_responses import Pinning, Server, http_post, med, version, wrk_run, wrk_version

PATH = "/v1/chat/completions"
OFFLINE = "http://127.0.0.1:9"  # discard port: anything forwarded is refused
GOAL = 1.6


def tree(pid: int) -> list[int]:
    """A process and its children (the supervisor and its workers)."""
    pids = [pid]
    try:
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            pids.extend(tree(int(child)))
    except OSError:
        pass
    return pids


def cpu_of(pid: int) -> float:
    return sum(proc_cpu_seconds(p) or 0.0 for p in tree(pid))


def connections_per_worker(server: Server, port: int) -> str:
    """Established connections on the listening port, per process of the server (a worker's share)."""
    counts = []
    for p in tree(server.proc.pid)[1:] or [server.proc.pid]:
        inodes = set()
        try:
            for fd in Path(f"/proc/{p}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
        n = 0
        for table in ("tcp", "tcp6"):
            try:
                lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                f = line.split()
                if f[3] == "01" and int(f[1].rsplit(":", 1)[1], 16) == port and f[9] in inodes:
                    n += 1
        counts.append(n)
    return "/".join(map(str, counts))


def timed(a: argparse.Namespace, pin: Pinning, server: Server, bodies_file: Path) -> dict:
    """wrk_run, with the CPU of the whole process tree and the wrk run's connection split."""
    port = int(server.origin.rsplit(":", 1)[1])
    split: list[str] = []
    probe = threading.Timer(a.duration / 2, lambda: split.append(connections_per_worker(server, port)))
    cpu0 = cpu_of(server.proc.pid)
    wrk0 = os.times()
    probe.start()
    r = wrk_run(a, pin, server, "chat", bodies_file, a.duration)
    probe.join()
    wrk1 = os.times()
    cpu1 = cpu_of(server.proc.pid)
    elapsed = r["duration_us"] / 1e6
    r["srv_cpu"] = (cpu1 - cpu0) / elapsed if elapsed else None
    r["cpu_us"] = (cpu1 - cpu0) / r["requests"] * 1e6 if r["requests"] else None
    wrk_cpu = (wrk1.children_user + wrk1.children_system) - (wrk0.children_user + wrk0.children_system)
    r["wrk_cpu"] = wrk_cpu / elapsed if elapsed else None
    r["split"] = split[0] if split else "?"
    return r


def bench(a: argparse.Namespace, tmp: Path, servers: list[Server]) -> None:
    def start(name: str, cmd: list[str]) -> Server:
        servers.append(Server(name, cmd, tmp))
        return servers[-1]

    pin = Pinning(False)  # nothing pinned: the workers need both cores
    bodies = chat_bodies(a.prompts)
    raw = [sdk_json(b) for b in bodies]
    bodies_file = tmp / "chat-bodies.jsonl"
    bodies_file.write_bytes(b"".join(line + b"\n" for line in raw))

    store = tmp / "store"
    upstream = start("fake upstream", [sys.executable, str(ROOT / "tests" / "fake_upstream.py"), "--port", "0"])
    rec = start("seedtape record", seedtape_cmd("--mode", "auto", "--store", str(store), "--upstream", upstream.origin,
                                                "--quiet"))
    record_through(rec, bodies, "recorded")
    for s in (rec, upstream):
        s.stop()
        servers.remove(s)

    replay = ("--mode", "replay", "--store", str(store), "--upstream", OFFLINE, "--quiet")
    rows = {n: start(f"seedtape replay workers {n}", seedtape_cmd(*replay, "--workers", str(n))) for n in (1, 2)}
    for n, server in rows.items():
        for body in raw:
            r = http_post(server.origin, PATH, body)
            if r.status_code != 200 or r.headers.get("seedtape-status") != "hit":
                raise RuntimeError(f"--workers {n} did not answer a recorded request as a hit: HTTP {r.status_code} "
                                   f"{r.headers.get('seedtape-status')!r} {r.text[:300]}\n{server.tail()}")

    print(f"seedtape workers bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, mitmproxy "
          f"{version('mitmproxy')}, wrk {wrk_version()}\nseedtape: this checkout, {checkout_note()}\n"
          f"{a.prompts} recorded prompts, request {len(raw[0])} B; wrk -t{a.threads} -c{a.connections}, "
          f"{a.warmup}s warm-up + {a.duration}s timed per run\nnot pinned: wrk and the servers share the "
          f"{os.cpu_count()} cores (wrk's CPU comes out of what the workers could use)\n"
          f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    load: dict[int, list[dict]] = {1: [], 2: []}
    for i in range(a.repeats):
        for n in ((1, 2) if i % 2 == 0 else (2, 1)):
            server = rows[n]
            warm = wrk_run(a, pin, server, "chat", bodies_file, a.warmup) if a.warmup else None
            r = timed(a, pin, server, bodies_file)
            if warm and warm["errors"]:
                r["errors"] += warm["errors"]
                r["first_bad"] = r["first_bad"] or f"(warm-up) {warm['first_bad']}"
            load[n].append(r)
            flag = f"  !! {r['errors']} not hits, first: {r['first_bad']}" if r["errors"] else ""
            print(f"  run {i + 1}/{a.repeats} --workers {n}: {r['rps']:7.0f} req/s  p50 {r['p50']:6.2f} ms  "
                  f"p99 {r['p99']:6.2f} ms  server cpu {r['srv_cpu'] * 100:4.0f}%  wrk cpu {r['wrk_cpu'] * 100:3.0f}%  "
                  f"connections per worker {r['split']}{flag}", flush=True)
    for n, server in rows.items():
        if server.proc.poll() is not None:
            raise RuntimeError(f"--workers {n} exited with {server.proc.returncode} during the runs:\n{server.tail()}")

    print(f"\nMedians of {a.repeats} interleaved rounds; load average at end: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    head = f"{'row':<12} {'errors':>6} {'req/s':>7} {'range req/s':>11} {'p50 ms':>7} {'p99 ms':>7} " \
           f"{'srv cpu':>7} {'cpu us/req':>10} {'wrk cpu':>7}"
    print(head + "\n" + "-" * len(head))
    m = {}
    for n, runs in load.items():
        m[n] = {k: med(runs, k) for k in ("rps", "p50", "p99", "srv_cpu", "cpu_us", "wrk_cpu")}
        errors = sum(r["errors"] for r in runs)
        a.status = a.status or (1 if errors else 0)
        rng = f"{min(r['rps'] for r in runs):.0f}..{max(r['rps'] for r in runs):.0f}"
        x = m[n]
        print(f"{f'--workers {n}':<12} {errors:>6} {x['rps']:>7.0f} {rng:>11} {x['p50']:>7.2f} {x['p99']:>7.2f} "
              f"{x['srv_cpu'] * 100:>6.0f}% {x['cpu_us']:>10.0f} {x['wrk_cpu'] * 100:>6.0f}%")
    ratio = m[2]["rps"] / m[1]["rps"]
    print(f"{'2 / 1':<12} {'':>6} {ratio:>6.2f}x {'':>11} {m[2]['p50'] / m[1]['p50']:>6.2f}x "
          f"{m[2]['p99'] / m[1]['p99']:>6.2f}x {'':>7} {m[2]['cpu_us'] / m[1]['cpu_us']:>9.2f}x")
    print(f"\nGoal (issue 15): replay c={a.connections} with 2 workers >= {GOAL}x one worker: {ratio:.2f}x "
          f"({'met' if ratio >= GOAL else 'not met'})")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5, help="timed seconds per wrk run (default 5)")
    p.add_argument("--warmup", type=float, default=1, help="untimed wrk seconds before each run (default 1)")
    p.add_argument("--connections", type=int, default=16, help="wrk keep-alive connections (default 16)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported (default 3)")
    p.add_argument("--prompts", type=int, default=32, help="distinct recorded requests (default 32)")
    a = p.parse_args()
    a.duration, a.warmup = math.ceil(a.duration), math.ceil(a.warmup)
    if a.duration < 1 or a.warmup < 0 or a.connections < 1 or a.threads < 1 or a.repeats < 1 or a.prompts < 2:
        p.error("--duration, --connections, --threads, --repeats must be at least 1, --prompts at least 2")
    a.status = 0
    return a


def main() -> None:
    a = parse_args()
    if not shutil.which("wrk"):
        print("bench_workers.py needs wrk: apt-get install wrk (Debian/Ubuntu)", file=sys.stderr)
        sys.exit(2)
    run_bench(bench, a, prefix="seedtape-bench-workers-")
    sys.exit(a.status)


if __name__ == "__main__":
    main()
