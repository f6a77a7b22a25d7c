"""The drift audit: re-send stored requests live and measure how far the answers moved.

For each recorded request it gathers ``repeats`` live samples (concurrently,
retrying 429 and 5xx with backoff), compares every sample with the recording
(verdict and similarity, see divergence.py) and the samples with each other,
and stores each sample as an audit event. Recordings are never changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from urllib.parse import urlencode

import httpx
import numpy as np

from seedtape.proxy import dialects
from seedtape.proxy.audit import divergence, embedder, events
from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.entryfilter import EntryFilter, newest_per_key
from seedtape.proxy.tapes.store import Store

RETRY_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))


@dataclass
class Sample:
    fingerprint: str = ""
    verdict: str = ""
    similarity: float | None = None
    embedding_distance: float | None = None
    first_difference: dict | None = None
    output: list | None = None
    error: str = ""
    attempts: int = 0
    time: float = 0.0


@dataclass
class RequestReport:
    key: str
    model: str
    endpoint: str
    prompt: str
    recorded_fingerprint: str
    recorded_at: float
    samples: list[Sample] = field(default_factory=list)
    fingerprints_seen: list[str] = field(default_factory=list)
    verdicts: dict[str, int] = field(default_factory=dict)
    identical: int = 0  # samples whose output equals the recording's
    identical_share: float | None = None
    mean_similarity_to_recording: float | None = None
    mean_pairwise_similarity: float | None = None
    mean_embedding_distance_to_recording: float | None = None
    mean_pairwise_embedding_distance: float | None = None
    errors: int = 0
    skipped: str = ""  # why this recording could not be audited at all (it was reported, the audit went on)
    recorded_output: list | None = None  # what the samples were compared with (the HTML report shows it)


@dataclass
class AuditReport:
    upstream: str
    repeats: int
    started: float
    finished: float = 0.0
    requests: list[RequestReport] = field(default_factory=list)
    samples: int = 0
    errors: int = 0
    verdict_shares: dict[str, float] = field(default_factory=dict)
    identical_share: float | None = None
    mean_similarity_to_recording: float | None = None
    embedding_model: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def _mean(xs: list[float]) -> float | None:
    return round(float(np.mean(xs)), 6) if xs else None


def _similarity(s: Sample) -> float:
    """A good sample's similarity to the recording (a sample without an error has been compared)."""
    assert s.similarity is not None, "a sample without an error has a similarity"
    return s.similarity


def _output(s: Sample) -> list:
    """A good sample's output (a sample without an error has been compared)."""
    assert s.output is not None, "a sample without an error has an output"
    return s.output


def request_url(upstream: str, entry: TapeEntry, extra_query: Sequence[tuple[str, str]] = ()) -> str:
    """The recorded request's URL on ``upstream``; ``extra_query`` sets parameters the key left out (api-version)."""
    req = entry.request
    names = {n for n, _ in extra_query}
    pairs = [(str(k), str(v)) for k, v in req.get("query") or [] if str(k) not in names]  # stored as [name, value] lists
    query = urlencode(pairs + list(extra_query))
    return upstream.rstrip("/") + req["path"] + (f"?{query}" if query else "")


def credential_headers(entry: TapeEntry, api_key: str) -> dict[str, str]:
    """How the recorded API takes a key: Azure OpenAI's /openai/... paths an ``api-key`` header, others a Bearer token."""
    if not api_key:
        return {}
    if str(entry.request.get("path", "")).startswith("/openai/"):
        return {"api-key": api_key}
    return {"authorization": f"Bearer {api_key}"}


def request_body(entry: TapeEntry) -> dict:
    """The body to re-send: the canonical body (seed included), asked for without streaming."""
    body = dict(entry.request.get("body") or {})
    body.pop("stream", None)
    body.pop("stream_options", None)
    return body


async def _sample(
    client: httpx.AsyncClient, url: str, body: dict, auth: dict, max_retries: int
) -> tuple[httpx.Response | None, str, int]:
    """POST with retries on 408/409/429/5xx and connection errors; exponential backoff, Retry-After honoured."""
    delay, last = 0.5, ""
    r: httpx.Response | None
    for attempt in range(1, max_retries + 2):
        try:
            r = await client.post(url, json=body, headers={"content-type": "application/json", **auth})
        except httpx.HTTPError as e:
            r, last = None, f"{url}: {type(e).__name__}: {e}"  # name the upstream: the likeliest mistake
        else:
            if r.status_code not in RETRY_STATUSES:
                return r, "", attempt
            last = f"upstream answered {r.status_code}"
        if attempt > max_retries:
            break
        wait = delay
        if r is not None and (ra := r.headers.get("retry-after")):
            with contextlib.suppress(ValueError):
                wait = min(float(ra), 30.0)
        await asyncio.sleep(wait)
        delay *= 2
    return None, last, max_retries + 1


