"""How much disk a seedtape store takes next to VCR.py's YAML cassettes holding the same recordings.

Issue 15 asks the store to take at most half of what VCR.py's cassettes take. In one run:

1. A local OpenAI-shaped upstream (in this process) answers --n chat completions: a deterministic
   mix of non-streamed JSON answers (pretty-printed with two-space indents, as the API sends them)
   and streamed answers (SSE, one event per token, the usage chunk, `data: [DONE]`), with prose
   answers of 80 to 4,000 characters (log-uniform; English text from Python's own docs, not a
   repeated word list, so compression is not flattered). Requests carry a system prompt and one
   to four user turns. Every byte of an answer is a function of the request's model and messages,
   so both recordings below hold the same answers. With --headers openai (default) the upstream
   sends the headers api.openai.com sends (cloudflare cookies, rate limits, ...); with
   --headers minimal only content-type and x-request-id.
2. The real openai SDK records every request (a) through `seedtape serve --mode record` into an
   LMDB store and (b) through `vcr.use_cassette` (record_mode "once", YAML serializer, the
   authorization header filtered out as every VCR.py guide says), talking to the upstream
   directly; one cassette per --per-cassette requests (default 5: a test's worth, as
   pytest-recording makes one cassette per test), streamed and non-streamed answers in cassettes
   of their own, so that the figures can be given for each kind as well as for all.
3. The entries of (a) are also written into fresh stores, in one transaction each: as
   `TapeEntry.encode` writes them now (ST2: zstd-compressed head and body) and in the ST1 format
   written before (uncompressed), so the gain of compression is visible in the same run; all of
   them, only the non-streamed ones (json) and only the streamed ones (sse).

Sizes: for a store, the pages LMDB uses (page size x (last page number + 1), from env.info() and
env.stat(): the data file can be sparse) and the bytes the data file takes on disk (du); for the
cassettes, their bytes (apparent size) and du. Ratios compare with the cassettes' bytes. Also:
the sum of the encoded entries (without LMDB's pages), a zstd level table (bytes, encode and
decode time per entry, over the same entries), and the cost of TapeEntry.decode and Store.get
per body size (what a replay hit pays).

    ./dev bench store_size    # or: .venv/bin/python bench/bench_store_size.py [--n 1000] [--per-cassette 5]
                              #     [--headers openai|minimal] [--levels 1,3,6,9,12] [--keep DIR]

vcrpy comes with seedtape's bench extra (pip install -c constraints.txt -e '.[bench]'; ./dev installs it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import pydoc_data.topics
import random
import re
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import seedtape
from seedtape.proxy.tapes import entry as entry_module
from seedtape.proxy.tapes import tapefile
from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.store import Store

API_KEY = "sk-bench-not-a-secret"
PROSE = re.sub(r"[ \t]+", " ", "\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)))
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
TOKEN = re.compile(r" ?[A-Za-z]{1,7}| ?\d{1,3}| ?[^\sA-Za-z\d]{1,3}|\s+")


# -- the workload -------------------------------------------------------------------------------


def prose(rng: random.Random, n: int) -> str:
    """About ``n`` characters of English prose, starting and ending at word boundaries."""
    start = PROSE.index(" ", rng.randrange(0, len(PROSE) - n - 200)) + 1
    end = PROSE.find(" ", start + n)
    return PROSE[start:end].strip()


def log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def workload(n: int, stream_share: float, seed: int) -> list[dict]:
    """``n`` distinct chat completion requests (openai SDK keyword arguments)."""
    rng = random.Random(seed)
    systems = [prose(rng, log_uniform(rng, 60, 600)) for _ in range(8)]
    out = []
    for i in range(n):
        turns = rng.choices([1, 2, 3, 4], weights=[60, 25, 10, 5])[0]
        messages = [{"role": "system", "content": rng.choice(systems)}]
        for t in range(turns):
            if t:
                messages.append({"role": "assistant", "content": prose(rng, log_uniform(rng, 80, 1200))})
            messages.append({"role": "user", "content": f"({i}) {prose(rng, log_uniform(rng, 20, 600))}"})
        body: dict = {"model": rng.choice(["gpt-4o-mini"] * 7 + ["gpt-4o"] * 3), "messages": messages}
        if rng.random() < 0.5:
            body["temperature"] = rng.choice([0, 0.2, 0.7, 1])
        if rng.random() < 0.2:
            body["max_tokens"] = rng.choice([256, 512, 1024])
        if rng.random() < stream_share:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        out.append(body)
    return out


# -- the upstream -------------------------------------------------------------------------------


def snapshot(model: str) -> str:
    return {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "gpt-4o": "gpt-4o-2024-08-06"}.get(model, model)


class Answers:
    """Every byte of an answer follows from the request's model and messages (not its seed, which
    seedtape injects and VCR.py does not): both recordings hold the same answers."""

    def __init__(self, headers: str):
        self.headers = headers

    def _rng(self, body: dict) -> random.Random:
        basis = json.dumps([body.get("model"), body.get("messages")], sort_keys=True).encode()
        return random.Random(hashlib.sha256(basis).digest())

    def _base(self, rng: random.Random, body: dict) -> dict:
        return {
            "id": "chatcmpl-" + "".join(rng.choice(ALNUM) for _ in range(29)),
            "created": 1741569952 + rng.randrange(10**7),
            "model": snapshot(str(body.get("model"))),
        }

    def _usage(self, rng: random.Random, text: str) -> dict:
        prompt, completion = rng.randrange(30, 3000), max(1, len(text) // 4)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def headers_for(self, rng: random.Random, content_type: str) -> list[tuple[str, str]]:
        rid = [("x-request-id", "req_" + "".join(rng.choice("0123456789abcdef") for _ in range(32)))]
        if self.headers == "minimal":
            return [("content-type", content_type), *rid]
        ms = rng.randrange(200, 4000)
        cookie = "".join(rng.choice(ALNUM + "._-") for _ in range(150))
        return [
            ("date", "Mon, 10 Mar 2025 01:25:52 GMT"),
            ("content-type", content_type),
            ("access-control-expose-headers", "X-Request-ID"),
            ("openai-organization", "user-" + "".join(rng.choice(ALNUM) for _ in range(24))),
            ("openai-processing-ms", str(ms)),
            ("openai-project", "proj_" + "".join(rng.choice(ALNUM) for _ in range(24))),
            ("openai-version", "2020-10-01"),
            ("x-envoy-upstream-service-time", str(ms + 3)),
            ("x-ratelimit-limit-requests", "10000"),
            ("x-ratelimit-limit-tokens", "30000000"),
            ("x-ratelimit-remaining-requests", "9999"),
            ("x-ratelimit-remaining-tokens", str(29999000 + rng.randrange(1000))),
            ("x-ratelimit-reset-requests", "6ms"),
            ("x-ratelimit-reset-tokens", "0s"),
            *rid,
            ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
            ("cf-cache-status", "DYNAMIC"),
            (
                "set-cookie",
                f"__cf_bm={cookie}; path=/; expires=Mon, 10-Mar-25 01:55:52 GMT; domain=.api.openai.com; "
                "HttpOnly; Secure; SameSite=None",
            ),
            (
                "set-cookie",
                f"_cfuvid={cookie[:40]}-1741569952123-0.0.1.1-604800000; path=/; domain=.api.openai.com; "
                "HttpOnly; Secure; SameSite=None",
            ),
            ("x-content-type-options", "nosniff"),
            ("server", "cloudflare"),
            ("cf-ray", "".join(rng.choice("0123456789abcdef") for _ in range(16)) + "-AMS"),
            ("alt-svc", 'h3=":443"; ma=86400'),
        ]

    def json(self, body: dict) -> tuple[list[tuple[str, str]], bytes]:
        rng = self._rng(body)
        base, text = self._base(rng, body), prose(rng, log_uniform(rng, 80, 4000))
        answer = {
            "id": base["id"],
            "object": "chat.completion",
            "created": base["created"],
            "model": base["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": self._usage(rng, text),
            "service_tier": "default",
            "system_fingerprint": "fp_06737a9306",
        }
        return self.headers_for(rng, "application/json"), json.dumps(answer, indent=2).encode()

    def sse(self, body: dict) -> tuple[list[tuple[str, str]], list[bytes]]:
        rng = self._rng(body)
        base, text = self._base(rng, body), prose(rng, log_uniform(rng, 80, 4000))
        base = {
            "id": base["id"],
            "object": "chat.completion.chunk",
            "created": base["created"],
            "model": base["model"],
            "service_tier": "default",
            "system_fingerprint": "fp_06737a9306",
        }

        def chunk(choices: list, **more) -> bytes:
            obfuscation = "".join(rng.choice(ALNUM) for _ in range(rng.randrange(1, 16)))
            return (
                b"data: "
                + json.dumps({**base, "choices": choices, **more, "obfuscation": obfuscation}, separators=(",", ":")).encode()
                + b"\n\n"
            )

        def delta(d: dict, finish: str | None = None) -> bytes:
            return chunk([{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}])

        events = [delta({"role": "assistant", "content": "", "refusal": None})]
        events += [delta({"content": t}) for t in TOKEN.findall(text)]
        events.append(delta({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(chunk([], usage=self._usage(rng, text)))
        events.append(b"data: [DONE]\n\n")
        return self.headers_for(rng, "text/event-stream; charset=utf-8"), events


class Upstream:
    def __init__(self, answers: Answers):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
                if not self.path.endswith("/chat/completions"):
                    self.send_error(404)
                    return
                self.send_response(200)
                if body.get("stream"):
                    headers, events = answers.sse(body)
                    for k, v in headers:
                        self.send_header(k, v)
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    for e in events:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(e), e))
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    headers, data = answers.json(body)
                    for k, v in headers:
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- recording ----------------------------------------------------------------------------------


def call(client, body: dict) -> None:
    if body.get("stream"):
        for _ in client.chat.completions.create(**body):
            pass
    else:
        client.chat.completions.create(**body)


def sdk_client(base_url: str):
    import openai

    return openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=30.0)


def record_seedtape(store: Path, upstream: str, bodies: list[dict]) -> None:
    with seedtape.serve(mode="record", store=store, upstream=upstream, args=["--quiet"]) as proxy:
        client = sdk_client(proxy.base_url)
        for b in bodies:
            call(client, b)


def record_vcr(directory: Path, upstream: str, bodies: list[dict], per_cassette: int) -> int:
    """Record into cassettes of ``per_cassette`` requests each, streamed and non-streamed ones apart
    (json_NNNN.yaml, sse_NNNN.yaml), so each kind's share can be measured; returns the interactions."""
    import vcr

    recorder = vcr.VCR(record_mode="once", filter_headers=["authorization"], serializer="yaml")
    client = sdk_client(upstream + "/v1")
    recorded = 0
    for kind in ("json", "sse"):
        group = [b for b in bodies if bool(b.get("stream")) == (kind == "sse")]
        for i in range(0, len(group), per_cassette):
            with recorder.use_cassette(str(directory / f"{kind}_{i // per_cassette:04d}.yaml")) as cassette:
                for b in group[i : i + per_cassette]:
                    call(client, b)
            recorded += len(cassette)
    return recorded


