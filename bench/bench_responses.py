"""Replay-hit speed of the Responses API next to chat completions, in one run.

What it measures:

- throughput (req/s) and wrk's latency p50/p99 of non-streamed replay hits from
  `seedtape serve --mode replay --quiet`, for `POST /v1/chat/completions` and `POST /v1/responses`,
  under `wrk -t1 -c8` (8 keep-alive connections), with the server's CPU use during the timed window;
- the real openai SDK's per-call latency p50/p99 (sync client, sequential calls after a warm-up)
  for `client.chat.completions.create` and `client.responses.create` against the same proxy.

How: the fake upstream (tests/fake_upstream.py) answers while `seedtape serve --mode auto` records
--prompts distinct prompts for each API (the same prompt texts, `messages` for chat and `input` for
Responses); then the recorder and the upstream stop, so the replay proxy works offline. Before timing,
every recorded body is sent once and must come back as a hit. The bodies wrk and the recorder send
are the same bytes (one compact JSON per line of a file bench/wrk_post.lua cycles through). wrk
counts every answer that is not a 200 with `seedtape-status: hit`: a run with one is flagged in the
table and makes the script exit 1, it is never silently averaged in.

Why: a Responses hit takes a few steps a chat hit does not (the `_final_state` check of background
calls in seedtape/proxy/deck.py `_serve`, a different dialect, a bigger recorded body), and users of
agents SDKs make these calls. The ratio row says what a Responses hit costs next to a chat hit on the
same machine in the same run, where cross-run drift cancels out.

Every server and load generator is its own process; all traffic stays on 127.0.0.1. When `taskset`
exists and two cores are available, the replay proxy is pinned to the first and wrk and the SDK
client to the second, so they do not steal each other's core. Rounds are interleaved (--repeats; the
order of the APIs alternates per round) and each figure in the table is the median over the rounds
(min..max req/s shown). "srv cpu" near 100% means the single-threaded proxy was the bottleneck; "cpu
us/req" (server CPU time per request) is the steadiest figure when other work shares the machine.

wrk is not a Python package: `apt-get install wrk` (Debian/Ubuntu). Without it the script exits 2.

    .venv/bin/python bench/bench_responses.py [--duration 4] [--connections 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_replay import MODEL, READY, ROOT, percentiles, proc_cpu_seconds, sdk_json, seedtape_cmd

API_KEY = "sk-bench"
LUA = ROOT / "bench" / "wrk_post.lua"
SDK_WARMUP_CALLS = 20
APIS = {  # name: (path, label)
    "chat": ("/v1/chat/completions", "chat completions"),
    "responses": ("/v1/responses", "responses"),
}
WRK_RESULT = re.compile(r"^WRK_RESULT (\{.*\})$", re.M)
NOT_A_HIT = ("non200", "nohit", "connect", "read", "write", "timeout")  # wrk's "status" is part of non200


def prompts(n: int) -> list[str]:
    return [f"Benchmark prompt number {i}: say something." for i in range(n)]


def bodies_for(api: str, n: int) -> list[bytes]:
    """The request bodies of one API, serialized once: these exact bytes are recorded and replayed."""
    if api == "chat":
        docs = [{"model": MODEL, "messages": [{"role": "user", "content": p}]} for p in prompts(n)]
    else:
        docs = [{"model": MODEL, "input": p} for p in prompts(n)]
    return [sdk_json(d) for d in docs]


# -- child processes -------------------------------------------------------------------------------


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM a child's process group (it was started in a session of its own), then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Server:
    """A server child in a process group of its own, output to a log file; ready once it prints its URL."""

    def __init__(self, name: str, cmd: list[str], logdir: Path, timeout: float = 30.0):
        self.name = name
        self.log = logdir / f"{re.sub(r'[^a-z0-9]+', '-', name.lower())}.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=ROOT, start_new_session=True,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + timeout
            while not (m := READY.search(self.log.read_text(errors="replace"))):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {self.proc.returncode} before it was ready "
                                       f"({' '.join(cmd)}):\n{self.tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} printed no URL within {timeout:g}s ({' '.join(cmd)}):\n{self.tail()}")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        self.origin = m.group(1)

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        stop_group(self.proc)


def run_child(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a worker (wrk, the SDK client) in a process group of its own; kill the group if it overruns
    or this script is interrupted."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, cwd=ROOT, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        raise RuntimeError(f"{' '.join(cmd)} did not finish within {timeout:g}s") from None
    finally:
        stop_group(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


class Pinning:
    """`taskset -c N` prefixes: the proxy on one core, its clients on another, when that is possible."""

    def __init__(self, enabled: bool):
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        taskset = shutil.which("taskset")
        if not enabled:
            self.server, self.client, self.note = [], [], "none (--no-pin)"
        elif not taskset:
            self.server, self.client, self.note = [], [], "none (taskset not found)"
        elif len(cores) < 2:
            self.server, self.client, self.note = [], [], f"none (only {len(cores)} core available)"
        else:
            self.server = [taskset, "-c", str(cores[0])]
            self.client = [taskset, "-c", str(cores[1])]
            self.note = f"proxy on core {cores[0]}, wrk and SDK client on core {cores[1]} (taskset)"


# -- the SDK client role (python bench_responses.py --role sdk ...) ---------------------------------


def sdk_worker(a: argparse.Namespace) -> dict:
    """Sequential calls with the real sync openai client, as a test suite makes them."""
    import openai

    bodies = [json.loads(line) for line in Path(a.bodies).read_bytes().splitlines() if line]
    client = openai.OpenAI(base_url=a.url + "/v1", api_key=API_KEY, max_retries=0, timeout=10.0)
    call = client.chat.completions.create if a.api == "chat" else client.responses.create
    latencies, errors, first_error = [], 0, ""
    started = None
    for i in range(SDK_WARMUP_CALLS + a.calls):
        t0 = time.perf_counter()
        if i == SDK_WARMUP_CALLS:
            started = t0
        try:
            call(**bodies[i % len(bodies)])
        except openai.OpenAIError as e:
            errors, first_error = errors + 1, first_error or f"{type(e).__name__}: {e}"
            continue
        if i >= SDK_WARMUP_CALLS:
            latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started if started is not None else 0.0
    p50, p99 = percentiles(latencies)
    return {"calls": len(latencies), "errors": errors, "first_error": first_error, "p50": p50, "p99": p99,
            "cps": len(latencies) / elapsed if elapsed > 0 else float("nan")}


# -- the benchmark -------------------------------------------------------------------------------------


def http_post(origin: str, path: str, body: bytes):
    """One request outside any timing, with the exact body bytes."""
    import httpx

    return httpx.post(origin + path, content=body, timeout=10.0,
                      headers={"content-type": "application/json", "authorization": f"Bearer {API_KEY}"})


def record(a: argparse.Namespace, tmp: Path, servers: list[Server], bodies: dict[str, list[bytes]]) -> Path:
    """Record every body of every API through `seedtape serve --mode auto`; stop it and the upstream."""
    store = tmp / "store"
    upstream = Server("fake upstream", [sys.executable, str(ROOT / "tests" / "fake_upstream.py"), "--port", "0"], tmp)
    servers.append(upstream)
    rec = Server("seedtape record", seedtape_cmd("--mode", "auto", "--store", str(store),
                                                 "--upstream", upstream.origin, "--quiet"), tmp)
    servers.append(rec)
    try:
        for api, (path, label) in APIS.items():
            for body in bodies[api]:
                r = http_post(rec.origin, path, body)
                if r.status_code != 200 or r.headers.get("seedtape-status") != "recorded":
                    raise RuntimeError(f"recording {label} failed: HTTP {r.status_code}, seedtape-status "
                                       f"{r.headers.get('seedtape-status')!r}: {r.text[:500]}\n{rec.tail()}")
    finally:
        rec.stop()
        upstream.stop()
    return store


def wrk_run(a: argparse.Namespace, pin: Pinning, server: Server, api: str, bodies_file: Path, seconds: int) -> dict:
    url = server.origin + APIS[api][0]
    cmd = [*pin.client, "wrk", f"-t{a.threads}", f"-c{a.connections}", f"-d{seconds}s", "--timeout", "5s",
           "-s", str(LUA), url, "--", str(bodies_file), API_KEY]
    cpu0 = proc_cpu_seconds(server.proc.pid)
    out = run_child(cmd, timeout=seconds + 30)
    cpu1 = proc_cpu_seconds(server.proc.pid)
    m = WRK_RESULT.search(out.stdout)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"wrk against {url} failed (exit {out.returncode}):\n{out.stdout[-2000:]}\n"
                           f"{out.stderr[-2000:]}")
    r = json.loads(m.group(1))
    elapsed = r["duration_us"] / 1e6
    r["errors"] = sum(r[k] for k in NOT_A_HIT)
    r["rps"] = r["requests"] / elapsed if elapsed else float("nan")
    r["p50"], r["p99"] = r["p50_us"] / 1000, r["p99_us"] / 1000
    r["srv_cpu"] = (cpu1 - cpu0) / elapsed if cpu0 is not None and cpu1 is not None and elapsed else None
    r["cpu_us"] = (cpu1 - cpu0) / r["requests"] * 1e6 if r["srv_cpu"] is not None and r["requests"] else None
    if r["answers"] < r["requests"] and not r["errors"]:  # should not happen: every answer passes response()
        r["errors"], r["first_bad"] = r["requests"] - r["answers"], "answers not checked by wrk_post.lua"
    return r


def sdk_run(a: argparse.Namespace, pin: Pinning, server: Server, api: str, bodies_file: Path) -> dict:
    cmd = [*pin.client, sys.executable, __file__, "--role", "sdk", "--api", api, "--url", server.origin,
           "--bodies", str(bodies_file), "--calls", str(a.sdk_calls)]
    out = run_child(cmd, timeout=60 + a.sdk_calls * 0.5)
    if out.returncode != 0:
        raise RuntimeError(f"SDK client for {APIS[api][1]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0].split(" [")[0].removeprefix("wrk ") if first else "?"


def bench(a: argparse.Namespace, tmp: Path, servers: list[Server]) -> int:
    pin = Pinning(not a.no_pin)
    bodies = {api: bodies_for(api, a.prompts) for api in APIS}
    files = {}
    for api, lines in bodies.items():
        files[api] = tmp / f"{api}-bodies.jsonl"
        files[api].write_bytes(b"".join(line + b"\n" for line in lines))

    store = record(a, tmp, servers, bodies)
    # replay is offline: the upstream is stopped, and port 9 (discard) would refuse anything forwarded
    replay = Server("seedtape replay", [*pin.server, *seedtape_cmd("--mode", "replay", "--store", str(store),
                                                                   "--upstream", "http://127.0.0.1:9", "--quiet")],
                    tmp)
    servers.append(replay)

    sizes = {}
    for api, (path, label) in APIS.items():  # every recorded body, byte for byte, must replay as a hit
        for body in bodies[api]:
            r = http_post(replay.origin, path, body)
            if r.status_code != 200 or r.headers.get("seedtape-status") != "hit":
                raise RuntimeError(f"seedtape did not replay a recorded {label} request: HTTP {r.status_code}, "
                                   f"seedtape-status {r.headers.get('seedtape-status')!r}: {r.text[:500]}")
            sizes.setdefault(api, len(r.content))

    print(f"seedtape Responses vs chat replay bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"mitmproxy {version('mitmproxy')}, openai {version('openai')}, seedtape {version('seedtape')}, "
          f"wrk {wrk_version()}\npinning: {pin.note}\n{a.prompts} recorded prompts per API, "
          f"request bytes: chat {len(bodies['chat'][0])}, responses {len(bodies['responses'][0])}", flush=True)

    load: dict[str, list[dict]] = {api: [] for api in APIS}
    sdk: dict[str, list[dict]] = {api: [] for api in APIS}
    for i in range(a.repeats):  # interleaved; the order alternates so neither API always goes first
        order = list(APIS) if i % 2 == 0 else list(reversed(APIS))
        for api in order:
            warm = wrk_run(a, pin, replay, api, files[api], a.warmup) if a.warmup else None
            r = wrk_run(a, pin, replay, api, files[api], a.duration)
            if warm and warm["errors"]:  # flagged with the run it warmed up, not dropped
                r["errors"] += warm["errors"]
                r["first_bad"] = r["first_bad"] or f"(warm-up) {warm['first_bad']}"
            load[api].append(r)
            flag = f"  !! {r['errors']} not hits, first: {r['first_bad']}" if r["errors"] else ""
            print(f"  load run {i + 1}/{a.repeats} {APIS[api][1]:<17} {r['rps']:7.0f} req/s  p50 {r['p50']:6.2f} ms"
                  f"  p99 {r['p99']:6.2f} ms{flag}", flush=True)
        for api in order:
            r = sdk_run(a, pin, replay, api, files[api])
            sdk[api].append(r)
            flag = f"  !! {r['errors']} errors, first: {r['first_error']}" if r["errors"] else ""
            print(f"  SDK run  {i + 1}/{a.repeats} {APIS[api][1]:<17} p50 {r['p50']:6.2f} ms{flag}", flush=True)
    if replay.proc.poll() is not None:
        raise RuntimeError(f"the replay proxy exited with {replay.proc.returncode} during the runs:\n{replay.tail()}")
    return report(a, load, sdk, sizes)


def med(runs: list[dict], key: str) -> float:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def pct(x: float) -> str:
    return "-" if x != x else f"{x * 100:.0f}%"  # NaN: no /proc to read the server's CPU time from


def report(a: argparse.Namespace, load: dict, sdk: dict, sizes: dict) -> int:
    print(f"\nwrk -t{a.threads} -c{a.connections}: {a.warmup}s warm-up + {a.duration}s timed per run; "
          f"SDK: {a.sdk_calls} sequential calls after {SDK_WARMUP_CALLS} warm-up.\n"
          f"Medians of {a.repeats} interleaved rounds, each column on its own; errors: all runs and warm-ups "
          f"(non-200, not a replay hit, socket errors, SDK exceptions); range: min..max req/s")
    head = (f"{'API':<20} {'errors':>6} {'req/s':>7} {'range req/s':>11} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'srv cpu':>7} {'cpu us/req':>10} {'SDK p50':>8} {'SDK p99':>8} {'answer B':>8}")
    print(head + "\n" + "-" * len(head))
    row = {}
    flagged = []
    for api, (_, label) in APIS.items():
        runs, calls = load[api], sdk[api]
        errors = sum(r["errors"] for r in runs) + sum(r["errors"] for r in calls)
        if errors:
            flagged.append(api)
        row[api] = {k: med(runs, k) for k in ("rps", "p50", "p99", "srv_cpu", "cpu_us")}
        row[api]["sdk_p50"], row[api]["sdk_p99"] = med(calls, "p50"), med(calls, "p99")
        lo, hi = min(r["rps"] for r in runs), max(r["rps"] for r in runs)
        m = row[api]
        print(f"{label + (' (!)' if errors else ''):<20} {errors:>6} {m['rps']:>7.0f} {f'{lo:.0f}..{hi:.0f}':>11} "
              f"{m['p50']:>7.2f} {m['p99']:>7.2f} {pct(m['srv_cpu']):>7} {m['cpu_us']:>10.0f} "
              f"{m['sdk_p50']:>8.2f} {m['sdk_p99']:>8.2f} {sizes[api]:>8}")
    c, r = row["chat"], row["responses"]

    def x(key: str) -> str:
        return f"{r[key] / c[key]:.2f}x" if c[key] else "-"

    print(f"{'responses / chat':<20} {'':>6} {x('rps'):>7} {'':>11} {x('p50'):>7} {x('p99'):>7} {'':>7} "
          f"{x('cpu_us'):>10} {x('sdk_p50'):>8} {x('sdk_p99'):>8} {sizes['responses'] / sizes['chat']:>7.2f}x")
    print(f"\nA Responses hit costs {r['cpu_us'] - c['cpu_us']:+.0f} us of proxy CPU and "
          f"{r['sdk_p50'] - c['sdk_p50']:+.2f} ms of SDK call p50 next to a chat completions hit.")
    if flagged:
        print("\n!! runs with errors (counted above, not dropped), first errors seen:")
        for api in flagged:
            for run in load[api]:
                if run["errors"]:
                    print(f"  {APIS[api][1]} load: {run['errors']} not hits; first: {run['first_bad']}")
            for run in sdk[api]:
                if run["errors"]:
                    print(f"  {APIS[api][1]} SDK: {run['errors']} errors; first: {run['first_error']}")
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
    p.add_argument("--prompts", type=int, default=32, help="distinct recorded requests per API (default 32)")
    p.add_argument("--no-pin", action="store_true", help="do not pin the proxy and the clients to cores")
    # internal: the SDK client runs in a process of its own
    p.add_argument("--role", choices=("sdk",), help=argparse.SUPPRESS)
    p.add_argument("--api", choices=tuple(APIS), help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--bodies", help=argparse.SUPPRESS)
    p.add_argument("--calls", type=int, default=200, help=argparse.SUPPRESS)
    a = p.parse_args()
    a.duration, a.warmup = math.ceil(a.duration), math.ceil(a.warmup)  # wrk -d takes whole seconds
    if a.duration < 1 or a.warmup < 0 or a.connections < 1 or a.threads < 1 or a.repeats < 1 or a.sdk_calls < 2 \
            or a.prompts < 1:
        p.error("--duration, --connections, --threads, --repeats, --prompts must be at least 1, --sdk-calls at "
                "least 2, --warmup not negative")
    if a.threads > a.connections:
        p.error("--threads cannot exceed --connections (wrk needs a connection per thread)")
    return a


def main() -> None:
    a = parse_args()
    if a.role == "sdk":
        return print(json.dumps(sdk_worker(a)))
    if not shutil.which("wrk"):
        print("bench_responses.py needs wrk (the HTTP load generator), which is not on PATH.\n"
              "Install it with: apt-get install wrk   (Debian/Ubuntu; brew install wrk on macOS)", file=sys.stderr)
        sys.exit(2)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below on SIGTERM too
    servers: list[Server] = []
    status = 0
    with tempfile.TemporaryDirectory(prefix="seedtape-bench-responses-") as tmp:
        try:
            status = bench(a, Path(tmp), servers)
        except KeyboardInterrupt:
            status = "interrupted"
        finally:
            for s in reversed(servers):
                s.stop()
    print(f"\n(total {time.monotonic() - started:.0f}s)")
    sys.exit(status)


if __name__ == "__main__":
    main()
