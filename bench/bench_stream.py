"""Streaming latency through seedtape: time to first chunk and total time of streamed chat completions.

What it measures, in one run, for `"stream": true` chat completions (with
`stream_options.include_usage`) from a fake upstream that waits --chunk-delay between events
(default 20 ms; 16 events: role, 12 words, finish, usage, [DONE]):

- the fake upstream (tests/fake_upstream.py) directly;
- `seedtape serve --mode record` in front of it: every request is live and taped;
- `seedtape serve --mode replay` of those recordings, sent at once (the default) and with
  `--replay-pace 1` (recorded gaps, real time).

Per request:
  TTFC   from writing the request to reading the first SSE event with a non-empty
         `delta.content` (the role event before it carries `"content": ""` and does not count);
  total  from writing the request to reading the end of the response body (the fake upstream
         waits --chunk-delay after [DONE] too, before it ends the body);
  gap    the median time between consecutive content events as they arrive;
  reconn timed requests that had to open a new connection because the server closed the last one
         (0 when keep-alive holds).

A proxy that buffers a live stream shows TTFC close to total (TTFC/total near 1) and gaps near 0;
a proxy that streams keeps TTFC near the direct one and gaps near --chunk-delay. Replay without
pacing sends the recorded body at once, so TTFC ~ total there is expected.

Servers and the load generator are separate processes; traffic stays on 127.0.0.1. Each run sends
--requests streamed requests over --concurrency keep-alive connections after a short warm-up;
runs are repeated (--repeats, targets interleaved) and every figure is the median over runs.

    .venv/bin/python bench/bench_stream.py [--requests 48] [--concurrency 4] [--chunk-delay 0.02] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_replay import API_KEY, MODEL, ROOT, Server, percentiles, ratio, run_bench, seedtape_cmd

CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)
CHUNKED = re.compile(rb"\r\ntransfer-encoding:[ \t]*chunked", re.I)
CONNECTION_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.I)
STATUS_HEADER = re.compile(rb"\r\nseedtape-status:[ \t]*([^\r]*)", re.I)


def stream_bodies(n: int) -> list[dict]:
    return [{"model": MODEL, "stream": True, "stream_options": {"include_usage": True},
             "messages": [{"role": "user", "content": f"Streaming benchmark prompt number {i}: say something."}]}
            for i in range(n)]


# -- the load generator (python bench_stream.py --role load ...) ----------------------------------


class Events:
    """Splits SSE bytes into events as they arrive and notes when content events are read."""

    def __init__(self, t0: float):
        self.t0, self.buf = t0, b""
        self.events = 0
        self.content_at: list[float] = []  # seconds since t0 at which each content event was read
        self.done = False

    def feed(self, data: bytes) -> None:
        now = time.perf_counter() - self.t0
        self.buf += data
        while (cut := self.buf.find(b"\n\n")) >= 0:
            event, self.buf = self.buf[:cut], self.buf[cut + 2:]
            payload = b"".join(ln[5:].lstrip() for ln in event.split(b"\n") if ln.startswith(b"data:"))
            if not payload:
                continue
            self.events += 1
            if payload == b"[DONE]":
                self.done = True
                continue
            chunk = json.loads(payload)
            if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                self.content_at.append(now)


async def read_body(reader: asyncio.StreamReader, head: bytes, sink: Events) -> bool:
    """Read the body as it arrives, chunked, by length or to EOF; True if the connection can be reused."""
    if CHUNKED.search(head):
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers expected
                return True
            sink.feed(await reader.readexactly(size))
            await reader.readexactly(2)
    if length := CONTENT_LENGTH.search(head):
        left = int(length.group(1))
        while left:
            data = await reader.read(min(left, 65536))
            if not data:
                raise EOFError("connection closed mid-body")
            left -= len(data)
            sink.feed(data)
        return True
    while data := await reader.read(65536):
        sink.feed(data)
    return False


async def load_worker(a: argparse.Namespace) -> dict:
    """--requests streamed requests over --concurrency keep-alive connections, --warmup more first."""
    url = urlsplit(a.url)
    requests = [b"POST /v1/chat/completions HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
                b"accept: text/event-stream\r\nauthorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s"
                % (url.netloc.encode(), API_KEY.encode(), len(body), body)
                for body in (json.dumps(b).encode() for b in json.loads(Path(a.bodies).read_text()))]
    expect = a.expect.encode()
    queue = list(range(a.warmup + a.requests))
    results: list[dict] = []
    state = {"errors": 0, "error": "", "statuses": {}, "connects": 0}

    async def worker() -> None:
        reader = writer = None
        opened = 0
        while queue:
            n = queue.pop(0)
            t0 = time.perf_counter()
            sink = Events(t0)
            try:
                async with asyncio.timeout(30):
                    if writer is None:
                        reader, writer = await asyncio.open_connection(url.hostname, url.port)
                        opened += 1
                        state["connects"] += opened > 1 and n >= a.warmup
                    writer.write(requests[n % len(requests)])
                    head = await reader.readuntil(b"\r\n\r\n")
                    reuse = await read_body(reader, head, sink)
                total = time.perf_counter() - t0
                status = (m.group(1) if (m := STATUS_HEADER.search(head)) else b"-").decode()
                state["statuses"][status] = state["statuses"].get(status, 0) + 1
                ok = head.startswith(b"HTTP/1.1 200 ") and sink.done and bool(sink.content_at) \
                    and (not expect or status.encode().startswith(expect))
                why = f"{head.split(b'\r\n', 1)[0].decode(errors='replace')} status={status} done={sink.done} " \
                      f"content events={len(sink.content_at)}"
                if not reuse or CONNECTION_CLOSE.search(head):
                    writer.close()
                    writer = None
            except (OSError, EOFError, TimeoutError, ValueError, asyncio.LimitOverrunError,
                    asyncio.IncompleteReadError) as e:
                ok, why = False, f"{type(e).__name__}: {e}"
                if writer is not None:
                    writer.close()
                    writer = None
            if n < a.warmup:
                continue
            if not ok:
                state["errors"] += 1
                state["error"] = state["error"] or why
                continue
            at = sink.content_at
            gaps = [y - x for x, y in itertools.pairwise(at)]
            results.append({"ttfc": at[0], "total": total, "events": sink.events,
                            "gap": statistics.median(gaps) if gaps else 0.0})
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(a.concurrency)))
    elapsed = time.perf_counter() - started
    ttfc50, ttfc99 = percentiles([r["ttfc"] for r in results])
    tot50, tot99 = percentiles([r["total"] for r in results])
    return {"requests": len(results), "errors": state["errors"], "first_error": state["error"],
            "ttfc50": ttfc50, "ttfc99": ttfc99, "total50": tot50, "total99": tot99,
            "ratio": statistics.median(r["ttfc"] / r["total"] for r in results) if results else float("nan"),
            "gap50": statistics.median(r["gap"] for r in results) * 1000 if results else float("nan"),
            "events": statistics.median(r["events"] for r in results) if results else 0,
            "statuses": state["statuses"], "connects": state["connects"], "elapsed": elapsed}


# -- servers and runs ------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    server: Server
    expect: str = ""  # the seedtape-status every answer must start with
    live: bool = False  # a live stream through seedtape: buffering would be a bug


def run_load(target: Target, a: argparse.Namespace, bodies_file: Path, requests: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--role", "load", "--url", target.server.origin, "--bodies", str(bodies_file),
           "--concurrency", str(a.concurrency), "--requests", str(requests or a.requests),
           "--warmup", str(a.warmup), "--expect", target.expect]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                         timeout=60 + ((requests or a.requests) + a.warmup) * a.chunk_delay * 20)
    if out.returncode != 0:
        raise RuntimeError(f"load worker against {target.name} failed:\n{out.stderr[-3000:]}\n{target.server.tail()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report(targets: list[Target], runs: dict[str, list[dict]], a: argparse.Namespace) -> None:
    print(f"\nStreamed chat completions, chunk delay {a.chunk_delay * 1000:g} ms: {a.requests} timed requests a run "
          f"over {a.concurrency} keep-alive connections, {a.warmup} warm-up;\nmedian over {a.repeats} runs of each "
          f"figure (requests: per run; errors: all runs; TTFC/total: median of the per-request ratio;\n"
          f"gap: median time between content events; events: SSE events a response;\n"
          f"reconn: timed requests that needed a new connection as the server closed the last one)")
    head = f"{'target':<30} {'requests':>8} {'errors':>6} {'TTFC p50':>8} {'TTFC p99':>8} {'total p50':>9} " \
           f"{'total p99':>9} {'TTFC/total':>10} {'gap p50':>7} {'events':>6} {'reconn':>6}  {'TTFC p50 range':>14}"
    print(head + "\n" + f"{'':<30} {'':>8} {'':>6} {'ms':>8} {'ms':>8} {'ms':>9} {'ms':>9} {'':>10} {'ms':>7}"
          + "\n" + "-" * len(head))
    for t in targets:
        rs = runs[t.name]
        lo, hi = min(r["ttfc50"] for r in rs), max(r["ttfc50"] for r in rs)
        print(f"{t.name:<30} {med(rs, 'requests'):>8.0f} {sum(r['errors'] for r in rs):>6} {med(rs, 'ttfc50'):>8.1f} "
              f"{med(rs, 'ttfc99'):>8.1f} {med(rs, 'total50'):>9.1f} {med(rs, 'total99'):>9.1f} "
              f"{med(rs, 'ratio'):>10.2f} {med(rs, 'gap50'):>7.1f} {med(rs, 'events'):>6.0f} "
              f"{med(rs, 'connects'):>6.0f}  {f'{lo:.1f}..{hi:.1f}':>14}")

    statuses = {t.name: {} for t in targets}
    for t in targets:
        for r in runs[t.name]:
            for k, v in r["statuses"].items():
                statuses[t.name][k] = statuses[t.name].get(k, 0) + v
    print("\nseedtape-status seen (warm-up included):")
    for t in targets:
        if t.expect:
            print(f"  {t.name:<30} " + ", ".join(f"{k} x{v}" for k, v in statuses[t.name].items()))
    errors = [f"{t.name}: {r['first_error']}" for t in targets for r in runs[t.name] if r["errors"]]
    if errors:
        print("\nfirst errors seen:\n  " + "\n  ".join(dict.fromkeys(errors)))

    direct = next((t for t in targets if t.name.startswith("fake upstream")), None)
    if direct is not None:
        d = runs[direct.name]
        print(f"\nRatios vs {direct.name}: TTFC p50, total p50 (differences in ms)")
        for t in targets:
            if t is direct:
                continue
            s = runs[t.name]
            print(f"  {t.name:<30} {ratio(med(s, 'ttfc50'), med(d, 'ttfc50')):>5.2f}x TTFC "
                  f"({med(s, 'ttfc50') - med(d, 'ttfc50'):+6.1f} ms)  "
                  f"{ratio(med(s, 'total50'), med(d, 'total50')):>5.2f}x total "
                  f"({med(s, 'total50') - med(d, 'total50'):+6.1f} ms)")
    for t in targets:
        if t.live:
            r, g = med(runs[t.name], "ratio"), med(runs[t.name], "gap50")
            buffered = r > 0.5 or g < a.chunk_delay * 250  # events bunched: under a quarter of the upstream gap
            verdict = "BUFFERED (TTFC close to total)" if buffered else "streamed event by event"
            print(f"\n{t.name}: TTFC/total {r:.2f}, gap p50 {g:.1f} ms vs {a.chunk_delay * 1000:g} ms upstream: "
                  f"{verdict}")


def bench(a: argparse.Namespace, tmp: Path, servers: list[Server]) -> None:
    def start(name: str, cmd: list[str]) -> Server:
        servers.append(Server(name, cmd, tmp))
        return servers[-1]

    bodies = stream_bodies(a.prompts)
    bodies_file = tmp / "bodies.json"
    bodies_file.write_text(json.dumps(bodies))
    store = str(tmp / "store")

    upstream = start("fake upstream", [sys.executable, str(ROOT / "tests" / "fake_upstream.py"), "--port", "0",
                                       "--chunk-delay", str(a.chunk_delay)])
    live = Target("seedtape record (live)", start("seedtape record", seedtape_cmd(
        "--mode", "record", "--store", store, "--upstream", upstream.origin, "--quiet")), "recording", live=True)
    # Tape every prompt once before the replay servers need them (also checks the live path works).
    first = run_load(live, argparse.Namespace(**{**vars(a), "warmup": 0}), bodies_file, requests=len(bodies))
    if first["errors"] or first["requests"] != len(bodies):
        raise RuntimeError(f"recording the streams failed: {first['first_error']}\n{live.server.tail()}")
    replay = ["--mode", "replay", "--store", store, "--upstream", upstream.origin, "--quiet"]
    targets = [
        Target("fake upstream, direct", upstream),
        live,
        Target("seedtape replay", start("seedtape replay", seedtape_cmd(*replay)), "hit"),
        Target("seedtape replay, pace 1", start("seedtape replay paced", seedtape_cmd(*replay, "--replay-pace", "1")),
               "hit"),
    ]
    print(f"seedtape stream bench: Python {sys.version.split()[0]}, {len(bodies)} recorded streams, "
          f"chunk delay {a.chunk_delay * 1000:g} ms, targets: {', '.join(t.name for t in targets)}", flush=True)
    runs: dict[str, list[dict]] = {t.name: [] for t in targets}
    for i in range(a.repeats):  # interleaved, so slow drift of the machine hits every target alike
        for t in targets:
            r = run_load(t, a, bodies_file)
            runs[t.name].append(r)
            print(f"  run {i + 1}/{a.repeats} {t.name:<30} TTFC p50 {r['ttfc50']:6.1f} ms  total p50 "
                  f"{r['total50']:6.1f} ms  errors {r['errors']}", flush=True)
    report(targets, runs, a)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=48, help="timed streamed requests per run (default 48)")
    p.add_argument("--warmup", type=int, default=4, help="untimed requests before each run (default 4)")
    p.add_argument("--concurrency", type=int, default=4, help="streams in flight (default 4)")
    p.add_argument("--chunk-delay", type=float, default=0.02, help="upstream seconds between events (default 0.02)")
    p.add_argument("--repeats", type=int, default=3, help="runs per target; medians are reported (default 3)")
    p.add_argument("--prompts", type=int, default=16, help="distinct recorded requests cycled through (default 16)")
    # internal: the load generator runs in its own process
    p.add_argument("--role", choices=("load",), help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--bodies", help=argparse.SUPPRESS)
    p.add_argument("--expect", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.requests < 2 or a.concurrency < 1 or a.repeats < 1 or a.warmup < 0 or a.chunk_delay < 0 or a.prompts < 1:
        p.error("--requests must be at least 2, --concurrency, --repeats and --prompts positive, "
                "--warmup and --chunk-delay not negative")
    return a


def main() -> None:
    a = parse_args()
    if a.role == "load":
        return print(json.dumps(asyncio.run(load_worker(a))))
    run_bench(bench, a, "seedtape-bench-stream-")


if __name__ == "__main__":
    main()