# -- measuring ----------------------------------------------------------------------------------


def encode_st1(entry: TapeEntry) -> bytes:
    """The format TapeEntry.encode wrote before compression (ST1: plain head, plain body)."""
    meta = {k: v for k, v in entry.__dict__.items() if k != "body"}
    head = json.dumps(meta, separators=(",", ":")).encode()
    return b"ST1" + struct.pack(">I", len(head)) + head + struct.pack(">I", len(entry.body)) + entry.body


@contextmanager
def encoding(encoder: Callable[[TapeEntry], bytes] | None) -> Iterator[None]:
    """Make Store write entries with ``encoder`` (None: TapeEntry.encode as it is)."""
    original = TapeEntry.encode
    if encoder is not None:
        TapeEntry.encode = encoder  # type: ignore[method-assign]
    try:
        yield
    finally:
        TapeEntry.encode = original  # type: ignore[method-assign]


@contextmanager
def zstd_level(level: int) -> Iterator[None]:
    """TapeEntry.encode at another zstd level (entry.LEVEL; its per-thread compressor is rebuilt)."""
    saved = entry_module.LEVEL
    entry_module.LEVEL = level
    entry_module._contexts.__dict__.pop("compressor", None)
    try:
        yield
    finally:
        entry_module.LEVEL = saved
        entry_module._contexts.__dict__.pop("compressor", None)


