"""Recording speed of `seedtape serve --mode auto` (group commit) against mitmdump passing the same prompts through.

Issue 15, point 2: recording off the event loop, durability kept. A writer thread commits recordings in
groups (seedtape/proxy/tapes/writer.py); a client gets its answer only once its recording is on disk,
but many recordings share one fsync, and hits never wait for writes. Its goals, measured here:

1. Recording throughput. Recording N distinct prompts through `--mode auto` with 16 concurrent clients
   takes at most 0.7x the time `mitmdump` (passthrough, nothing recorded) takes for the same prompts,
   i.e. at least 1.43x its req/s. `wrk -t1 -c16` (--connections) for --duration seconds, after a
   --warmup, sends a prompt never sent before on every request (bench/wrk_distinct.lua: a chat
   completion whose prompt is a per-run tag, wrk's thread number and a counter), so every answer
   through seedtape is a recording. Rows:
     - `mitmdump -q --mode reverse:UPSTREAM --set connection_strategy=lazy`: passthrough, the baseline;
     - the lean mitmproxy Master (the one `seedtape serve` runs: core, proxyserver, next-layer,
       tlsconfig, errorcheck) forwarding with no addon of seedtape's (--no-lean skips it): the floor
       of any recorder built on it;
     - `seedtape serve --mode auto --quiet` from this checkout (group commit);
     - with --baseline-tree DIR (may be given more than once): the same from another checkout, e.g. the
       commit before group commit (8be45fa: one fsync per recording, on the event loop), run as
       `python -P -m seedtape` with PYTHONPATH=DIR exactly as bench/bench_hit.py does.
   "time for N" is --prompts / req/s. Every seedtape run records into a fresh store under --store-dir
   (default: a temporary directory), whose filesystem type and a measured 4 KiB write+fsync time are
   printed: the cost of a commit depends on them. After each seedtape run the store is opened read-only
   (seedtape.proxy.tapes.store.Store) and must hold at least as many entries as wrk saw 200 answers with
   `seedtape-status: recorded` (checked while the proxy still runs, right after wrk ends: a recorded
   answer means the entry was committed) and, after the proxy stopped, at most that many plus the
   requests wrk left in flight (2 x --connections: the end of the warm-up and of the timed run). LMDB
   counts its write transactions (`last_txnid`): its growth over the timed window is printed as
   "commits", and recordings per commit, which shows the group commit at work.
2. A hit during a recording storm. Its p99 during the storm is at most 2x its p99 alone. For each
   seedtape tree, a fresh proxy records one prompt; then `wrk -t1 -c2` (--hit-connections) sends that
   prompt (bench/wrk_post.lua: every answer must be a hit) for --duration seconds alone, and again while a
   recording wrk (-c16, distinct prompts, bench/wrk_distinct.lua) runs against the same proxy (it starts
   1 s before the hit wrk and ends after it). The order alone/storm alternates per round. Printed: hit
   p50/p99 alone and during the storm, their ratios, hit req/s, the storm's recording rate and the proxy's CPU
   use (near 100% in the storm: its one event loop is saturated, so a hit queues behind the storm's
   requests whatever the writes cost). --storm-connections sets a lighter storm.
3. The upstream is not the bottleneck: by default the bench-only bench/fast_upstream.py (one asyncio
   process) answers; --upstream fake uses tests/fake_upstream.py (threaded). The capacity of both is
   measured first with the same wrk load (-c16, distinct prompts, wrk and upstream on the client core)
   and printed next to the proxies' req/s.

Every server and load generator is its own process; all traffic stays on 127.0.0.1. When `taskset`
exists and two cores are available, the server under test is pinned to the first core, wrk and the
upstream to the second (bench_responses.Pinning). Rounds are interleaved (--repeats; the row order
rotates per round); each figure is the median over the rounds, each column on its own, with min..max.
The load average is printed at the start and the end, and with every run (1 min), so that rounds
disturbed by other work on the machine can be recognised; "srv wait" is the share of the timed window
the server was runnable but waited for its core. A run with any error (a non-200, an unexpected
seedtape-status, a socket error, a store check that fails) is flagged and makes the script exit 1;
it is never silently averaged in. wrk is not a Python package: `apt-get install wrk`; without it the
script exits 2.

    .venv/bin/python bench/bench_record.py [--repeats 3] [--duration 5] [--warmup 1] [--prompts 1000]
        [--connections 16] [--hit-connections 2] [--baseline-tree DIR] [--store-dir DIR]
        [--upstream fast|fake] [--no-lean] [--no-pin]

e.g. before/after group commit:
    git worktree add /tmp/bench-base 8be45fa
    .venv/bin/python bench/bench_record.py --repeats 3 --duration 5 --baseline-tree /tmp/bench-base
    git worktree remove --force /tmp/bench-base
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_baselines import ANNOUNCE_ADDON, mitmdump_cmd
from bench_hit import Baseline, baseline_cmd, check_baseline, checkout_note, run_queue_wait
from bench_replay import ROOT, proc_cpu_seconds, run_bench, seedtape_cmd
from bench_responses import (
    API_KEY,
    NOT_A_HIT,
    WRK_RESULT,
    Pinning,
    Server,
    http_post,
    med,
    pct,
    run_child,
    version,
    wrk_run,
    wrk_version,
)

PATH = "/v1/chat/completions"
DISTINCT_LUA = ROOT / "bench" / "wrk_distinct.lua"
GOAL_TIME, GOAL_HIT_P99 = 0.70, 2.0  # issue 15, point 2
HIT_BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"The one recorded prompt: say something."}]}'
UPSTREAMS = {"fast": ROOT / "bench" / "fast_upstream.py", "fake": ROOT / "tests" / "fake_upstream.py"}


@dataclass
class Row:
    key: str  # mitmdump, lean, seedtape, baseline0, ...
    label: str
    kind: str  # "mitmdump", "lean" or "seedtape"
    cmd: object  # callable(upstream origin, store path) -> argv
    runs: list[dict] = field(default_factory=list)
    hits: list[dict] = field(default_factory=list)  # hit test rounds (seedtape rows)


# -- wrk with distinct prompts -------------------------------------------------------------------------


def wrk_distinct(
    pin: Pinning, origin: str, tag: str, expect: str, seconds: int, connections: int, pid: int | None = None
) -> dict:
    """wrk -t1 -cN with a new prompt on every request; expect: the seedtape-status every answer must carry."""
    url = origin + PATH
    cmd = [
        *pin.client,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(DISTINCT_LUA),
        url,
        "--",
        tag,
        expect,
        API_KEY,
    ]
    cpu0, w0 = (proc_cpu_seconds(pid), run_queue_wait(pid)) if pid else (None, None)
    out = run_child(cmd, timeout=seconds + 30)
    cpu1, w1 = (proc_cpu_seconds(pid), run_queue_wait(pid)) if pid else (None, None)
    m = WRK_RESULT.search(out.stdout)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"wrk against {url} failed (exit {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    r = json.loads(m.group(1))
    elapsed = r["duration_us"] / 1e6
    r["errors"] = sum(r[k] for k in NOT_A_HIT)
    if r["answers"] < r["requests"] and not r["errors"]:
        r["errors"], r["first_bad"] = r["requests"] - r["answers"], "answers not checked by wrk_distinct.lua"
    r["rps"] = r["requests"] / elapsed if elapsed else float("nan")
    r["p50"], r["p99"] = r["p50_us"] / 1000, r["p99_us"] / 1000
    r["srv_cpu"] = (cpu1 - cpu0) / elapsed if cpu0 is not None and cpu1 is not None and elapsed else None
    r["cpu_us"] = (cpu1 - cpu0) / r["requests"] * 1e6 if r["srv_cpu"] is not None and r["requests"] else None
    r["srv_wait"] = (w1 - w0) / elapsed if w0 is not None and w1 is not None and elapsed else None
    r["recorded"] = r["statuses"].get("recorded", 0)
    return r


def new_tag(*parts: object) -> str:
    return "-".join(str(p) for p in parts) + "-" + secrets.token_hex(4)


# -- the store, read-only, from outside the proxy ------------------------------------------------------


def store_state(path: Path) -> dict:
    """Entries and LMDB's last write-transaction id of a store (the proxy may still be writing it)."""
    from seedtape.proxy.tapes.store import Store

    with Store(path, readonly=True) as s:
        return {"entries": s.stats_counts()["entries"], "txnid": s.env.info()["last_txnid"]}


