"""Replay-hit speed of `seedtape serve --mode replay`, next to what it cannot beat.

What it measures, in one run:

- throughput (req/s) and p50/p99 latency of non-streamed chat completions under a fixed
  concurrency of keep-alive connections, for
    * seedtape replaying hits from an LMDB store it recorded just before (--quiet, and with its
      default one-log-line-per-request);
    * a bare mitmproxy reverse proxy answering every request with the same fixed response from its
      `request` hook (bench/fixed_addon.py): lean, the way `seedtape serve` runs, and as plain
      `mitmdump -s` with mitmproxy's default addons;
    * the fake upstream (tests/fake_upstream.py) directly;
- the real openai SDK's per-call latency (sync client, sequential calls), which is what users feel.

Why: the bare mitmproxy is the floor for any mitmproxy addon, so "seedtape / lean mitmproxy" is
the cost of seedtape's own work (canonical key, LMDB read, headers). The direct upstream shows
what the proxy costs compared with no proxy at all.

Every server and every load generator is its own process; all traffic stays on 127.0.0.1. Each
measurement is repeated (--repeats, targets interleaved) and the median run is reported. The
"srv cpu" column is the server's CPU use during the timed window: near 100% means the
single-threaded proxy was the bottleneck; a "cli cpu" near 100% means the load generator was.
"cpu us/req" (server CPU time per request, median over runs) is the steadiest figure when other
work shares the machine; req/s and latency move with it.

    ./dev bench    # or: .venv/bin/python bench/bench_replay.py [--duration 4] [--concurrency 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
MODEL = "gpt-4o-mini"
API_KEY = "sk-bench-not-a-secret"
SDK_WARMUP_CALLS = 20
READY = re.compile(r"(?:OPENAI_BASE_URL|FAKE_UPSTREAM)=(http://[^\s/]+)")


def chat_bodies(n: int) -> list[dict]:
    return [{"model": MODEL, "messages": [{"role": "user", "content": f"Benchmark prompt number {i}: say something."}]}
            for i in range(n)]


def sdk_json(body: dict) -> bytes:
    """A request body serialized byte for byte as the openai SDK sends it (compact JSON), so that
    replayers matching raw bytes (mitmproxy's server replay, bench_baselines.py) see the same
    requests from the load generator as from the SDK."""
    return json.dumps(body, separators=(",", ":")).encode()


def percentiles(latencies: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    if len(latencies) < 2:
        return (latencies[0] * 1000, latencies[0] * 1000) if latencies else (float("nan"), float("nan"))
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return q[49] * 1000, q[98] * 1000


def proc_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, all threads) a process has used so far; Linux only."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


# -- roles run in processes of their own (python bench_replay.py --role ...) ---------------------


CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)
CONNECTION_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.I)
EXCHANGE_ERRORS = (OSError, EOFError, TimeoutError, asyncio.LimitOverrunError)


class KeepAlive:
    """One keep-alive client connection, reopened after the server closes it or an exchange fails."""

    def __init__(self, host: str, port: int):
        self.host, self.port, self.reader, self.writer = host, port, None, None

    async def exchange(self, request: bytes, timeout: float) -> tuple[bytes, bytes]:
        """Send one request; the response head and its content-length body."""
        try:
            async with asyncio.timeout(timeout):
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                self.writer.write(request)
                head = await self.reader.readuntil(b"\r\n\r\n")
                length = CONTENT_LENGTH.search(head)
                body = await self.reader.readexactly(int(length.group(1))) if length else b""
        except EXCHANGE_ERRORS:
            self.close()
            raise
        if not length or CONNECTION_CLOSE.search(head):
            self.close()
        return head, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def load_worker(a: argparse.Namespace) -> dict:
    """Keep --concurrency requests in flight; count those that finish inside the timed window.

    A minimal HTTP/1.1 keep-alive client on asyncio streams: httpx's AsyncClient used up its core
    at ~800 req/s here, before the proxies did, which hid the differences being measured.
    """
    url = urlsplit(a.url)
    requests = [b"POST /v1/chat/completions HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
                b"authorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s"
                % (url.netloc.encode(), API_KEY.encode(), len(body), body)
                for body in (sdk_json(b) for b in json.loads(Path(a.bodies).read_text()))]
    name, _, value = a.expect.partition("=")
    expect = re.compile(rb"\r\n%s:[ \t]*%s\r\n" % (re.escape(name.encode()), re.escape(value.encode())), re.I)
    latencies: list[float] = []
    state = {"measuring": False, "stop": False, "errors": 0, "error": ""}

    async def worker(i: int) -> None:
        conn = KeepAlive(url.hostname, url.port)
        while not state["stop"]:
            request = requests[i % len(requests)]
            i += a.concurrency
            t0 = time.perf_counter()
            try:
                head, body = await conn.exchange(request, 10)
                ok = head.startswith(b"HTTP/1.1 200 ") and (not a.expect or bool(expect.search(head)))
                why = (head.split(b"\r\n", 1)[0] + b" " + body[:200]).decode(errors="replace")
            except EXCHANGE_ERRORS as e:
                ok, why = False, f"{type(e).__name__}: {e}"
            if state["measuring"]:
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    state["errors"] += 1
                    state["error"] = state["error"] or why
        conn.close()

    tasks = [asyncio.create_task(worker(i)) for i in range(a.concurrency)]
    await asyncio.sleep(a.warmup)
    cpu0, srv0, t0 = time.process_time(), proc_cpu_seconds(a.server_pid), time.perf_counter()
    state["measuring"] = True
    await asyncio.sleep(a.duration)
    state["measuring"] = False
    elapsed = time.perf_counter() - t0
    cpu1, srv1 = time.process_time(), proc_cpu_seconds(a.server_pid)
    state["stop"] = True
    await asyncio.gather(*tasks)

    p50, p99 = percentiles(latencies)
    return {"requests": len(latencies), "errors": state["errors"], "first_error": state["error"],
            "rps": len(latencies) / elapsed, "p50": p50, "p99": p99,
            "cli_cpu": (cpu1 - cpu0) / elapsed,
            "srv_cpu": (srv1 - srv0) / elapsed if srv0 is not None and srv1 is not None else None}


def sdk_worker(a: argparse.Namespace) -> dict:
    """Sequential calls with the real sync openai client, as a test suite makes them."""
    import openai

    bodies = json.loads(Path(a.bodies).read_text())
    client = openai.OpenAI(base_url=a.url + "/v1", api_key=API_KEY, max_retries=0, timeout=10.0)
    latencies, errors, first_error = [], 0, ""
    for i in range(SDK_WARMUP_CALLS + a.calls):
        t0 = time.perf_counter()
        if i == SDK_WARMUP_CALLS:
            started = t0
        try:
            client.chat.completions.create(**bodies[i % len(bodies)])
        except openai.OpenAIError as e:
            errors, first_error = errors + 1, first_error or f"{type(e).__name__}: {e}"
            continue
        if i >= SDK_WARMUP_CALLS:
            latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    p50, p99 = percentiles(latencies)
    return {"requests": len(latencies), "errors": errors, "first_error": first_error, "p50": p50, "p99": p99,
            "cps": len(latencies) / elapsed if elapsed > 0 else float("nan")}


def upstream_role() -> None:
    """tests/fake_upstream.py as a server child of this benchmark."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_upstream import FakeUpstream

    up = FakeUpstream("127.0.0.1", 0)
    print(f"FAKE_UPSTREAM={up.url}", flush=True)
    up.server.serve_forever()


# -- servers -------------------------------------------------------------------------------------


class Server:
    """A server child whose output goes to a log file; ready once it prints its URL."""

    def __init__(self, name: str, cmd: list[str], logdir: Path, timeout: float = 30.0, env: dict | None = None):
        self.name = name
        self.log = logdir / f"{re.sub(r'[^a-z0-9]+', '-', name.lower())}.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        try:
            deadline = time.monotonic() + timeout
            while not (m := READY.search(self.log.read_text())):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start:\n{self.tail()}")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        self.origin = m.group(1)

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Target:
    name: str
    server: Server
    expect: str = ""  # header=value every answer must carry (seedtape: a replay hit)


def seedtape_cmd(*args: str) -> list[str]:
    # -P: the working directory (this checkout) must not shadow a --baseline-tree given on PYTHONPATH
    return [sys.executable, "-P", "-m", "seedtape", "serve", "--port", "0", *args]


def record(upstream: str, store: Path, bodies: list[dict], logdir: Path) -> None:
    """Record every body into the store through `seedtape serve --mode auto`."""
    rec = Server("seedtape record", seedtape_cmd("--mode", "auto", "--store", str(store), "--upstream", upstream,
                                                 "--quiet"), logdir)
    try:
        for body in bodies:
            r = post(rec.origin, body)
            if r.status_code != 200 or r.headers.get("seedtape-status") != "recorded":
                raise RuntimeError(f"recording failed: {r.status_code} {r.headers.get('seedtape-status')} {r.text}")
    finally:
        rec.stop()


def post(origin: str, body: dict):
    """One chat completion request, outside any timing."""
    import httpx

    return httpx.post(origin + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {API_KEY}"},
                      timeout=10.0)


def run_worker(kind: str, target: Target, a: argparse.Namespace, bodies_file: Path) -> dict:
    cmd = [sys.executable, __file__, "--role", kind, "--url", target.server.origin, "--bodies", str(bodies_file),
           "--server-pid", str(target.server.proc.pid), "--concurrency", str(a.concurrency),
           "--warmup", str(a.warmup), "--duration", str(a.duration), "--calls", str(a.sdk_calls)]
    if target.expect:
        cmd += ["--expect", target.expect]
    budget = a.warmup + a.duration + 60 if kind == "load" else 60 + a.sdk_calls * 0.5
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=budget, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} worker against {target.name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- report ----------------------------------------------------------------------------------------


def median_run(runs: list[dict], by: str) -> dict:
    """The run whose ``by`` is the median (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r[by])
    return ordered[(len(ordered) - 1) // 2]


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


def cpu_us(run: dict) -> float | None:
    """Server CPU microseconds per request: unlike req/s, barely moved by other load on the machine."""
    return run["srv_cpu"] / run["rps"] * 1e6 if run["srv_cpu"] is not None and run["rps"] else None


def ratio(x: float, y: float) -> float:
    return x / y if y else float("nan")


def report(targets: list[Target], load: dict, sdk: dict, sizes: dict, a: argparse.Namespace) -> None:
    print(f"\nLoad: {a.concurrency} keep-alive connections, {a.warmup:g}s warm-up + {a.duration:g}s timed, "
          f"median run of {a.repeats} by req/s\n(errors: all runs; range: min..max req/s over runs)")
    head = f"{'target':<26} {'requests':>8} {'errors':>6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7}  " \
           f"{'range req/s':>11} {'srv cpu':>7} {'cpu us/req':>10} {'cli cpu':>7} {'body B':>6}"
    print(head + "\n" + "-" * len(head))
    best = {}
    for t in targets:
        runs = load[t.name]
        m = best[t.name] = median_run(runs, "rps")
        lo, hi = min(r["rps"] for r in runs), max(r["rps"] for r in runs)
        print(f"{t.name:<26} {m['requests']:>8} {sum(r['errors'] for r in runs):>6} {m['rps']:>7.0f} "
              f"{m['p50']:>7.2f} {m['p99']:>7.2f}  {f'{lo:.0f}..{hi:.0f}':>11} {fmt_pct(m['srv_cpu']):>7} "
              f"{statistics.median(cpu_us(r) or 0 for r in runs):>10.0f} {fmt_pct(m['cli_cpu']):>7} {sizes[t.name]:>6}")

    print(f"\nopenai SDK, sync client, sequential: {a.sdk_calls} timed calls after {SDK_WARMUP_CALLS} warm-up, "
          f"median run of {a.repeats} by p50")
    head = f"{'target':<26} {'calls':>8} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7}"
    print(head + "\n" + "-" * len(head))
    sdk_best = {}
    for t in targets:
        runs = sdk[t.name]
        m = sdk_best[t.name] = median_run(runs, "p50")
        print(f"{t.name:<26} {m['requests']:>8} {sum(r['errors'] for r in runs):>6} {m['p50']:>7.2f} {m['p99']:>7.2f}")

    errors = [f"{t.name}: {r['first_error']}" for t in targets for r in load[t.name] + sdk[t.name] if r["errors"]]
    if errors:
        print("\nfirst errors seen:\n  " + "\n  ".join(dict.fromkeys(errors)))

    st = "seedtape replay"
    if st not in best:
        return
    print(f"\nRatios, {st} (--quiet) vs each: req/s, server CPU per request, load p50, SDK p50 (difference)")
    cpu = {t.name: statistics.median(cpu_us(r) or 0 for r in load[t.name]) for t in targets}
    for other in [t.name for t in targets if t.name != st]:
        s, o, ss, so = best[st], best[other], sdk_best[st], sdk_best[other]
        print(f"  vs {other:<24} {ratio(s['rps'], o['rps']):>5.2f}x req/s  "
              f"{ratio(cpu[st], cpu[other]):>5.2f}x cpu/req ({cpu[st] - cpu[other]:+5.0f} us)  "
              f"{ratio(s['p50'], o['p50']):>5.2f}x p50  "
              f"{ratio(ss['p50'], so['p50']):>5.2f}x SDK p50 ({ss['p50'] - so['p50']:+.2f} ms)")


# -- main --------------------------------------------------------------------------------------------

TARGETS = ("seedtape", "seedtape-log", "lean", "mitmdump", "upstream")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=4.0, help="timed seconds per load run (default 4)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each load run (default 1)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--repeats", type=int, default=3, help="runs per target; the median is reported (default 3)")
    p.add_argument("--sdk-calls", type=int, default=200, help="timed SDK calls per run (default 200)")
    p.add_argument("--prompts", type=int, default=32, help="distinct recorded requests cycled through (default 32)")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help=f"comma-separated subset of {','.join(TARGETS)} (default: all)")
    # internal: the load generator and SDK client run in their own processes
    p.add_argument("--baseline-tree", metavar="DIR",
                   help="also replay with the seedtape of another checkout (before/after a change, in one run)")
    p.add_argument("--role", choices=("load", "sdk", "upstream"), help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--bodies", help=argparse.SUPPRESS)
    p.add_argument("--server-pid", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--expect", default="", help=argparse.SUPPRESS)
    p.add_argument("--calls", type=int, default=200, help=argparse.SUPPRESS)
    a = p.parse_args()
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    if bad := set(a.targets) - set(TARGETS):
        p.error(f"unknown target(s) {', '.join(sorted(bad))}; choose from {', '.join(TARGETS)}")
    if a.concurrency < 1 or a.repeats < 1 or a.duration <= 0 or a.sdk_calls < 2:
        p.error("--concurrency, --repeats and --sdk-calls must be positive, --duration above 0")
    return a


def bench(a: argparse.Namespace, tmp: Path, servers: list[Server]) -> None:
    def start(name: str, cmd: list[str], env: dict | None = None) -> Server:
        servers.append(Server(name, cmd, tmp, env=env))
        return servers[-1]

    bodies = chat_bodies(a.prompts)
    bodies_file = tmp / "bodies.json"
    bodies_file.write_text(json.dumps(bodies))
    store = tmp / "store"

    upstream = start("fake upstream", [sys.executable, __file__, "--role", "upstream"])
    record(upstream.origin, store, bodies, tmp)

    targets: list[Target] = []
    replay = ["--mode", "replay", "--store", str(store), "--upstream", upstream.origin]
    if "seedtape" in a.targets:
        targets.append(Target("seedtape replay", start("seedtape replay", seedtape_cmd(*replay, "--quiet")),
                              "seedtape-status=hit"))
    if a.baseline_tree:  # another checkout of seedtape (e.g. `git worktree add /tmp/before HEAD~5`), same run
        targets.append(Target("seedtape replay, baseline", start("seedtape replay baseline", seedtape_cmd(
            *replay, "--quiet"), env={"PYTHONPATH": str(Path(a.baseline_tree).resolve())}), "seedtape-status=hit"))
    if "seedtape-log" in a.targets:
        targets.append(Target("seedtape replay, logging", start("seedtape replay logging", seedtape_cmd(*replay)),
                              "seedtape-status=hit"))

    # The baselines answer with exactly what seedtape replays: same status, headers and body bytes.
    probe_server = next((t.server for t in targets), None) or start("seedtape probe", seedtape_cmd(*replay, "--quiet"))
    r = post(probe_server.origin, bodies[0])
    if r.status_code != 200 or r.headers.get("seedtape-status") != "hit":
        raise RuntimeError(f"seedtape did not replay the recording: {r.status_code} {r.headers} {r.text}")
    spec = {"status": r.status_code, "body": r.text,
            "headers": [[k, v] for k, v in r.headers.multi_items() if k not in ("content-length", "date")]}
    (tmp / "response.json").write_text(json.dumps(spec))

    fixed = str(tmp / "response.json")
    if "lean" in a.targets:
        targets.append(Target("mitmproxy lean, fixed", start("mitmproxy lean", [
            sys.executable, str(ROOT / "bench" / "fixed_addon.py"), "--response", fixed, "--port", "0"])))
    if "mitmdump" in a.targets:
        mitmdump = Path(sys.executable).with_name("mitmdump")  # the venv's, even when it is not on PATH
        targets.append(Target("mitmdump -s, fixed", start("mitmdump", [
            str(mitmdump) if mitmdump.exists() else shutil.which("mitmdump") or "mitmdump", "-q",
            "--mode", "reverse:http://127.0.0.1:9", "--listen-host", "127.0.0.1", "-p", "0",
            "-s", str(ROOT / "bench" / "fixed_addon.py"), "--set", f"fixed_response={fixed}",
            "--set", "connection_strategy=lazy"])))
    if "upstream" in a.targets:
        targets.append(Target("fake upstream, direct", upstream))

    sizes = {}
    for t in targets:
        r = post(t.server.origin, bodies[0])
        if r.status_code != 200:
            raise RuntimeError(f"{t.name} answered {r.status_code} to a probe: {r.text}\n{t.server.tail()}")
        sizes[t.name] = len(r.content)

    print(f"seedtape replay bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"{len(bodies)} recorded requests, targets: {', '.join(t.name for t in targets)}", flush=True)
    load: dict[str, list] = {t.name: [] for t in targets}
    sdk: dict[str, list] = {t.name: [] for t in targets}
    for i in range(a.repeats):  # interleaved, so slow drift of the machine hits every target alike
        for t in targets:
            load[t.name].append(run_worker("load", t, a, bodies_file))
            print(f"  load run {i + 1}/{a.repeats} {t.name:<26} {load[t.name][-1]['rps']:7.0f} req/s", flush=True)
    for i in range(a.repeats):
        for t in targets:
            sdk[t.name].append(run_worker("sdk", t, a, bodies_file))
            print(f"  SDK run {i + 1}/{a.repeats} {t.name:<26} p50 {sdk[t.name][-1]['p50']:6.2f} ms", flush=True)
    report(targets, load, sdk, sizes, a)


def main() -> None:
    a = parse_args()
    if a.role == "load":
        return print(json.dumps(asyncio.run(load_worker(a))))
    if a.role == "sdk":
        return print(json.dumps(sdk_worker(a)))
    if a.role == "upstream":
        return upstream_role()
    run_bench(bench, a)


def run_bench(bench, a: argparse.Namespace, prefix: str = "seedtape-bench-") -> None:
    """Run ``bench(a, tmpdir, servers)`` and stop every server it started, even on SIGTERM or Ctrl-C."""
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below on SIGTERM too
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        try:
            bench(a, Path(tmp), servers)
        except KeyboardInterrupt:
            sys.exit("interrupted")
        finally:
            for s in reversed(servers):
                s.stop()
    print(f"\n(total {time.monotonic() - started:.0f}s)")


if __name__ == "__main__":
    main()
