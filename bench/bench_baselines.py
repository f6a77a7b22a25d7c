"""seedtape's replay next to the replay tools users compare it with: mitmproxy's server replay and VCR.py.

What it measures, in one run, after each tool has recorded the same chat completions from the
fake upstream (tests/fake_upstream.py), with the upstream stopped before any replay (all three
replay offline; every prompt timed below is first checked to replay the very answer recorded for it,
and an unrecorded prompt to fail):

- seedtape: `seedtape serve --mode replay --quiet` on an LMDB store recorded by
  `seedtape serve --mode record`;
- mitmproxy server replay: `mitmdump -q --mode reverse:UPSTREAM --server-replay FLOWS` on a flow file
  recorded by `mitmdump --mode reverse:UPSTREAM -w FLOWS`, with `server_replay_extra=kill` (a miss
  is an error, not forwarded), `server_replay_reuse` (without it every recording answers once and
  is dropped) and `connection_strategy=lazy` (without it mitmdump first connects to the stopped
  upstream and drops every client); its default matching (method, scheme, host, port, path, query,
  raw body bytes) is kept, so clients send the openai SDK's exact bytes;
- VCR.py: `vcr.use_cassette(record_mode="none", allow_playback_repeats=True)` around the openai SDK,
  in-process, on a YAML cassette the SDK recorded through VCR.py, matching on the body too (VCR.py's
  default match_on leaves the body out: every chat completion would match the first recording not
  yet played, whatever its prompt), with the authorization header filtered out.

Figures:

(a) the real openai SDK's per-call latency (sync client, max_retries=0, sequential calls over
    --prompts distinct recorded prompts, --passes times each): p50, p99 and calls/s. This is what
    a test suite feels, and the only figure where an in-process tool (VCR.py) and the proxies meet.
    VCR.py's calls are slow enough that it replays fewer of them by default (--vcr-passes,
    --vcr-large-passes; a fraction is that share of the prompts, spread evenly).
(b) for the two proxies, throughput and latency under --concurrency keep-alive connections
    (bench_replay.py's load generator, its own process), with the proxy's CPU use.
(c) scaling with the number of recordings: each tool also records --large prompts, and (a) and
    (b) are repeated on those stores with the same --prompts prompts, spread evenly through the
    recording order. mitmproxy looks responses up in a dict keyed by a hash of the request, and
    seedtape in LMDB; VCR.py scans the cassette for every request (twice: once to see whether it
    can answer, once to answer), running every matcher on every recorded request and, for each one
    whose body differs, building a diff for its error message, so its latency grows with the
    cassette. Also the time to be ready: for the proxies, process start until the listening line
    (Python start-up, imports, loading the flow file); for VCR.py, the use_cassette() call that
    parses the cassette.
(d) the storage each tool needs for the recordings: allocated bytes on disk (du) and apparent
    size (LMDB's data file may be sparse).

Every server and every client is its own process; all traffic stays on 127.0.0.1. Runs are repeated
(--repeats, targets interleaved) and the median run is reported; the ratios compare those medians.
The default run takes about three minutes on two cores; --large 0 skips the scaling stores,
--targets picks tools, --no-load skips (b).

    ./dev bench baselines    # or: .venv/bin/python bench/bench_baselines.py [--prompts 200] [--large 2000]
                             #     [--passes 2] [--repeats 3] [--duration 2.5] [--concurrency 8] [--targets ...]

vcrpy comes with seedtape's bench extra (pip install -c constraints.txt -e '.[bench]'; ./dev installs
it); without it the VCR.py column is skipped with a message.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_replay
from bench_replay import (
    API_KEY,
    ROOT,
    SDK_WARMUP_CALLS,
    Server,
    Target,
    chat_bodies,
    cpu_us,
    fmt_pct,
    median_run,
    ratio,
    run_bench,
    run_worker,
    sdk_json,
    sdk_worker,
    seedtape_cmd,
)

TOOLS = ("seedtape", "mitmproxy", "vcr")
RECORD_CONCURRENCY = 4  # clients recording through a proxy at once
LABEL = {"seedtape": "seedtape replay", "mitmproxy": "mitmdump server replay", "vcr": "VCR.py (in-process)"}

# mitmdump -p 0 prints no port we can wait for: this script prints the line bench_replay.Server waits for.
ANNOUNCE_ADDON = '''\
from mitmproxy import ctx


class Announce:
    def running(self):
        for host, port, *_ in ctx.master.addons.get("proxyserver").listen_addrs()[:1]:
            print(f"OPENAI_BASE_URL=http://{host}:{port}/v1", flush=True)


addons = [Announce()]
'''


def have_vcr() -> bool:
    return importlib.util.find_spec("vcr") is not None


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# -- VCR.py, in processes of their own (python bench_baselines.py --role vcr-...) --------------------


def use_cassette(path: str, record: bool):
    import vcr

    base = ("method", "scheme", "host", "port", "path", "query")
    # Recording: a fresh cassette never plays back, and matching without the body keeps recording
    # linear (VCR.py looks for a match before every request). Replaying: the body decides.
    return vcr.VCR(record_mode="once" if record else "none", match_on=base if record else (*base, "body"),
                   filter_headers=["authorization"]).use_cassette(path, allow_playback_repeats=not record)


def sdk_client(url: str):
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=10.0)


def answer(completion) -> dict:
    return completion.model_dump(mode="json")


def vcr_record_role(a: argparse.Namespace) -> dict:
    """Record every body through the openai SDK into a new cassette; return the answers seen."""
    bodies = json.loads(Path(a.bodies).read_text())
    client = sdk_client(a.url)
    t0 = time.perf_counter()
    with use_cassette(a.cassette, record=True) as cassette:
        answers = [answer(client.chat.completions.create(**b)) for b in bodies]
        calls = time.perf_counter() - t0
    if len(cassette) != len(bodies):
        raise RuntimeError(f"VCR.py recorded {len(cassette)} interactions for {len(bodies)} requests")
    return {"answers": answers, "calls_s": calls, "total_s": time.perf_counter() - t0}


def vcr_verify_role(a: argparse.Namespace) -> dict:
    """Replay every body once and compare with the answers seen at recording time; then one miss."""
    import openai
    from vcr.errors import CannotOverwriteExistingCassetteException

    bodies = json.loads(Path(a.bodies).read_text())
    expected = json.loads(Path(a.expected).read_text())
    client = sdk_client(a.url)
    bad = []
    with use_cassette(a.cassette, record=False):
        for b, want in zip(bodies, expected, strict=True):
            got = answer(client.chat.completions.create(**b))
            if got != want:
                bad.append(f"{b['messages'][0]['content']!r}: got id {got.get('id')}, recorded {want.get('id')}")
        try:
            client.chat.completions.create(**chat_bodies(1)[0] | {"messages": [{"role": "user", "content": "never"}]})
            miss = "answered a request that was never recorded"
        except (openai.APIConnectionError, CannotOverwriteExistingCassetteException) as e:
            miss = f"ok ({type(e).__name__})"
    return {"checked": len(bodies), "mismatches": len(bad), "first": bad[:3], "miss": miss}


def vcr_sdk_role(a: argparse.Namespace) -> dict:
    """bench_replay.sdk_worker inside use_cassette(); also how long loading the cassette took."""
    t0 = time.perf_counter()
    with use_cassette(a.cassette, record=False):
        load = time.perf_counter() - t0
        out = sdk_worker(a)
    return out | {"load_s": load}


def run_role(role: str, budget: float, **kw) -> dict:
    cmd = [sys.executable, __file__, "--role", role]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=budget, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{role} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the proxies -------------------------------------------------------------------------------------


def mitmdump_cmd(upstream: str, announce: Path, *args: str) -> list[str]:
    exe = Path(sys.executable).with_name("mitmdump")  # the venv's, even when it is not on PATH
    return [str(exe) if exe.exists() else shutil.which("mitmdump") or "mitmdump", "-q", "--mode",
            f"reverse:{upstream}", "--listen-host", "127.0.0.1", "-p", "0", "-s", str(announce), *args]


def record_through(server: Server, bodies: list[dict], status_header: str = "") -> list[dict]:
    """POST every body (the SDK's exact bytes) through a recording proxy; return the answers."""
    import httpx

    with httpx.Client(base_url=server.origin, timeout=30.0,
                      headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}) as c:
        def one(b: dict) -> dict:
            r = c.post("/v1/chat/completions", content=sdk_json(b))
            if r.status_code != 200 or (status_header and r.headers.get("seedtape-status") != status_header):
                raise RuntimeError(f"recording through {server.name} failed: {r.status_code} "
                                   f"{r.headers.get('seedtape-status')} {r.text[:300]}")
            return r.json()

        with ThreadPoolExecutor(RECORD_CONCURRENCY) as pool:
            return list(pool.map(one, bodies))