def filesystem(path: Path) -> str:
    """The type and device of the filesystem holding path (from /proc/mounts: longest mount point)."""
    best, path = ("?", "?", ""), path.resolve()
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype, *_ = line.split()
            if (path == Path(mnt) or Path(mnt) in path.parents) and len(mnt) > len(best[2]):
                best = (fstype, dev, mnt)
    except OSError:
        pass
    return f"{best[0]} ({best[1]} on {best[2] or '?'})"


def fsync_ms(directory: Path, n: int = 40) -> tuple[float, float]:
    """Median and max milliseconds of a 4 KiB write + fsync in directory (what one commit costs at least)."""
    probe = directory / "fsync-probe"
    times = []
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for i in range(n):
            os.pwrite(fd, os.urandom(4096), (i % 16) * 4096)
            t0 = time.perf_counter()
            os.fsync(fd)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        probe.unlink()
    return statistics.median(times), max(times)


# -- the lean Master forwarding (python bench_record.py --role lean-forward --upstream-url URL) ---------


class Announce:
    def running(self) -> None:
        from mitmproxy import ctx

        for host, port, *_ in ctx.master.addons.get("proxyserver").listen_addrs()[:1]:
            print(f"OPENAI_BASE_URL=http://{host}:{port}/v1", flush=True)


