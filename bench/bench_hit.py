"""Replay hits of `seedtape serve` against mitmproxy's floor and mitmproxy's own replay, measured with wrk.

What it measures, in one run, for non-streamed `POST /v1/chat/completions`:

- throughput (req/s) and wrk's latency p50/p99 under `wrk -t1 -c8` (8 keep-alive connections,
  --connections), with the server's CPU use during the timed window and its CPU time per request;
- the real openai SDK's per-call latency p50 (sync client, sequential calls after a warm-up), in a
  process of its own (bench_responses.py's SDK client),

for each row:

1. the lean mitmproxy Master answering a fixed response from its request hook (core, proxyserver,
   next_layer, tlsconfig, errorcheck and bench/fixed_addon.py: the Master `seedtape serve` runs,
   with seedtape's addon swapped for the cheapest possible one). This is the floor for seedtape.
2. `mitmdump -s bench/fixed_addon.py`: the same fixed answer, but with mitmproxy's default addons.
3. `mitmdump --server-replay FLOWS --server-replay-reuse`: mitmproxy's own replay, on flows that
   `mitmdump -w` recorded in reverse mode in front of the fake upstream, for the same body bytes.
   Options: `--server-replay-extra kill` (a miss is an error, not forwarded) and
   `connection_strategy=lazy` (otherwise mitmdump first connects to the stopped upstream). Everything
   else keeps mitmproxy's defaults, `server_replay_refresh` (dates rewritten per answer) included.
4. `seedtape serve --mode replay --quiet`, on a store that `seedtape serve --mode auto` recorded
   from tests/fake_upstream.py just before.
5. the same without --quiet: one log line per request (to a log file).
6. with --baseline-tree DIR (may be given more than once): row 4 run from another checkout of
   seedtape, for a before/after in the same run (e.g. `git worktree add /tmp/base REV`, then
   `--baseline-tree /tmp/base`). It runs as `python -P -m seedtape` with PYTHONPATH=DIR: without -P,
   `-m` puts the working directory (this checkout) ahead of PYTHONPATH and the "baseline" would be
   this tree again. Where seedtape is imported from is checked before the run. Each tree replays a
   store it recorded itself (in auto mode, from the same upstream), so a change of the store format
   between the trees does not matter.

Ratio rows: seedtape / lean Master (issue 15's goal: at least 0.90x the req/s and an SDK call p50
within +0.2 ms), seedtape / mitmdump server replay, seedtape logging / quiet, and seedtape / each
baseline tree. Row 4 is this checkout as it is on disk: the header line says when seedtape/ has
uncommitted changes.

How: the fake upstream answers while seedtape (auto mode) and `mitmdump -w` record --prompts
distinct prompts (the openai SDK's exact body bytes); then both recorders and the upstream stop, so
every row below answers offline. The lean Master and `mitmdump -s` answer with exactly the status,
headers and body of one seedtape hit. bench/wrk_post.lua counts every answer that is not a 200 with
`seedtape-status: hit` as an error; so that mitmdump's replay passes that check too, the header is
added to every recorded response in the flows file (the upstream's answers are otherwise untouched).
Before timing, every body is sent once to every row and must come back a hit; mitmdump's replay must
also give back the very answer it recorded, and fail an unrecorded prompt. A run with any error is
flagged in the table and makes the script exit 1; it is never silently averaged in.

Every server and load generator is its own process; all traffic stays on 127.0.0.1. When `taskset`
exists and two cores are available, the server under test is pinned to the first core and wrk and
the SDK client to the second. Rounds are interleaved (--repeats; the order of the rows rotates per
round), and each figure is the median over the rounds, each column on its own (min..max req/s
shown). "srv cpu" near 100% means the single-threaded server was the bottleneck; "cpu us/req" is
the steadiest figure when other work shares the machine. Such work shows in "srv wait" (the share of
the timed window the server was runnable but waited for its core, from /proc/PID/schedstat), in the
min..max ranges, and in the load average printed at the start and the end.

wrk is not a Python package: `apt-get install wrk` (Debian/Ubuntu). Without it the script exits 2.

    .venv/bin/python bench/bench_hit.py [--repeats 3] [--connections 8] [--duration 4] [--baseline-tree DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_baselines import ANNOUNCE_ADDON, mitmdump_cmd, port_closed, record_through, verify_proxy
from bench_replay import ROOT, chat_bodies, run_bench, sdk_json, seedtape_cmd
from bench_responses import (
    SDK_WARMUP_CALLS,
    Pinning,
    Server,
    http_post,
    med,
    pct,
    sdk_run,
    version,
    wrk_run,
    wrk_version,
)

PATH = "/v1/chat/completions"
FIXED_ADDON = ROOT / "bench" / "fixed_addon.py"
OFFLINE = "http://127.0.0.1:9"  # discard port: anything forwarded is refused
GOAL_RPS, GOAL_SDK_MS = 0.90, 0.20  # issue 15: >= 0.9x the lean Master's req/s, SDK p50 within +0.2 ms


@dataclass
class Row:
    key: str  # lean, mitmdump, replay, seedtape, seedtape-log, baseline0, baseline1, ...
    label: str
    server: Server


@dataclass
class Baseline:
    tree: Path
    rev: str  # short hash
    subject: str
    key: str
    store: Path


def tag_flows(src: Path, dst: Path) -> int:
    """Copy a mitmdump flow file, adding `seedtape-status: hit` to every response (wrk_post.lua's check)."""
    from mitmproxy import io

    with open(src, "rb") as f:
        flows = [fl for fl in io.FlowReader(f).stream() if getattr(fl, "response", None)]
    with open(dst, "wb") as f:
        w = io.FlowWriter(f)
        for fl in flows:
            fl.response.headers["seedtape-status"] = "hit"
            w.add(fl)
    return len(flows)


def baseline_cmd(tree: Path, *args: str) -> list[str]:
    """seedtape_cmd run from another checkout: -P keeps this checkout (the working directory) off sys.path."""
    cmd = seedtape_cmd(*args)
    return ["env", f"PYTHONPATH={tree}", cmd[0], "-P", *cmd[1:]]


def git(tree: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True).stdout.strip()


def check_baseline(tree: Path, i: int, tmp: Path) -> Baseline:
    out = subprocess.run([*baseline_cmd(tree)[:4], "-c", "import seedtape; print(seedtape.__file__)"],
                         capture_output=True, text=True, cwd=ROOT)
    where = Path(out.stdout.strip() or "?").resolve()
    if out.returncode != 0 or tree not in where.parents:
        raise RuntimeError(f"--baseline-tree {tree}: seedtape imports from {where}, not from that tree\n{out.stderr}")
    rev, _, subject = git(tree, "log", "-1", "--format=%h %s").partition(" ")
    if git(tree, "status", "--porcelain", "--", "seedtape"):
        rev += "+changes"
    return Baseline(tree, rev or tree.name, subject[:60], f"baseline{i}", tmp / f"store-baseline{i}")


def checkout_note() -> str:
    """This checkout's commit, and whether seedtape/ differs from it (other work in progress is measured too)."""
    rev = git(ROOT, "log", "-1", "--format=%h")
    changed = git(ROOT, "status", "--porcelain", "--", "seedtape").splitlines()
    if not rev:
        return "not a git checkout"
    return rev + (f" + uncommitted changes in {len(changed)} file(s) under seedtape/" if changed else
                  " (seedtape/ as committed)")


def run_queue_wait(pid: int) -> float | None:
    """Seconds a process's main thread has been runnable but waiting for its CPU so far (Linux schedstat)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def timed_wrk(a: argparse.Namespace, pin: Pinning, server: Server, bodies_file: Path) -> dict:
    """bench_responses.wrk_run, plus the share of the timed window the server waited for its core
    ("srv wait": other work on that core; near 0% when the server had it to itself)."""
    w0 = run_queue_wait(server.proc.pid)
    r = wrk_run(a, pin, server, "chat", bodies_file, a.duration)
    w1 = run_queue_wait(server.proc.pid)
    r["srv_wait"] = (w1 - w0) / (r["duration_us"] / 1e6) if w0 is not None and w1 is not None else None
    return r


def answer_bytes(r) -> int:
    """Status line, headers and body of one answer, as sent (near enough: HTTP/1.1 framing)."""
    return len(f"HTTP/1.1 {r.status_code} {r.reason_phrase}\r\n") + 2 + len(r.content) + sum(
        len(k) + len(v) + 4 for k, v in r.headers.raw)


def bench(a: argparse.Namespace, tmp: Path, servers: list[Server]) -> None:
    def start(name: str, cmd: list[str]) -> Server:
        servers.append(Server(name, cmd, tmp))
        return servers[-1]

    def stop(server: Server) -> None:
        server.stop()
        servers.remove(server)

    load_start = os.getloadavg()
    pin = Pinning(not a.no_pin)
    bodies = chat_bodies(a.prompts)
    raw = [sdk_json(b) for b in bodies]
    bodies_file = tmp / "chat-bodies.jsonl"  # bench/wrk_post.lua and the SDK client read one body a line
    bodies_file.write_bytes(b"".join(line + b"\n" for line in raw))
    announce = tmp / "announce_addon.py"
    announce.write_text(ANNOUNCE_ADDON)
    baselines = [check_baseline(tree, i, tmp) for i, tree in enumerate(a.baseline_tree)]

    # Record: seedtape (auto mode) and mitmdump -w, each in front of the fake upstream; then stop them all.
    store, flows_raw, flows = tmp / "store", tmp / "flows-raw.mitm", tmp / "flows.mitm"
    upstream = start("fake upstream", [sys.executable, str(ROOT / "tests" / "fake_upstream.py"), "--port", "0"])
    rec = start("seedtape record", seedtape_cmd("--mode", "auto", "--store", str(store), "--upstream",
                                                upstream.origin, "--quiet"))
    mitm_rec = start("mitmdump record", mitmdump_cmd(upstream.origin, announce, "-w", str(flows_raw)))
    base_recs = [start(f"seedtape record {b.key}", baseline_cmd(b.tree, "--mode", "auto", "--store", str(b.store),
                                                                 "--upstream", upstream.origin, "--quiet"))
                 for b in baselines]
    for r in (rec, *base_recs):
        record_through(r, bodies, "recorded")
    answers = record_through(mitm_rec, bodies)
    for s in (rec, mitm_rec, *base_recs, upstream):
        stop(s)  # mitmdump -w writes every flow as it ends; stopping closes the file
    if not port_closed(upstream.origin):
        raise RuntimeError("the fake upstream still answers after it was stopped")
    if (n := tag_flows(flows_raw, flows)) != len(bodies):
        raise RuntimeError(f"mitmdump -w recorded {n} flows for {len(bodies)} requests")

    # The rows. Every server under test is pinned to the server core.
    replay = ("--mode", "replay", "--store", str(store), "--upstream", OFFLINE)
    rows = [Row("seedtape", "seedtape replay --quiet", start("seedtape replay", [*pin.server, *seedtape_cmd(
        *replay, "--quiet")]))]
    probe = http_post(rows[0].server.origin, PATH, raw[0])
    if probe.status_code != 200 or probe.headers.get("seedtape-status") != "hit":
        raise RuntimeError(f"seedtape did not replay its recording: HTTP {probe.status_code} "
                           f"{probe.headers.get('seedtape-status')!r} {probe.text[:300]}\n{rows[0].server.tail()}")
    fixed = tmp / "response.json"  # the fixed rows answer exactly what a seedtape hit does
    fixed.write_text(json.dumps({"status": probe.status_code, "body": probe.text, "headers": [
        [k, v] for k, v in probe.headers.multi_items() if k not in ("content-length", "date")]}))
    rows += [
        Row("seedtape-log", "seedtape replay (logging)", start("seedtape replay logging", [
            *pin.server, *seedtape_cmd(*replay)])),
        Row("lean", "mitmproxy lean Master, fixed", start("mitmproxy lean", [
            *pin.server, sys.executable, str(FIXED_ADDON), "--response", str(fixed), "--port", "0"])),
        Row("mitmdump", "mitmdump -s fixed_addon.py", start("mitmdump fixed", [*pin.server, *mitmdump_cmd(
            OFFLINE, FIXED_ADDON, "--set", f"fixed_response={fixed}", "--set", "connection_strategy=lazy")])),
        Row("replay", "mitmdump --server-replay", start("mitmdump server replay", [*pin.server, *mitmdump_cmd(
            upstream.origin, announce, "--server-replay", str(flows), "--server-replay-reuse",
            "--server-replay-extra", "kill", "--set", "connection_strategy=lazy")])),
    ]
    for b in baselines:
        rows.append(Row(b.key, f"seedtape (baseline {b.rev})", start(f"seedtape replay {b.key}", [
            *pin.server, *baseline_cmd(b.tree, "--mode", "replay", "--store", str(b.store), "--upstream", OFFLINE,
                                       "--quiet")])))
    order = ["lean", "mitmdump", "replay", "seedtape", "seedtape-log", *(b.key for b in baselines)]
    rows.sort(key=lambda r: order.index(r.key))

    # Check before timing: every body is a hit on every row; mitmdump replays what it recorded.
    sizes = {}
    for row in rows:
        for body in raw:
            r = http_post(row.server.origin, PATH, body)
            if r.status_code != 200 or r.headers.get("seedtape-status") != "hit":
                raise RuntimeError(f"{row.label} did not answer a recorded request as a hit: HTTP {r.status_code}, "
                                   f"seedtape-status {r.headers.get('seedtape-status')!r}: {r.text[:300]}\n"
                                   f"{row.server.tail()}")
        sizes[row.key] = answer_bytes(r)
    v = verify_proxy(next(r for r in rows if r.key == "replay").server, bodies, answers, seedtape=False)
    if v["mismatches"] or not v["miss"].startswith("ok"):
        raise RuntimeError(f"mitmdump --server-replay does not replay what it recorded: {v}")

    print(f"seedtape replay-hit bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, mitmproxy "
          f"{version('mitmproxy')}, openai {version('openai')}, seedtape {version('seedtape')}, wrk {wrk_version()}\n"
          f"pinning: {pin.note}\n{a.prompts} recorded prompts, request {len(raw[0])} B; mitmdump server replay: "
          f"{v['checked']}/{v['checked']} replayed as recorded, unrecorded prompt {v['miss']}"
          + f"\nseedtape: this checkout, {checkout_note()}"
          + "".join(f"\nbaseline: {b.tree} at {b.rev} {b.subject}" for b in baselines)
          + f"\nload average at start: {' '.join(f'{x:.2f}' for x in load_start)}", flush=True)

    load: dict[str, list[dict]] = {r.key: [] for r in rows}
    sdk: dict[str, list[dict]] = {r.key: [] for r in rows}
    width = max(len(r.label) for r in rows)
    for i in range(a.repeats):  # interleaved; the order rotates so no row always goes first
        turn = rows[i % len(rows):] + rows[:i % len(rows)]
        for row in turn:
            warm = wrk_run(a, pin, row.server, "chat", bodies_file, a.warmup) if a.warmup else None
            r = timed_wrk(a, pin, row.server, bodies_file)
            if warm and warm["errors"]:  # flagged with the run it warmed up, not dropped
                r["errors"] += warm["errors"]
                r["first_bad"] = r["first_bad"] or f"(warm-up) {warm['first_bad']}"
            load[row.key].append(r)
            flag = f"  !! {r['errors']} not hits, first: {r['first_bad']}" if r["errors"] else ""
            print(f"  load run {i + 1}/{a.repeats} {row.label:<{width}} {r['rps']:7.0f} req/s  p50 {r['p50']:6.2f} ms"
                  f"  cpu {r['cpu_us'] or 0:5.0f} us/req  wait {pct(r['srv_wait'] or 0):>4}{flag}", flush=True)
        for row in turn:
            r = sdk_run(a, pin, row.server, "chat", bodies_file)
            sdk[row.key].append(r)
            flag = f"  !! {r['errors']} errors, first: {r['first_error']}" if r["errors"] else ""
            print(f"  SDK run  {i + 1}/{a.repeats} {row.label:<{width}} p50 {r['p50']:6.2f} ms{flag}", flush=True)
    for row in rows:
        if row.server.proc.poll() is not None:
            raise RuntimeError(f"{row.label} exited with {row.server.proc.returncode} during the runs:\n"
                               f"{row.server.tail()}")
    a.status = report(a, rows, load, sdk, sizes, load_start)


def report(a: argparse.Namespace, rows: list[Row], load: dict, sdk: dict, sizes: dict, load_start: tuple) -> int:
    load_end = os.getloadavg()
    print(f"\nNon-streamed chat completions. wrk -t{a.threads} -c{a.connections}: {a.warmup}s warm-up + "
          f"{a.duration}s timed per run; SDK: {a.sdk_calls} sequential calls after {SDK_WARMUP_CALLS} warm-up.\n"
          f"Medians of {a.repeats} interleaved rounds, each column on its own; errors: all runs and warm-ups "
          f"(non-200, not a hit, socket errors, SDK exceptions); range: min..max over the rounds; srv wait: "
          f"share of the timed window the server waited for its core (other work); answer B: status line, headers "
          f"and body.\nload average (1/5/15 min) at start {' '.join(f'{x:.2f}' for x in load_start)}, "
          f"at end {' '.join(f'{x:.2f}' for x in load_end)} ({os.cpu_count()} CPUs)")
    width = max(28, *(len(r.label) for r in rows))
    head = (f"{'row':<{width}} {'errors':>6} {'req/s':>7} {'range req/s':>11} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'srv cpu':>7} {'srv wait':>8} {'cpu us/req':>10} {'SDK p50':>8} {'SDK range':>11} {'SDK p99':>8} "
            f"{'answer B':>8}")
    print(head + "\n" + "-" * len(head))
    m, flagged = {}, []
    for row in rows:
        runs, calls = load[row.key], sdk[row.key]
        errors = sum(r["errors"] for r in runs) + sum(r["errors"] for r in calls)
        if errors:
            flagged.append(row)
        m[row.key] = {k: med(runs, k) for k in ("rps", "p50", "p99", "srv_cpu", "srv_wait", "cpu_us")}
        m[row.key]["sdk_p50"], m[row.key]["sdk_p99"] = med(calls, "p50"), med(calls, "p99")
        lo, hi = min(r["rps"] for r in runs), max(r["rps"] for r in runs)
        sdk_range = f"{min(r['p50'] for r in calls):.2f}..{max(r['p50'] for r in calls):.2f}"
        x = m[row.key]
        print(f"{row.label + (' (!)' if errors else ''):<{width}} {errors:>6} {x['rps']:>7.0f} "
              f"{f'{lo:.0f}..{hi:.0f}':>11} {x['p50']:>7.2f} {x['p99']:>7.2f} {pct(x['srv_cpu']):>7} "
              f"{pct(x['srv_wait']):>8} {x['cpu_us']:>10.0f} {x['sdk_p50']:>8.2f} {sdk_range:>11} {x['sdk_p99']:>8.2f} "
              f"{sizes[row.key]:>8}")

    def ratio_row(label: str, num: str, den: str) -> None:
        s, o = m[num], m[den]
        diff = f"{s['sdk_p50'] - o['sdk_p50']:+.2f}ms"

        def x(key: str) -> str:
            return f"{s[key] / o[key]:.2f}x" if o[key] and not math.isnan(o[key]) else "-"

        print(f"{label:<{width}} {'':>6} {x('rps'):>7} {'':>11} {x('p50'):>7} {x('p99'):>7} {'':>7} {'':>8} "
              f"{x('cpu_us'):>10} {diff:>8} {'':>11} {x('sdk_p99'):>8} "
              f"{sizes[num] / sizes[den]:>7.2f}x")

    baselines = [r for r in rows if r.key.startswith("baseline")]
    print(f"{'(ratios; SDK p50: difference)':<{width}}")
    ratio_row("seedtape / lean Master", "seedtape", "lean")
    ratio_row("seedtape / mitmdump replay", "seedtape", "replay")
    ratio_row("seedtape logging / quiet", "seedtape-log", "seedtape")
    for b in baselines:
        ratio_row(f"seedtape / {b.label.removeprefix('seedtape (').removesuffix(')')}", "seedtape", b.key)

    s, lean = m["seedtape"], m["lean"]
    rps, sdk_ms = s["rps"] / lean["rps"], s["sdk_p50"] - lean["sdk_p50"]
    print(f"\nGoal (issue 15) against the lean Master: req/s {rps:.2f}x (goal >= {GOAL_RPS:.2f}x: "
          f"{'met' if rps >= GOAL_RPS else 'not met'}); SDK call p50 {sdk_ms:+.2f} ms (goal within "
          f"+{GOAL_SDK_MS:.1f} ms: {'met' if sdk_ms <= GOAL_SDK_MS else 'not met'}); seedtape's own work per hit: "
          f"{s['cpu_us'] - lean['cpu_us']:+.0f} us of server CPU")
    for row in baselines:
        b = m[row.key]
        print(f"Against {row.label}: req/s {s['rps'] / b['rps']:.2f}x, server CPU per hit "
              f"{s['cpu_us'] - b['cpu_us']:+.0f} us, SDK call p50 {s['sdk_p50'] - b['sdk_p50']:+.2f} ms")
    if flagged:
        print("\n!! runs with errors (counted above, not dropped), first errors seen:")
        for row in flagged:
            for run in load[row.key]:
                if run["errors"]:
                    print(f"  {row.label} load: {run['errors']} not hits; first: {run['first_bad']}")
            for run in sdk[row.key]:
                if run["errors"]:
                    print(f"  {row.label} SDK: {run['errors']} errors; first: {run['first_error']}")
        return 1
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=4, help="timed seconds per wrk run, rounded up to whole seconds "
                   "as wrk counts them (default 4)")
    p.add_argument("--warmup", type=float, default=1, help="untimed wrk seconds before each run, 0 for none (default 1)")
    p.add_argument("--connections", "--concurrency", type=int, default=8,
                   help="wrk keep-alive connections (default 8)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported (default 3)")
    p.add_argument("--sdk-calls", type=int, default=200, help="timed SDK calls per run (default 200)")
    p.add_argument("--prompts", type=int, default=32, help="distinct recorded requests (default 32)")
    p.add_argument("--baseline-tree", metavar="DIR", type=lambda s: Path(s).resolve(), action="append", default=[],
                   help="also replay with the seedtape of another checkout (before/after a change, in one run); "
                        "may be given more than once")
    p.add_argument("--no-pin", action="store_true", help="do not pin the servers and the clients to cores")
    a = p.parse_args()
    a.duration, a.warmup = math.ceil(a.duration), math.ceil(a.warmup)  # wrk -d takes whole seconds
    if a.duration < 1 or a.warmup < 0 or a.connections < 1 or a.threads < 1 or a.repeats < 1 or a.sdk_calls < 2 \
            or a.prompts < 2:
        p.error("--duration, --connections, --threads, --repeats must be at least 1, --prompts and --sdk-calls at "
                "least 2, --warmup not negative")
    if a.threads > a.connections:
        p.error("--threads cannot exceed --connections (wrk needs a connection per thread)")
    for tree in a.baseline_tree:
        if not (tree / "seedtape" / "__init__.py").is_file():
            p.error(f"--baseline-tree {tree}: no seedtape/ package there")
    a.status = 0
    return a


def main() -> None:
    a = parse_args()
    if not shutil.which("wrk"):
        print("bench_hit.py needs wrk (the HTTP load generator), which is not on PATH.\n"
              "Install it with: apt-get install wrk   (Debian/Ubuntu; brew install wrk on macOS)", file=sys.stderr)
        sys.exit(2)
    run_bench(bench, a, prefix="seedtape-bench-hit-")
    sys.exit(a.status)


if __name__ == "__main__":
    main()