def verify_proxy(server: Server, bodies: list[dict], expected: list[dict], seedtape: bool) -> dict:
    """Every replayed answer is the recorded one (same id, same JSON); an unrecorded prompt fails."""
    import httpx

    bad = []
    with httpx.Client(base_url=server.origin, timeout=10.0,
                      headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}) as c:
        for b, want in zip(bodies, expected, strict=True):
            r = c.post("/v1/chat/completions", content=sdk_json(b))
            hit = r.headers.get("seedtape-status", "").startswith("hit") if seedtape else True
            if r.status_code != 200 or not hit or r.json() != want:
                bad.append(f"{b['messages'][0]['content']!r}: {r.status_code} {r.headers.get('seedtape-status', '')} "
                           f"{r.text[:200]}")
        try:
            r = c.post("/v1/chat/completions", content=sdk_json(chat_bodies(1)[0] | {
                "messages": [{"role": "user", "content": "never"}]}))
            miss = f"ok ({r.status_code})" if r.status_code >= 400 else f"answered {r.status_code} to an unrecorded prompt"
        except httpx.HTTPError as e:
            miss = f"ok ({type(e).__name__})"
    return {"checked": len(bodies), "mismatches": len(bad), "first": bad[:3], "miss": miss}


def disk_usage(path: Path) -> tuple[int, int]:
    """(allocated bytes, apparent bytes) of a file or a directory tree."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_blocks * 512 for p in files), sum(p.stat().st_size for p in files)


def port_closed(origin: str) -> bool:
    u = urlsplit(origin)
    try:
        socket.create_connection((u.hostname, u.port), timeout=1).close()
        return False
    except OSError:
        return True


# -- the run -----------------------------------------------------------------------------------------


@dataclass
class Store:
    tool: str
    size: int  # recordings
    path: Path
    answers: list[dict] = field(default_factory=list)  # recorded answers to the queried prompts
    record_s: float = 0.0
    ready_s: float = float("nan")
    target: Target | None = None  # proxies: the replay server

    @property
    def name(self) -> str:
        return f"{LABEL[self.tool]}, {self.size}"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=200, help="distinct prompts replayed (default 200)")
    p.add_argument("--large", type=int, default=2000,
                   help="recordings in the large stores, for scaling; 0 skips them (default 2000)")
    p.add_argument("--passes", type=int, default=2, help="SDK passes over the prompts per run (default 2)")
    p.add_argument("--vcr-passes", type=float, default=1.0,
                   help="SDK passes per run for VCR.py, whose calls are slow (default 1; a fraction means "
                        "that share of the prompts, evenly spread)")
    p.add_argument("--vcr-large-passes", type=float, default=0.2,
                   help="the same on the large cassette, where every call scans it (default 0.2)")
    p.add_argument("--duration", type=float, default=2.5, help="timed seconds per load run (default 2.5)")
    p.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds before each load run (default 0.5)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight in load runs (default 8)")
    p.add_argument("--repeats", type=int, default=3, help="runs per target; the median is reported (default 3)")
    p.add_argument("--targets", default=",".join(TOOLS), help=f"comma-separated subset of {','.join(TOOLS)}")
    p.add_argument("--no-load", action="store_true", help="skip the concurrent load runs (b)")
    # internal: VCR.py roles run in their own processes
    p.add_argument("--role", choices=("vcr-record", "vcr-verify", "vcr-sdk"), help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--bodies", help=argparse.SUPPRESS)
    p.add_argument("--cassette", help=argparse.SUPPRESS)
    p.add_argument("--expected", help=argparse.SUPPRESS)
    p.add_argument("--calls", type=int, default=200, help=argparse.SUPPRESS)
    a = p.parse_args()
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    if bad := set(a.targets) - set(TOOLS):
        p.error(f"unknown target(s) {', '.join(sorted(bad))}; choose from {', '.join(TOOLS)}")
    if a.prompts < 2 or a.passes < 1 or a.repeats < 1 or a.concurrency < 1 or a.duration <= 0:
        p.error("--prompts must be at least 2; --passes, --repeats, --concurrency and --duration positive")
    if a.large and a.large <= a.prompts:
        p.error("--large must be above --prompts (or 0)")
    a.vcr_skipped = ""
    if "vcr" in a.targets and not have_vcr():
        a.targets.remove("vcr")
        a.vcr_skipped = ("VCR.py column skipped: vcrpy is not installed "
                         "(pip install -c constraints.txt -e '.[bench]', or ./dev, installs it)")
    return a


def bench(a: argparse.Namespace, tmp: Path, servers: list[Server]) -> None:
    def start(name: str, cmd: list[str]) -> Server:
        servers.append(Server(name, cmd, tmp))
        return servers[-1]

    def stop(server: Server) -> None:
        server.stop()
        servers.remove(server)

    if a.vcr_skipped:
        print(a.vcr_skipped, flush=True)
    announce = tmp / "announce_addon.py"
    announce.write_text(ANNOUNCE_ADDON)

    # The queried prompts are the small store; in the large one they sit evenly spread.
    sizes = [a.prompts] + ([a.large] if a.large else [])
    every = chat_bodies(a.large or a.prompts)
    picks = [round(i * len(every) / a.prompts) for i in range(a.prompts)]
    queried = [every[i] for i in picks]
    recorded = {a.prompts: queried, a.large: every} if a.large else {a.prompts: queried}
    bodies_file = tmp / "bodies.json"
    bodies_file.write_text(json.dumps(queried))

    print(f"baselines bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; seedtape "
          f"{version('seedtape')}, mitmproxy {version('mitmproxy')}, vcrpy {version('vcrpy')}, "
          f"openai {version('openai')}; {a.prompts} prompts replayed, store sizes {', '.join(map(str, sizes))}",
          flush=True)

    upstream = start("fake upstream", [sys.executable, bench_replay.__file__, "--role", "upstream"])
    def record(tool: str) -> list[Store]:
        done = []
        for n in sizes:
            s = Store(tool, n, tmp / f"{tool}-{n}" if tool == "seedtape" else
                      tmp / (f"flows-{n}.mitm" if tool == "mitmproxy" else f"cassette-{n}.yaml"))
            bodies = recorded[n]
            t0 = time.perf_counter()
            if tool == "vcr":  # sequential, in order: VCR.py scans its cassette in recording order
                f = tmp / f"record-{n}.json"
                f.write_text(json.dumps(bodies))
                answers = run_role("vcr-record", 120 + n * 0.1, url=upstream.origin, bodies=f,
                                   cassette=s.path)["answers"]
            else:
                rec = start(f"{tool} record {n}", seedtape_cmd(
                    "--mode", "record", "--store", str(s.path), "--upstream", upstream.origin, "--quiet")
                    if tool == "seedtape" else mitmdump_cmd(upstream.origin, announce, "-w", str(s.path)))
                answers = record_through(rec, bodies, "recorded" if tool == "seedtape" else "")
                stop(rec)  # mitmdump -w writes every flow as it ends; stopping closes the file
            s.record_s = time.perf_counter() - t0
            s.answers = answers if n == a.prompts else [answers[i] for i in picks]
            done.append(s)
            print(f"  recorded {n:>5} through {LABEL[tool]:<24} {s.record_s:5.1f}s", flush=True)
        return done

    # The tools record side by side (recording is not what is compared here).
    with ThreadPoolExecutor(len(a.targets)) as pool:
        by_tool = dict(zip(a.targets, pool.map(record, a.targets)))
    stores = [s for i in range(len(sizes)) for s in (by_tool[t][i] for t in a.targets)]

    stop(upstream)
    if not port_closed(upstream.origin):
        raise RuntimeError("the fake upstream still answers after it was stopped")
    print("  fake upstream stopped: every replay below is offline", flush=True)

    # VCR.py's calls are slow, more so on the large cassette: it may replay a share of the prompts
    # (--vcr-passes, --vcr-large-passes), spread evenly through the recording order all the same.
    vcr_calls, vcr_bodies, vcr_expected = {}, {}, {}
    for s in stores:
        if s.tool != "vcr":
            continue
        calls = vcr_calls[s.size] = max(2, round((a.vcr_passes if s.size == a.prompts else a.vcr_large_passes)
                                                 * a.prompts))
        share = [round(j * a.prompts / calls) for j in range(calls)] if calls < a.prompts else range(a.prompts)
        vcr_bodies[s.size] = tmp / f"bodies-vcr-{s.size}.json"
        vcr_bodies[s.size].write_text(json.dumps([queried[i] for i in share]))
        vcr_expected[s.size] = tmp / f"expected-vcr-{s.size}.json"
        vcr_expected[s.size].write_text(json.dumps([s.answers[i] for i in share]))

    for s in stores:
        if s.tool == "vcr":
            continue
        t0 = time.perf_counter()
        if s.tool == "seedtape":
            server = start(f"seedtape replay {s.size}", seedtape_cmd(
                "--mode", "replay", "--store", str(s.path), "--upstream", upstream.origin, "--quiet"))
        else:
            server = start(f"mitmdump replay {s.size}", mitmdump_cmd(
                upstream.origin, announce, "--server-replay", str(s.path), "--set", "server_replay_extra=kill",
                "--set", "server_replay_reuse=true", "--set", "connection_strategy=lazy"))
        s.ready_s = time.perf_counter() - t0
        s.target = Target(s.name, server, "seedtape-status=hit" if s.tool == "seedtape" else "")

    # Check before measuring: every prompt to be timed answers with what was recorded, a new one fails.
    for s in stores:
        if s.tool == "vcr":
            v = run_role("vcr-verify", 120 + vcr_calls[s.size] * 1.0, url=upstream.origin,
                         bodies=vcr_bodies[s.size], cassette=s.path, expected=vcr_expected[s.size])
        else:
            v = verify_proxy(s.target.server, queried, s.answers, s.tool == "seedtape")
        print(f"  verified {s.name:<30} {v['checked'] - v['mismatches']}/{v['checked']} replayed as recorded; "
              f"unrecorded prompt: {v['miss']}", flush=True)
        if v["mismatches"] or not v["miss"].startswith("ok"):
            raise RuntimeError(f"{s.name} does not replay what it recorded: {v}")

    # (a), (c): the SDK, sequential; targets interleaved.
    sdk: dict[str, list[dict]] = {s.name: [] for s in stores}
    for i in range(a.repeats):
        for s in stores:
            if s.tool == "vcr":
                r = run_role("vcr-sdk", 120 + vcr_calls[s.size] * 1.0, url=upstream.origin,
                             bodies=vcr_bodies[s.size], cassette=s.path, calls=vcr_calls[s.size])
            else:
                a.sdk_calls = a.passes * a.prompts
                r = run_worker("sdk", s.target, a, bodies_file)
            sdk[s.name].append(r)
            print(f"  SDK run {i + 1}/{a.repeats} {s.name:<30} p50 {r['p50']:7.2f} ms  {r['cps']:6.0f} calls/s",
                  flush=True)

    # (b), (c): concurrent load on the proxies; targets interleaved.
    load: dict[str, list[dict]] = {} if a.no_load else {s.name: [] for s in stores if s.target}
    for i in range(0 if a.no_load else a.repeats):
        for s in stores:
            if s.target:
                r = run_worker("load", s.target, a, bodies_file)
                load[s.name].append(r)
                print(f"  load run {i + 1}/{a.repeats} {s.name:<30} {r['rps']:7.0f} req/s", flush=True)

    report(a, stores, sdk, load, sizes)


# -- report ------------------------------------------------------------------------------------------


def faster(x: float, base: float, higher_is_better: bool) -> str:
    """'2.10x faster' / '1.30x slower' for seedtape's x against a baseline's base."""
    if not x or not base or math.isnan(x) or math.isnan(base):
        return "n/a"
    r = x / base if higher_is_better else base / x
    return f"{r:.2f}x faster" if r >= 1 else f"{1 / r:.2f}x slower"


def report(a: argparse.Namespace, stores: list[Store], sdk: dict, load: dict, sizes: list[int]) -> None:
    def store(tool: str, n: int) -> Store | None:
        return next((s for s in stores if s.tool == tool and s.size == n), None)

    tools = [t for t in TOOLS if any(s.tool == t for s in stores)]
    print(f"\nVersions: seedtape {version('seedtape')}, mitmproxy {version('mitmproxy')}, vcrpy {version('vcrpy')}, "
          f"openai {version('openai')}, Python {sys.version.split()[0]}")
    if a.vcr_skipped:
        print(a.vcr_skipped)

    vcr = (f" (VCR.py: {a.vcr_passes:g} pass{f', on {a.large}: {a.vcr_large_passes:g}' if a.large else ''}; "
           f"a fraction is that share of the prompts, evenly spread)") if "vcr" in a.targets else ""
    print(f"\n(a)+(c) openai SDK, sync client, sequential: {a.passes} pass(es) over {a.prompts} prompts per run{vcr}, "
          f"after {SDK_WARMUP_CALLS} warm-up calls; median run of {a.repeats} by p50; errors: all runs")
    head = f"{'target, recordings':<32} {'calls':>6} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'calls/s':>8}"
    print(head + "\n" + "-" * len(head))
    best = {}
    for s in stores:
        m = best[s.name] = median_run(sdk[s.name], "p50")
        print(f"{s.name:<32} {m['requests']:>6} {sum(r['errors'] for r in sdk[s.name]):>6} {m['p50']:>8.2f} "
              f"{m['p99']:>8.2f} {m['cps']:>8.0f}")

    lbest = {}
    if load:
        print(f"\n(b)+(c) Load on the proxies: {a.concurrency} keep-alive connections, {a.warmup:g}s warm-up + "
              f"{a.duration:g}s timed, cycling over the {a.prompts} prompts, median run of {a.repeats} by req/s")
        head = (f"{'target, recordings':<32} {'requests':>8} {'errors':>6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
                f"{'srv cpu':>7} {'cpu us/req':>10} {'cli cpu':>7}")
        print(head + "\n" + "-" * len(head))
        for s in stores:
            if s.name not in load:
                continue
            runs = load[s.name]
            m = lbest[s.name] = median_run(runs, "rps")
            m["cpu_us"] = sorted(cpu_us(r) or 0 for r in runs)[(len(runs) - 1) // 2]
            print(f"{s.name:<32} {m['requests']:>8} {sum(r['errors'] for r in runs):>6} {m['rps']:>7.0f} "
                  f"{m['p50']:>7.2f} {m['p99']:>7.2f} {fmt_pct(m['srv_cpu']):>7} {m['cpu_us']:>10.0f} "
                  f"{fmt_pct(m['cli_cpu']):>7}")

    print("\n(c)+(d) Storage and start-up: bytes on disk (allocated, as du counts them; apparent size in brackets), "
          "and time to be ready to replay")
    head = f"{'tool':<24} {'recordings':>10} {'on disk':>12} {'(apparent)':>12} {'B/recording':>11} {'ready s':>8}  ready means"
    print(head + "\n" + "-" * len(head))
    disk = {}
    for s in stores:
        alloc, apparent = disk[s.name] = disk_usage(s.path)
        ready = median_run(sdk[s.name], "load_s")["load_s"] if s.tool == "vcr" else s.ready_s
        means = ("use_cassette() parsing the YAML (median run)" if s.tool == "vcr" else
                 "process start to listening (incl. Python start-up)")
        print(f"{LABEL[s.tool]:<24} {s.size:>10} {alloc:>12,} {f'({apparent:,})':>12} {alloc / s.size:>11,.0f} "
              f"{ready:>8.2f}  {means}")

    if len(sizes) > 1:
        n, big = sizes
        print(f"\n(c) Scaling: the figure with {big} recordings / the one with {n} (same {n} prompts; p50 above 1 "
              f"and calls/s, req/s below 1 mean slower with more recordings)")
        for t in tools:
            s, b = store(t, n), store(t, big)
            parts = [f"SDK p50 {ratio(best[b.name]['p50'], best[s.name]['p50']):.2f}x",
                     f"SDK calls/s {ratio(best[b.name]['cps'], best[s.name]['cps']):.2f}x"]
            if s.name in lbest:
                parts.append(f"load req/s {ratio(lbest[b.name]['rps'], lbest[s.name]['rps']):.2f}x")
            parts.append(f"storage {ratio(disk[b.name][0], disk[s.name][0]):.1f}x")
            print(f"  {LABEL[t]:<24} " + ", ".join(parts))

    if "seedtape" not in tools:
        return
    print("\nRatios, seedtape vs each baseline: seedtape's figure / the baseline's (medians of the runs above; "
          "p50, p99, CPU and storage below 1 and calls/s, req/s above 1 favour seedtape)")
    for n in sizes:
        st = store("seedtape", n)
        for t in tools:
            o = store(t, n)
            if t == "seedtape" or o is None:
                continue
            ss, so = best[st.name], best[o.name]
            print(f"  {n:>5} recordings, vs {LABEL[t]}:")
            print(f"      SDK p50      {ratio(ss['p50'], so['p50']):5.2f}x ({ss['p50'] - so['p50']:+.2f} ms; seedtape "
                  f"{faster(ss['p50'], so['p50'], False)})")
            print(f"      SDK p99      {ratio(ss['p99'], so['p99']):5.2f}x ({ss['p99'] - so['p99']:+.2f} ms)")
            print(f"      SDK calls/s  {ratio(ss['cps'], so['cps']):5.2f}x (seedtape {faster(ss['cps'], so['cps'], True)})")
            if st.name in lbest and o.name in lbest:
                ls, lo = lbest[st.name], lbest[o.name]
                print(f"      load req/s   {ratio(ls['rps'], lo['rps']):5.2f}x (seedtape {faster(ls['rps'], lo['rps'], True)})"
                      f"; load p50 {ratio(ls['p50'], lo['p50']):.2f}x; server CPU/request "
                      f"{ratio(ls['cpu_us'], lo['cpu_us']):.2f}x ({ls['cpu_us'] - lo['cpu_us']:+.0f} us)")
            print(f"      storage      {ratio(disk[st.name][0], disk[o.name][0]):5.2f}x on disk, "
                  f"{ratio(disk[st.name][1], disk[o.name][1]):.2f}x apparent ({disk[st.name][0] - disk[o.name][0]:+,} B)")

    errors = [f"{name}: {r['first_error']}" for name, runs in [*sdk.items(), *load.items()] for r in runs
              if r["errors"]]
    if errors:
        print("\nfirst errors seen:\n  " + "\n  ".join(dict.fromkeys(errors)))


def main() -> None:
    a = parse_args()
    if a.role:
        role = {"vcr-record": vcr_record_role, "vcr-verify": vcr_verify_role, "vcr-sdk": vcr_sdk_role}[a.role]
        return print(json.dumps(role(a)))
    run_bench(bench, a, prefix="seedtape-bench-baselines-")


if __name__ == "__main__":
    main()
