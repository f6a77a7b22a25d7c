"""How fast is an explained replay miss with a large store, and does it slow replay hits?

Builds a store of N (default 100,000) recorded chat completions with varied
prompts, models and temperatures, then against `seedtape serve --mode replay`:

- times the proxy's miss index build (the first refresh, logged at start-up in
  replay mode) by timing the first miss after start;
- times misses (each one a near variant of a recorded request, so the
  explanation has real work: scoring 100k candidates and diffing the top 3);
- times hits before any miss and after the misses, and hits on a store of 100
  entries, so "hits do not get slower" is a figure, not a claim.

Latencies are measured per request from a separate client process (sequential
httpx keep-alive calls to 127.0.0.1); medians and p99 are printed, with ratios.

    ./dev bench explain [--entries 100000] [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seedtape.api import Proxy
from seedtape.proxy.key.canonical import canonicalize
from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.store import Store

WORDS = ["weather", "paris", "tomorrow", "summary", "article", "cats", "dogs", "pasta", "recipe", "python", "code", "review", "bug", "fix", "plan", "trip", "budget", "email", "draft", "poem", "sonnet", "story", "robot", "ocean", "mountain", "history", "science", "physics", "chemistry"]
MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1")


def request_body(i: int) -> dict:
    rnd = random.Random(i)
    text = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(6, 30))) + f" #{i}"
    return {"model": rnd.choice(MODELS), "temperature": rnd.choice((0, 0.2, 0.7, 1)), "seed": 1234,
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]}


def build_store(path: str, n: int) -> None:
    resp = json.dumps({"id": "x", "object": "chat.completion", "system_fingerprint": "fp_b", "model": "gpt-4o",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}).encode()
    with Store(path) as st:
        batch = []
        for i in range(n):
            c = canonicalize("POST", "/v1/chat/completions", "", request_body(i))
            batch.append(TapeEntry(key=c.key, fingerprint="fp_b", endpoint="chat.completions", request=c.to_json(),
                                   status=200, headers=[["content-type", "application/json"]], body=resp,
                                   model=c.body["model"], recorded_at=1_700_000_000.0 + i, first_recorded_at=1_700_000_000.0 + i))
            if len(batch) == 5000:
                st.merge(batch)
                batch = []
        if batch:
            st.merge(batch)


def timed(client: httpx.Client, url: str, bodies: list[dict], expect: int) -> list[float]:
    out = []
    for b in bodies:
        t0 = time.perf_counter()
        r = client.post(url, json=b)
        out.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == expect, (r.status_code, r.text[:300])
    return out


def near_miss(i: int) -> dict:
    b = request_body(i)
    b["temperature"] = 0.35  # never recorded: the nearest is request i
    return b


def row(name: str, xs: list[float]) -> tuple[str, float]:
    xs = sorted(xs)
    p50, p99 = statistics.median(xs), xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    print(f"{name:<44} {len(xs):>6} {p50:>9.2f} {p99:>9.2f}")
    return name, p50


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=300)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="seedtape-bench-") as tmp:
        big, small = f"{tmp}/big", f"{tmp}/small"
        t0 = time.perf_counter()
        build_store(big, a.entries)
        print(f"built a store of {a.entries} entries in {time.perf_counter() - t0:.1f}s")
        build_store(small, 100)
        hits = [request_body(i) for i in random.Random(1).sample(range(a.entries), a.requests)]
        small_hits = [request_body(i % 100) for i in range(a.requests)]
        misses = [near_miss(i) for i in random.Random(2).sample(range(a.entries), a.requests)]
        print(f"{'':<44} {'n':>6} {'p50 ms':>9} {'p99 ms':>9}")
        with Proxy(["--mode", "replay", "--store", small, "--quiet"]) as p, httpx.Client() as c:
            timed(c, p.base_url + "/chat/completions", small_hits[:30], 200)
            _, small_p50 = row("hit, 100-entry store", timed(c, p.base_url + "/chat/completions", small_hits, 200))
        with Proxy(["--mode", "replay", "--store", big, "--quiet"]) as p, httpx.Client(timeout=120) as c:
            url = p.base_url + "/chat/completions"
            timed(c, url, hits[:30], 200)
            _, before = row(f"hit, {a.entries}-entry store, before any miss", timed(c, url, hits, 200))
            first = timed(c, url, misses[:1], 404)
            row("first miss (waits for the index build)", first)
            r = c.post(url, json=misses[0])
            print("   example:", r.headers["seedtape-miss"][:160])
            _, miss_p50 = row(f"explained miss, {a.entries}-entry store", timed(c, url, misses, 404))
            _, after = row(f"hit, {a.entries}-entry store, after misses", timed(c, url, hits, 200))
        print(f"\nhit p50 after/before misses: {after / before:.2f}x; "
              f"hit p50 {a.entries} vs 100 entries: {before / small_p50:.2f}x; "
              f"explained miss p50 / hit p50: {miss_p50 / before:.1f}x")


if __name__ == "__main__":
    main()