async def lean_forward(upstream: str) -> None:
    from seedtape.addons.internals import build_master  # the Master `seedtape serve` runs

    m = build_master(
        dict(
            mode=[f"reverse:{upstream}"],
            listen_host="127.0.0.1",
            listen_port=0,
            connection_strategy="lazy",
            termlog_verbosity="warn",
        ),
        Announce(),
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, m.shutdown)
    await m.run()


# -- the run -------------------------------------------------------------------------------------------


def flag_of(r: dict) -> str:
    return f"  !! {r['errors']} errors, first: {r['first_bad']}" if r["errors"] else ""


def load1() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def throughput_run(
    a: argparse.Namespace, pin: Pinning, tmp: Path, servers: list[Server], row: Row, upstream: Server, rnd: int
) -> dict:
    store = a.store_root / f"store-{row.key}-{rnd}"
    server = Server(f"{row.label} round {rnd}", [*pin.server, *row.cmd(upstream.origin, store)], tmp)
    servers.append(server)
    expect = "recorded" if row.kind == "seedtape" else "-"
    try:
        warm = wrk_distinct(pin, server.origin, new_tag("w", rnd, row.key), expect, a.warmup, a.connections) if a.warmup else None
        before = store_state(store) if row.kind == "seedtape" else None
        r = wrk_distinct(pin, server.origin, new_tag("t", rnd, row.key), expect, a.duration, a.connections, server.proc.pid)
        if warm and warm["errors"]:  # flagged with the run it warmed up, not dropped
            r["errors"] += warm["errors"]
            r["first_bad"] = r["first_bad"] or f"(warm-up) {warm['first_bad']}"
        if row.kind == "seedtape":
            live = store_state(store)
            recorded = r["recorded"] + (warm["recorded"] if warm else 0)
            r["commits"] = live["txnid"] - before["txnid"]
            r["per_commit"] = r["recorded"] / r["commits"] if r["commits"] else float("nan")
            if server.proc.poll() is not None:
                raise RuntimeError(f"{row.label} exited during the run:\n{server.tail()}")
            server.stop()
            final = store_state(store)
            r["store"] = f"{final['entries']}/{recorded}"
            slack = 2 * a.connections
            if live["entries"] < recorded or not recorded <= final["entries"] <= recorded + slack:
                r["errors"] += 1
                r["first_bad"] = r["first_bad"] or (
                    f"store check: {recorded} answers recorded, {live['entries']} entries right after wrk, "
                    f"{final['entries']} after the proxy stopped (allowed: {recorded}..{recorded + slack})"
                )
            shutil.rmtree(store, ignore_errors=True)
    finally:
        server.stop()
        servers.remove(server)
    return r