async def run(
    store: Store,
    entries: list[TapeEntry],
    upstream: str,
    *,
    repeats: int = 3,
    concurrency: int = 4,
    api_key: str = "",
    embedding_model: str | None = None,
    max_retries: int = 4,
    timeout: float = 120.0,
    progress: Callable[[int], None] = lambda n: None,
    prompt_of: Callable[[dict], str] = lambda req: "",
    extra_query: Sequence[tuple[str, str]] = (),
) -> AuditReport:
    report = AuditReport(upstream=upstream, repeats=repeats, started=time.time(), embedding_model=embedding_model)
    sem = asyncio.Semaphore(max(1, concurrency))
    async with httpx.AsyncClient(timeout=timeout) as client:

        async def one(entry: TapeEntry, recorded: list[dict]) -> Sample:
            async with sem:
                r, err, attempts = await _sample(
                    client,
                    request_url(upstream, entry, extra_query),
                    request_body(entry),
                    credential_headers(entry, api_key),
                    max_retries,
                )
            s = Sample(attempts=attempts, time=time.time())
            try:
                if r is None:
                    s.error = err or "no live answer"  # err says why (max_retries >= 0: always)
                elif not 200 <= r.status_code < 300:
                    s.error = err or f"upstream answered {r.status_code}: {r.text[:200]}"
                else:
                    dialect = dialects.named(entry.endpoint)
                    s.fingerprint = dialect.fingerprint(r.json())
                    s.output = dialect.outputs_of("json", r.content)
                    d = divergence.compare(recorded, entry.fingerprint, s.output, s.fingerprint)
                    s.verdict, s.similarity, s.first_difference = d.verdict, d.similarity, d.departure
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                s.error = f"the answer is not a completion: {e}"
            progress(1)
            return s

        async def audit_one(entry: TapeEntry) -> RequestReport:
            try:
                return await audit_entry(entry)
            except Exception as e:  # one bad recording is reported and skipped; the audit goes on
                rr = RequestReport(
                    key=entry.key,
                    model=entry.model,
                    endpoint=entry.endpoint,
                    prompt="",
                    recorded_fingerprint=entry.fingerprint,
                    recorded_at=entry.recorded_at,
                )
                rr.skipped = f"{type(e).__name__}: {e}"
                progress(repeats)
                return rr

        async def audit_entry(entry: TapeEntry) -> RequestReport:
            recorded = divergence.outputs(entry.endpoint, entry.format, entry.body)
            rr = RequestReport(
                key=entry.key,
                model=entry.model,
                endpoint=entry.endpoint,
                prompt=prompt_of(entry.request),
                recorded_fingerprint=entry.fingerprint,
                recorded_at=entry.recorded_at,
                recorded_output=recorded,
            )
            rr.samples = list(await asyncio.gather(*(one(entry, recorded) for _ in range(repeats))))
            good = [s for s in rr.samples if not s.error]
            rr.errors = len(rr.samples) - len(good)
            rr.fingerprints_seen = sorted({s.fingerprint for s in good})
            rr.verdicts = dict(Counter(s.verdict for s in good))
            if good:
                rr.identical = sum(s.output == recorded for s in good)
                rr.identical_share = round(rr.identical / len(good), 6)
                rr.mean_similarity_to_recording = _mean([_similarity(s) for s in good])
                rr.mean_pairwise_similarity = divergence.mean_pairwise_similarity([divergence.text_of(_output(s)) for s in good])
                if embedding_model:
                    await _embeddings(client, upstream, embedding_model, credential_headers(entry, api_key), recorded, good, rr)
            for s in rr.samples:
                if not s.error:
                    store.add_event(
                        events.divergence_event(
                            source="audit",
                            mode="audit",
                            recorded=entry,
                            verdict=s.verdict,
                            similarity=_similarity(s),
                            live_fingerprint=s.fingerprint,
                            first_difference=s.first_difference,
                            recorded_output=recorded,
                            live_output=_output(s),
                            embedding_distance=s.embedding_distance,
                            at=s.time,
                        )
                    )
            return rr

        report.requests = list(await asyncio.gather(*(audit_one(e) for e in entries)))
    good = [s for rr in report.requests for s in rr.samples if not s.error]
    report.samples = sum(len(rr.samples) for rr in report.requests)
    report.errors = report.samples - len(good)
    counts = Counter(s.verdict for s in good)
    report.verdict_shares = {v: round(counts.get(v, 0) / len(good), 6) if good else 0.0 for v in divergence.VERDICTS}
    if good:
        report.identical_share = round(sum(rr.identical for rr in report.requests) / len(good), 6)
        report.mean_similarity_to_recording = _mean([_similarity(s) for s in good])
    report.finished = time.time()
    return report


async def _embeddings(client, upstream, model, auth, recorded, good: list[Sample], rr: RequestReport) -> None:
    """Cookbook measure: cosine distances of embeddings, to the recording and between samples."""
    texts = [divergence.text_of(recorded)] + [divergence.text_of(_output(s)) for s in good]
    try:
        vecs = await embedder.embed(client, upstream, model, [t or " " for t in texts], auth)
    except (httpx.HTTPError, KeyError, ValueError):
        return
    if len(vecs) < len(texts):
        return  # an embedding missing: no measure, as when the request fails
    distances = [round(divergence.cosine_distance(vecs[0], v), 6) for v in vecs[1 : len(texts)]]
    for s, d in zip(good, distances):
        s.embedding_distance = d
    rr.mean_embedding_distance_to_recording = _mean(distances)
    pairs = [divergence.cosine_distance(vecs[i], vecs[j]) for i in range(1, len(vecs)) for j in range(i + 1, len(vecs))]
    rr.mean_pairwise_embedding_distance = _mean(pairs)


def select(store: Store, f: EntryFilter) -> list[TapeEntry]:
    """The newest entry of each request key that passes the filter (model calls only: a polled state is none)."""
    return newest_per_key(e for e in store.entries() if f.entry(e) and e.request.get("method", "POST") == "POST")


def exceeded(report: AuditReport, thresholds: dict[str, float]) -> list[str]:
    """The thresholds the report exceeds, as readable lines (empty: the audit passes)."""
    out = []
    for verdict, limit in thresholds.items():
        share = report.verdict_shares.get(verdict, 0.0)
        if share > limit:
            out.append(f"{verdict}: {share:.1%} of samples > {limit:.1%}")
    return out


def dumps(report: AuditReport) -> str:
    return json.dumps(report.to_json(), indent=2, ensure_ascii=False)