def disk_usage(path: Path) -> tuple[int, int]:
    """(allocated bytes as du counts them, apparent bytes) of a file or a directory tree."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_blocks * 512 for p in files), sum(p.stat().st_size for p in files)


def store_size(path: Path) -> dict:
    with Store(path, readonly=True) as st:
        info, stat = st.env.info(), st.env.stat()
    du, apparent = disk_usage(path / "data.mdb")
    return {"used": stat["psize"] * (info["last_pgno"] + 1), "du": du, "apparent": apparent}


def fresh_store(path: Path, entries: list[TapeEntry], encoder: Callable[[TapeEntry], bytes] | None) -> dict:
    with encoding(encoder), Store(path) as st:
        st.merge(entries)
    return store_size(path)


def per_call_us(fn: Callable[[], object], items: int, repeats: int = 5) -> float:
    """Best of ``repeats`` runs of ``fn`` (which handles ``items`` items), in microseconds per item."""
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best / items * 1e6


def size_class(e: TapeEntry) -> str:
    n = len(e.body)
    if e.format == "sse":
        return "sse <= 10 KB" if n <= 10_000 else ("sse 10-40 KB" if n <= 40_000 else "sse > 40 KB")
    return "json <= 1 KB" if n <= 1000 else ("json 1-5 KB" if n <= 5000 else "json > 5 KB")


def kib(n: float) -> str:
    return f"{n / 1024:,.0f} KiB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="chat completions to record (default 1000)")
    p.add_argument("--stream-share", type=float, default=0.4, help="share of streamed answers (default 0.4)")
    p.add_argument("--per-cassette", type=int, default=5, help="requests per VCR.py cassette (default 5)")
    p.add_argument("--headers", choices=("openai", "minimal"), default="openai", help="response headers the upstream sends")
    p.add_argument("--levels", default="1,3,6,9,12", help="zstd levels for the level table (default 1,3,6,9,12)")
    p.add_argument("--repeats", type=int, default=9, help="timed runs per figure; the best is shown (default 9)")
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--keep", type=Path, help="write the stores and cassettes here (kept) instead of a temporary directory")
    a = p.parse_args()
    try:
        import vcr  # noqa: F401
    except ImportError:
        sys.exit("vcrpy is not installed: pip install -c constraints.txt -e '.[bench]' (./dev installs it)")

    if a.keep and a.keep.exists() and any(a.keep.iterdir()):
        sys.exit(f"--keep {a.keep}: the directory is not empty; name a new one")
    with tempfile.TemporaryDirectory(prefix="seedtape-size-") as tmp:
        out = a.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        bench(a, out)


def bench(a: argparse.Namespace, out: Path) -> None:
    bodies = workload(a.n, a.stream_share, a.seed)
    upstream = Upstream(Answers(a.headers))
    print(
        f"Recording {a.n} chat completions ({sum(bool(b.get('stream')) for b in bodies)} streamed; "
        f"--headers {a.headers}) through seedtape and through VCR.py ...",
        flush=True,
    )
    try:
        t = time.perf_counter()
        record_seedtape(out / "recorded", upstream.url, bodies)
        seedtape_s = time.perf_counter() - t
        (out / "cassettes").mkdir()
        t = time.perf_counter()
        interactions = record_vcr(out / "cassettes", upstream.url, bodies, a.per_cassette)
        vcr_s = time.perf_counter() - t
    finally:
        upstream.stop()
    with Store(out / "recorded", readonly=True) as st:
        entries = list(st.entries())
    if len(entries) != a.n or interactions != a.n:
        sys.exit(f"recorded {len(entries)} entries and {interactions} VCR.py interactions for {a.n} requests")
    print(f"  recorded in {seedtape_s:.1f} s (seedtape) and {vcr_s:.1f} s (VCR.py)\n")

    kinds = {"all": entries, "json": [e for e in entries if e.format == "json"], "sse": [e for e in entries if e.format == "sse"]}
    cassettes = {k: [p for p in (out / "cassettes").glob("*.yaml") if k == "all" or p.name.startswith(k)] for k in kinds}
    vcr_bytes = {k: sum(p.stat().st_size for p in files) for k, files in cassettes.items()}
    vcr_du = {k: sum(p.stat().st_blocks * 512 for p in files) for k, files in cassettes.items()}
    st2 = {k: fresh_store(out / f"st2-{k}", group, None) for k, group in kinds.items() if group}
    st1 = {k: fresh_store(out / f"st1-{k}", group, encode_st1) for k, group in kinds.items() if group}
    recorded = store_size(out / "recorded")
    with Store(out / "recorded", readonly=True) as st:
        tapefile.export(st, out / "tapes")
    exp_du, exp_bytes = disk_usage(out / "tapes")
    shown = [k for k in kinds if kinds[k]]

    print("Storage for the same recordings (KiB; in brackets: / the VCR.py cassettes of the same answers)")
    print(f"  {'':46}" + "".join(f"{f'{k} ({len(kinds[k])})':>20}" for k in shown))

    def row(label: str, sizes: dict[str, int], ratio: bool = True) -> None:
        cells = "".join(
            f"{f'{sizes[k] / 1024:,.0f}' + (f' ({sizes[k] / vcr_bytes[k]:.2f}x)' if ratio else ''):>20}"
            if k in sizes
            else f"{'':>20}"
            for k in shown
        )
        print(f"  {label:46}{cells}")

    row(f"VCR.py cassettes, YAML ({a.per_cassette} a cassette)", vcr_bytes, ratio=False)
    row("  same, du", vcr_du, ratio=False)
    row("seedtape store, ST2 (compressed)", {k: v["used"] for k, v in st2.items()})
    row("  same, du of data.mdb", {k: v["du"] for k, v in st2.items()}, ratio=False)
    row("seedtape store, ST1 (the format before)", {k: v["used"] for k, v in st1.items()})
    row("  encoded entries alone, ST2 (no LMDB pages)", {k: sum(len(e.encode()) for e in g) for k, g in kinds.items() if g})
    row("  encoded entries alone, ST1", {k: sum(len(encode_st1(e)) for e in g) for k, g in kinds.items() if g})
    row("  response bodies alone", {k: sum(len(e.body) for e in g) for k, g in kinds.items() if g})
    row("seedtape store as the proxy recorded it (ST2)", {"all": recorded["used"]})
    row("  same, du of data.mdb", {"all": recorded["du"]}, ratio=False)
    row("seedtape export (plain text tapes, for git)", {"all": exp_bytes})
    row("  same, du", {"all": exp_du}, ratio=False)
    print("  (a store: the pages LMDB uses, page size x (last page number + 1), written in one transaction;")
    print("   the proxy's store was written one transaction per recording)")
    worst = max(st2[k]["used"] / vcr_bytes[k] for k in st2)
    print(
        f"  => the compressed store takes {st2['all']['used'] / vcr_bytes['all']:.2f}x the cassettes "
        f"(at most {worst:.2f}x for one kind of answer; goal <= 0.5x: {'met' if worst <= 0.5 else 'NOT met'}); "
        f"{st2['all']['used'] / st1['all']['used']:.2f}x the ST1 store\n"
    )

    st1_total = sum(len(encode_st1(e)) for e in entries)
    levels = [int(x) for x in a.levels.split(",") if x]
    print(f"zstd level (TapeEntry.encode of the same {a.n} entries, microseconds per entry; decode: TapeEntry.decode)")
    print(f"  {'level':>5} {'encoded KiB':>12} {'vs ST1':>7} {'encode us':>10} {'decode us':>10}")
    for level in levels:
        with zstd_level(level):
            encoded = [e.encode() for e in entries]
            enc = per_call_us(lambda: [e.encode() for e in entries], len(entries), 3)
            dec = per_call_us(lambda enc_=encoded: [TapeEntry.decode(d) for d in enc_], len(entries), 3)
        total = sum(map(len, encoded))
        mark = "  <- used" if level == entry_module.LEVEL else ""
        print(f"  {level:>5} {total / 1024:>12,.0f} {total / st1_total:>6.3f}x {enc:>10.1f} {dec:>10.1f}{mark}")
    st1_enc = per_call_us(lambda: [encode_st1(e) for e in entries], len(entries), 3)
    st1_dec = per_call_us(lambda: [TapeEntry.decode(encode_st1(e)) for e in entries], len(entries), 3) - st1_enc
    print(f"  {'ST1':>5} {st1_total / 1024:>12,.0f} {1:>6.3f}x {st1_enc:>10.1f} {st1_dec:>10.1f}\n")

    print(f"What a replay hit pays for the entry, by body size (microseconds per entry, best of {a.repeats} runs)")
    print(
        f"  {'bodies':14} {'count':>5} {'mean body':>10} {'stored ST2':>10} {'decode ST1':>11} {'decode ST2':>11} "
        f"{'Store.get ST1':>14} {'Store.get ST2':>14}"
    )
    classes: dict[str, list[TapeEntry]] = {}
    for e in entries:
        classes.setdefault(size_class(e), []).append(e)
    with Store(out / "st1-all", readonly=True) as s1, Store(out / "st2-all", readonly=True) as s2:
        for name in sorted(classes, key=lambda c: (c[:4], min(len(e.body) for e in classes[c]))):
            group = classes[name]
            old, new = [encode_st1(e) for e in group], [e.encode() for e in group]
            keys = [(e.key, e.fingerprint) for e in group]
            d1 = per_call_us(lambda old_=old: [TapeEntry.decode(d) for d in old_], len(group), a.repeats)
            d2 = per_call_us(lambda new_=new: [TapeEntry.decode(d) for d in new_], len(group), a.repeats)
            g1 = per_call_us(lambda keys_=keys: [s1.get(k, fp) for k, fp in keys_], len(group), a.repeats)
            g2 = per_call_us(lambda keys_=keys: [s2.get(k, fp) for k, fp in keys_], len(group), a.repeats)
            mean = statistics.mean(len(e.body) for e in group)
            stored = statistics.mean(map(len, new))
            print(f"  {name:14} {len(group):>5} {mean:>9,.0f}B {stored:>9,.0f}B {d1:>11.1f} {d2:>11.1f} {g1:>14.1f} {g2:>14.1f}")
    if a.keep:
        print(
            f"\nKept in {out}: recorded/ (the proxy's store), st2-*/ and st1-*/ (stores rewritten per kind), "
            "cassettes/ (VCR.py), tapes/ (seedtape export)"
        )


if __name__ == "__main__":
    main()