def hit_round(
    a: argparse.Namespace, pin: Pinning, tmp: Path, servers: list[Server], row: Row, upstream: Server, rnd: int, hit_file: Path
) -> dict:
    store = a.store_root / f"hitstore-{row.key}-{rnd}"
    server = Server(f"{row.label} hit round {rnd}", [*pin.server, *row.cmd(upstream.origin, store)], tmp)
    servers.append(server)
    hit_args = argparse.Namespace(threads=1, connections=a.hit_connections)
    try:
        for want in ("recorded", "hit"):
            resp = http_post(server.origin, PATH, HIT_BODY)
            if resp.status_code != 200 or resp.headers.get("seedtape-status") != want:
                raise RuntimeError(
                    f"{row.label}: the hit prompt answered HTTP {resp.status_code} "
                    f"{resp.headers.get('seedtape-status')!r}, expected {want}: {resp.text[:300]}"
                )
        if a.warmup:
            wrk_run(hit_args, pin, server, "chat", hit_file, a.warmup)  # untimed; errors show in the runs below

        def alone() -> dict:
            return wrk_run(hit_args, pin, server, "chat", hit_file, a.duration)

        def storm() -> tuple[dict, dict]:
            with ThreadPoolExecutor(1) as pool:
                rec = pool.submit(
                    wrk_distinct, pin, server.origin, new_tag("s", rnd, row.key), "recorded", a.duration + 2, a.storm_connections
                )
                time.sleep(1.0)  # the storm is under way before the hit wrk starts, and ends after it
                hit = wrk_run(hit_args, pin, server, "chat", hit_file, a.duration)
                return hit, rec.result()

        if rnd % 2 == 0:
            h_alone = alone()
            h_storm, rec = storm()
        else:
            h_storm, rec = storm()
            h_alone = alone()
        if server.proc.poll() is not None:
            raise RuntimeError(f"{row.label} exited during the hit test:\n{server.tail()}")
        server.stop()
        final = store_state(store)
        errors = h_alone["errors"] + h_storm["errors"] + rec["errors"]
        first = h_alone["first_bad"] or h_storm["first_bad"] or rec["first_bad"]
        if not rec["recorded"] + 1 <= final["entries"] <= rec["recorded"] + 1 + a.storm_connections:
            errors += 1
            first = first or f"store check: {final['entries']} entries for {rec['recorded']} recorded + 1"
        shutil.rmtree(store, ignore_errors=True)
    finally:
        server.stop()
        servers.remove(server)
    return {
        "alone_p50": h_alone["p50"],
        "alone_p99": h_alone["p99"],
        "alone_rps": h_alone["rps"],
        "storm_p50": h_storm["p50"],
        "storm_p99": h_storm["p99"],
        "storm_rps": h_storm["rps"],
        "alone_cpu": h_alone["srv_cpu"],
        "storm_cpu": h_storm["srv_cpu"],
        "rec_rps": rec["recorded"] / (rec["duration_us"] / 1e6),
        "ratio_p99": h_storm["p99"] / h_alone["p99"],
        "ratio_p50": h_storm["p50"] / h_alone["p50"],
        "errors": errors,
        "first_bad": first,
    }


def bench(a: argparse.Namespace, tmp: Path, servers: list[Server]) -> None:
    load_start = os.getloadavg()
    pin = Pinning(not a.no_pin)
    a.store_root = Path(tempfile.mkdtemp(prefix="seedtape-bench-record-", dir=a.store_dir)) if a.store_dir else tmp
    try:
        run(a, pin, tmp, servers, load_start)
    finally:
        if a.store_dir:
            shutil.rmtree(a.store_root, ignore_errors=True)


def run(a: argparse.Namespace, pin: Pinning, tmp: Path, servers: list[Server], load_start: tuple) -> None:
    announce = tmp / "announce_addon.py"
    announce.write_text(ANNOUNCE_ADDON)
    hit_file = tmp / "hit-body.jsonl"
    hit_file.write_bytes(HIT_BODY + b"\n")
    baselines: list[Baseline] = [check_baseline(tree, i, tmp) for i, tree in enumerate(a.baseline_tree)]
    fs, (fsync_med, fsync_max) = filesystem(a.store_root), fsync_ms(a.store_root)

    # The upstreams' own capacity: the same wrk load, straight at them (wrk and upstream on the client core).
    capacity = {}
    for name in ("fast", "fake"):
        up = Server(f"{name} upstream (capacity)", [*pin.client, sys.executable, str(UPSTREAMS[name]), "--port", "0"], tmp)
        servers.append(up)
        try:
            capacity[name] = wrk_distinct(pin, up.origin, new_tag("cap", name), "-", a.warmup + 2, a.connections)
        finally:
            up.stop()
            servers.remove(up)
    upstream = Server(f"{a.upstream} upstream", [*pin.client, sys.executable, str(UPSTREAMS[a.upstream]), "--port", "0"], tmp)
    servers.append(upstream)

    def seedtape_row(origin: str, store: Path) -> list[str]:
        return seedtape_cmd("--mode", "auto", "--store", str(store), "--upstream", origin, "--quiet")

    rows = [
        Row(
            "mitmdump",
            "mitmdump passthrough",
            "mitmdump",
            lambda origin, _: mitmdump_cmd(origin, announce, "--set", "connection_strategy=lazy"),
        )
    ]
    if not a.no_lean:
        rows.append(
            Row(
                "lean",
                "lean Master forwarding",
                "lean",
                lambda origin, _: [sys.executable, __file__, "--role", "lean-forward", "--upstream-url", origin],
            )
        )
    rows.append(Row("seedtape", "seedtape auto (this tree)", "seedtape", seedtape_row))
    for b in baselines:
        rows.append(
            Row(
                b.key,
                f"seedtape auto ({b.rev})",
                "seedtape",
                lambda origin, store, tree=b.tree: baseline_cmd(
                    tree, "--mode", "auto", "--store", str(store), "--upstream", origin, "--quiet"
                ),
            )
        )
    seedtapes = [r for r in rows if r.kind == "seedtape"]

    print(
        f"seedtape recording bench (issue 15, point 2): {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"mitmproxy {version('mitmproxy')}, seedtape {version('seedtape')}, wrk {wrk_version()}\n"
        f"pinning: {pin.note}; the upstream shares the client core\n"
        f"seedtape: this checkout, {checkout_note()}"
        + "".join(f"\nbaseline: {b.tree} at {b.rev} {b.subject}" for b in baselines)
        + f"\nstores under {a.store_root}: filesystem {fs}; 4 KiB write+fsync {fsync_med:.2f} ms median, "
        f"{fsync_max:.2f} ms max ({40} probes)\n"
        f"upstream capacity (wrk -t1 -c{a.connections}, distinct prompts, {a.warmup + 2}s): "
        + ", ".join(
            f"{UPSTREAMS[n].relative_to(ROOT)} {capacity[n]['rps']:.0f} req/s"
            + (f" (!! {capacity[n]['errors']} errors)" if capacity[n]["errors"] else "")
            for n in capacity
        )
        + f"; used: {UPSTREAMS[a.upstream].relative_to(ROOT)}"
        + f"\nload average at start: {' '.join(f'{x:.2f}' for x in load_start)}",
        flush=True,
    )

    width = max(len(r.label) for r in rows)
    for i in range(a.repeats):  # interleaved; the order rotates so no row always goes first
        turn = rows[i % len(rows) :] + rows[: i % len(rows)]
        for row in turn:
            r = throughput_run(a, pin, tmp, servers, row, upstream, i)
            row.runs.append(r)
            extra = (
                (f"  {r['recorded']} recorded, {r['commits']} commits ({r['per_commit']:.1f}/commit), store {r['store']}")
                if row.kind == "seedtape"
                else ""
            )
            print(
                f"  record run {i + 1}/{a.repeats} {row.label:<{width}} {r['rps']:7.0f} req/s  p50 {r['p50']:6.2f} ms"
                f"  p99 {r['p99']:6.2f} ms  cpu {pct(r['srv_cpu'] or float('nan')):>4}  wait "
                f"{pct(r['srv_wait'] if r['srv_wait'] is not None else float('nan')):>4}  load {load1()}"
                f"{extra}{flag_of(r)}",
                flush=True,
            )
        if a.no_hit:
            continue
        for row in seedtapes[i % len(seedtapes) :] + seedtapes[: i % len(seedtapes)]:
            h = hit_round(a, pin, tmp, servers, row, upstream, i, hit_file)
            row.hits.append(h)
            print(
                f"  hit run    {i + 1}/{a.repeats} {row.label:<{width}} alone p50 {h['alone_p50']:5.2f} p99 "
                f"{h['alone_p99']:6.2f} ms; storm p50 {h['storm_p50']:5.2f} p99 {h['storm_p99']:6.2f} ms "
                f"({h['ratio_p99']:.2f}x), storm {h['rec_rps']:.0f} rec/s  load {load1()}{flag_of(h)}",
                flush=True,
            )
    if upstream.proc.poll() is not None:
        raise RuntimeError(f"the upstream exited during the runs:\n{upstream.tail()}")
    a.status = report(a, rows, capacity)
    print(
        f"load average at start {' '.join(f'{x:.2f}' for x in load_start)}, at end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)"
    )


def rng(runs: list[dict], key: str, fmt: str) -> str:
    values = [r[key] for r in runs if r.get(key) is not None]
    return f"{min(values):{fmt}}..{max(values):{fmt}}" if values else "-"


def report(a: argparse.Namespace, rows: list[Row], capacity: dict) -> int:
    n = a.prompts
    print(
        f"\n1. Recording throughput: wrk -t1 -c{a.connections}, a new prompt on every request, {a.warmup}s warm-up "
        f"+ {a.duration}s timed per run, a fresh proxy (and store) per run.\nMedians of {a.repeats} interleaved "
        f"rounds, each column on its own; range: min..max; time for {n}: {n} / req/s; commits: LMDB write "
        f"transactions in the timed window; store: entries / recorded answers (last run)."
    )
    head = (
        f"{'row':<28} {'errors':>6} {'req/s':>7} {'range req/s':>11} {f'time {n} s':>10} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'srv cpu':>7} {'srv wait':>8} {'cpu us/req':>10} {'commits':>7} {'rec/commit':>10} "
        f"{'store':>11}"
    )
    print(head + "\n" + "-" * len(head))
    m, flagged = {}, []
    for row in rows:
        runs = row.runs
        errors = sum(r["errors"] for r in runs)
        if errors:
            flagged.append(row)
        m[row.key] = {k: med(runs, k) for k in ("rps", "p50", "p99", "srv_cpu", "srv_wait", "cpu_us", "commits", "per_commit")}
        x = m[row.key]
        seed = row.kind == "seedtape"
        print(
            f"{row.label + (' (!)' if errors else ''):<28} {errors:>6} {x['rps']:>7.0f} {rng(runs, 'rps', '.0f'):>11} "
            f"{n / x['rps']:>10.2f} {x['p50']:>7.2f} {x['p99']:>7.2f} {pct(x['srv_cpu']):>7} {pct(x['srv_wait']):>8} "
            f"{x['cpu_us']:>10.0f} {(f'{x["commits"]:.0f}' if seed else '-'):>7} "
            f"{(f'{x["per_commit"]:.1f}' if seed else '-'):>10} {(runs[-1]['store'] if seed else '-'):>11}"
        )
    print("(ratios of time for N: lower is faster)")

    def ratio(num: str, den: str) -> float:
        return m[den]["rps"] / m[num]["rps"]

    for num, den in [
        ("seedtape", "mitmdump"),
        ("seedtape", "lean"),
        *((b.key, "mitmdump") for b in rows if b.key.startswith("baseline")),
        *(("seedtape", b.key) for b in rows if b.key.startswith("baseline")),
    ]:
        if den in m and num in m:
            label = f"{next(r.label for r in rows if r.key == num)} / {next(r.label for r in rows if r.key == den)}"
            t = ratio(num, den)
            print(f"  {label:<60} time {t:.2f}x  (req/s {1 / t:.2f}x)")
    up_rps = capacity[a.upstream]["rps"]
    fastest = max(x["rps"] for x in m.values())
    print(
        f"  upstream capacity / fastest row: {up_rps:.0f} / {fastest:.0f} req/s = {up_rps / fastest:.1f}x "
        f"(with wrk on the same core)"
    )

    t = ratio("seedtape", "mitmdump")
    print(
        f"\nGoal 1 (issue 15): recording {n} prompts with {a.connections} clients takes {t:.2f}x mitmdump's "
        f"passthrough time (goal <= {GOAL_TIME:.2f}x: {'met' if t <= GOAL_TIME else 'not met'})"
    )

    hit_rows = [r for r in rows if r.hits]
    if hit_rows:
        print(
            f"\n2. A hit alone and during a recording storm: hit wrk -t1 -c{a.hit_connections} (bench/wrk_post.lua) "
            f"{a.duration}s; storm: wrk -t1 -c{a.storm_connections} of distinct prompts (from 1 s before the hit wrk "
            f"to 1 s after) against the same proxy.\nMedians of {a.repeats} rounds; p99 ratio: storm / alone, "
            f"median of the per-round ratios (range min..max); srv cpu: the proxy's CPU use in the hit window "
            f"(near 100%: its one event loop was saturated, and a hit queues behind the storm's requests)."
        )
        head = (
            f"{'tree':<28} {'errors':>6} {'alone p50':>9} {'alone p99':>9} {'storm p50':>9} {'storm p99':>9} "
            f"{'p50 x':>6} {'p99 x':>6} {'p99 x range':>11} {'hit/s alone':>11} {'hit/s storm':>11} "
            f"{'storm rec/s':>11} {'cpu alone':>9} {'cpu storm':>9}"
        )
        print(head + "\n" + "-" * len(head))
        for row in hit_rows:
            hs = row.hits
            errors = sum(h["errors"] for h in hs)
            if errors and row not in flagged:
                flagged.append(row)
            x = {k: med(hs, k) for k in hs[0] if k not in ("errors", "first_bad")}
            print(
                f"{row.label + (' (!)' if errors else ''):<28} {errors:>6} {x['alone_p50']:>9.2f} "
                f"{x['alone_p99']:>9.2f} {x['storm_p50']:>9.2f} {x['storm_p99']:>9.2f} {x['ratio_p50']:>5.2f}x "
                f"{x['ratio_p99']:>5.2f}x {rng(hs, 'ratio_p99', '.2f'):>11} {x['alone_rps']:>11.0f} "
                f"{x['storm_rps']:>11.0f} {x['rec_rps']:>11.0f} {pct(x['alone_cpu']):>9} {pct(x['storm_cpu']):>9}"
            )
            m[row.key]["hit_ratio"] = x["ratio_p99"]
        h = m["seedtape"].get("hit_ratio")
        if h is not None:
            print(
                f"\nGoal 2 (issue 15): a hit's p99 during a recording storm is {h:.2f}x its p99 alone (goal <= "
                f"{GOAL_HIT_P99:.0f}x: {'met' if h <= GOAL_HIT_P99 else 'not met'})"
            )

    if flagged:
        print("\n!! runs with errors (counted above, not dropped), first errors seen:")
        for row in flagged:
            for run in [*row.runs, *row.hits]:
                if run["errors"]:
                    print(f"  {row.label}: {run['errors']} errors; first: {run['first_bad']}")
        return 1
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5, help="timed seconds per wrk run, rounded up to whole seconds (default 5)")
    p.add_argument("--warmup", type=float, default=1, help="untimed wrk seconds before each run, 0 for none (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported (default 3)")
    p.add_argument("--prompts", type=int, default=1000, help="N in 'time for N prompts' (default 1000)")
    p.add_argument("--connections", type=int, default=16, help="recording wrk connections (default 16)")
    p.add_argument("--hit-connections", type=int, default=2, help="hit wrk connections (default 2)")
    p.add_argument("--storm-connections", type=int, help="recording wrk connections during the hit test (default: --connections)")
    p.add_argument(
        "--baseline-tree",
        metavar="DIR",
        type=lambda s: Path(s).resolve(),
        action="append",
        default=[],
        help="also record with the seedtape of another checkout (before/after, in one run); repeatable",
    )
    p.add_argument(
        "--store-dir",
        metavar="DIR",
        type=lambda s: Path(s).resolve(),
        help="where the fresh stores are made (default: a temporary directory); fsync cost depends on it",
    )
    p.add_argument(
        "--upstream",
        choices=tuple(UPSTREAMS),
        default="fast",
        help="fast: bench/fast_upstream.py (default); fake: tests/fake_upstream.py",
    )
    p.add_argument("--no-lean", action="store_true", help="skip the lean Master forwarding row")
    p.add_argument("--no-hit", action="store_true", help="skip the hit-during-a-storm test")
    p.add_argument("--no-pin", action="store_true", help="do not pin the servers and the clients to cores")
    # internal: the lean Master forwarding runs in a process of its own
    p.add_argument("--role", choices=("lean-forward",), help=argparse.SUPPRESS)
    p.add_argument("--upstream-url", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.duration, a.warmup = math.ceil(a.duration), math.ceil(a.warmup)  # wrk -d takes whole seconds
    if a.duration < 1 or a.warmup < 0 or a.repeats < 1 or a.prompts < 1 or a.connections < 1 or a.hit_connections < 1:
        p.error("--duration, --repeats, --prompts, --connections, --hit-connections must be at least 1, --warmup not negative")
    for tree in a.baseline_tree:
        if not (tree / "seedtape" / "__init__.py").is_file():
            p.error(f"--baseline-tree {tree}: no seedtape/ package there")
    if a.store_dir and not a.store_dir.is_dir():
        p.error(f"--store-dir {a.store_dir}: not a directory")
    a.storm_connections = a.storm_connections or a.connections
    a.status = 0
    return a


def main() -> None:
    a = parse_args()
    if a.role == "lean-forward":
        return asyncio.run(lean_forward(a.upstream_url))
    if not shutil.which("wrk"):
        print(
            "bench_record.py needs wrk (the HTTP load generator), which is not on PATH.\n"
            "Install it with: apt-get install wrk   (Debian/Ubuntu; brew install wrk on macOS)",
            file=sys.stderr,
        )
        sys.exit(2)
    run_bench(bench, a, prefix="seedtape-bench-record-")
    sys.exit(a.status)


if __name__ == "__main__":
    main()
