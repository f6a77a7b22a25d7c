"""The mode decision and every change a request makes to the store: serve, forward, refuse, record.

Free of mitmproxy: the addon hands in plain method/path/headers/bytes and gets
back an Exchange holding either a reply to send or the body to forward; later it
hands in the upstream's answer (or a stream, piece by piece) to be recorded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from seedtape.proxy import dialects, errors, jsontext, wire
from seedtape.proxy.audit import divergence, events
from seedtape.proxy.audit.embedder import Embedder
from seedtape.proxy.dialects import responsestate
from seedtape.proxy.exchange import Exchange, Reply, Status
from seedtape.proxy.explain import nearest
from seedtape.proxy.headers import CREDENTIAL_HEADERS, safe_headers
from seedtape.proxy.key import keyrules, occurrences, requestbody, routing
from seedtape.proxy.key.canonical import CanonicalRequest, canonicalize, normalize_path
from seedtape.proxy.key.seed import SeedPolicy
from seedtape.proxy.modes import Mode
from seedtape.proxy.options import Settings
from seedtape.proxy.streams.pacer import paced
from seedtape.proxy.streams.streamtape import StreamTape
from seedtape.proxy.tapes import scrub
from seedtape.proxy.tapes.entry import TapeEntry, fingerprint_problem, recordable_status
from seedtape.proxy.tapes.responseids import ResponseIds, response_of
from seedtape.proxy.tapes.store import Store
from seedtape.proxy.tapes.writer import GroupWriter

if TYPE_CHECKING:  # the remote tier (and its Redis client) is imported only when a proxy uses one
    from seedtape.proxy.tapes.shared import SharedTier


class Tapedeck:
    """Applies the mode to requests and records what the upstream answers."""

    def __init__(self, store: Store, settings: Settings, writer: GroupWriter | None = None, shared: SharedTier | None = None):
        """``writer``: recordings and events are committed by it, in groups, off the caller's thread
        (the proxy); without one they are written at once (tools, tests). ``shared``: the remote tier,
        looked up after a local miss and written through (seedtape/proxy/tapes/shared.py)."""
        self.store = store
        self.writer = writer
        self.shared = shared
        self.settings = settings
        self._salt_cache: bytes | None = None
        self.index = nearest.NearestIndex(store)  # reads the store's miss index, for explaining misses
        self.served: set[tuple[str, str]] = set()  # (key, fingerprint) of every entry replayed or recorded in this run
        self.embedder = Embedder(settings.upstream, settings.embedding_model) if settings.embedding_model else None
        self.response_ids = ResponseIds(store)  # Responses API ids -> their recordings, read on first use
        self.occurrences = occurrences.for_this_process()  # (scope, key): identical requests seen so far

    def reconfigure(self, settings: Settings) -> None:
        """New option values; what was served and the miss index stay (they describe this run and store)."""
        if settings.credential_salt != self.settings.credential_salt:
            self._salt_cache = None
        if (settings.upstream, settings.embedding_model) != (self.settings.upstream, self.settings.embedding_model):
            self.embedder = Embedder(settings.upstream, settings.embedding_model) if settings.embedding_model else None
        self.settings = settings

    # -- request side -------------------------------------------------------

    def begin(self, method: str, path: str, headers: dict[str, str], content: bytes) -> Exchange:
        """Decide what to do with a request. Never raises for bad input: it refuses."""
        ex = self._decide(method, path, headers, content)
        if ex.goes_live and _placeholder_key(headers):
            return self._refuse(ex, errors.no_api_key(self.settings.upstream, ex.mode.value))
        return ex

    def _decide(self, method: str, path: str, headers: dict[str, str], content: bytes) -> Exchange:
        s = self.settings
        ex = Exchange(method=method, path=path, mode=s.mode)
        try:
            over, bare = routing.split(path)
        except routing.RoutingError as e:
            return self._refuse(ex, errors.bad_request(str(e)))
        if bare != path:
            ex.path = ex.forward_path = bare
            path = bare
        ex.mode = mode = over.mode or s.mode
        if mode is Mode.PASSTHROUGH:
            return ex
        if (state := responsestate.route(method, normalize_path(path))) is not None:
            namespace = over.namespace if over.namespace is not None else headers.get(wire.NAMESPACE, "")
            return self._state(ex, state, path, namespace)
        ex.dialect = dialect = dialects.match(method, normalize_path(path))
        if dialect is None:
            if mode is Mode.REPLAY:
                return self._refuse(
                    ex, errors.not_replayable(f"{method} {path.split('?', 1)[0]}", "is not an endpoint seedtape records")
                )
            return ex

        try:
            body = requestbody.parse(content)
        except ValueError as e:
            return self._refuse(ex, errors.bad_request(str(e)))

        path_only, _, query = path.partition("?")
        unseeded = body
        try:
            if dialect.takes_seed:
                body, ex.seed = s.seed.apply(body)
            namespace = over.namespace if over.namespace is not None else headers.get(wire.NAMESPACE, "")
            credential = self._credential(headers)

            def keyed(b: dict, occurrence: int = 1) -> CanonicalRequest:
                c = canonicalize(
                    method,
                    path_only,
                    query,
                    b,
                    ignored_fields=s.ignored_fields,
                    ignored_query=s.ignored_query,
                    ignored_paths=s.ignored_paths,
                    masks=s.masks,
                    namespace=namespace,
                    credential=credential,
                )
                return dataclasses.replace(c, occurrence=occurrence) if occurrence > 1 else c

            canonical = keyed(body)
            canonical.key  # noqa: B018 - hash now, inside the guard
            if s.sequence:
                scope = over.scope if over.scope is not None else headers.get(wire.SCOPE, "")
                ex.occurrence = self._count(scope, canonical.key)
                sequence = _Sequence(keyed, unseeded, s.seed, ex.seed.endswith("; injected"))
                if ex.occurrence > 1:
                    canonical, ex.seed, ex.forward_body = sequence.nth(ex.occurrence, ex.seed, ex.forward_body)
        except RecursionError:  # parsed, but too deep to re-serialize
            ex.forward_body = None
            return self._refuse(ex, errors.bad_request("the JSON body is nested too deeply"))
        except keyrules.MaskTimeout as e:  # a --mask that backtracks for ever on this body
            ex.forward_body = None
            return self._refuse(ex, errors.bad_request(str(e)))
        ex.canonical = canonical
        ex.stream = body.get("stream") is True and dialect.can_stream
        opts = body.get("stream_options")
        ex.include_usage = isinstance(opts, dict) and opts.get("include_usage") is True

        if mode.serves_recordings:
            entry = self.store.get(ex.key, s.fingerprint)
            remote_down = ""
            if entry is None and self.shared is not None:
                try:
                    entry = self._from_remote(ex.key, s.fingerprint)
                except self.shared.unreachable as e:
                    remote_down = str(e)
            if entry is not None:
                return self._serve(ex, entry)
            if mode is Mode.REPLAY and remote_down and self.shared is not None:
                return self._refuse(ex, errors.remote_unreachable(self.shared.name, remote_down, ex.key), Status.MISS)
            if mode is Mode.REPLAY:
                ex.miss = self._explain(ex)
                detail = ex.miss.text() if ex.miss else ""
                if ex.occurrence > 1:
                    detail = f"{sequence.recorded_before(ex.occurrence, self.store)} {detail}".strip()
                return self._refuse(ex, errors.replay_miss(ex.key, path_only, detail, s.miss_hint), Status.MISS)
        ex.status = Status.LIVE
        if body is not unseeded and ex.forward_body is None:  # only what goes upstream needs its bytes
            ex.forward_body = jsontext.encode(body)
        # The live answer will be compared with what replay would serve for this key (auto and
        # replay looked that up above: only a pinned miss may still have a newest one to compare with).
        if mode.serves_recordings:
            ex.recorded = self.store.get(ex.key) if s.fingerprint else None
        else:
            ex.recorded = self.store.get(ex.key, s.fingerprint) or (self.store.get(ex.key) if s.fingerprint else None)
        return ex

    def _state(self, ex: Exchange, req: responsestate.StateRequest, path: str, namespace: str) -> Exchange:
        """A read or change of a stored response: answered from its recording in auto and replay mode.

        Replay never contacts the upstream for it. In auto mode a recording still queued or in
        progress (a background call) is polled live, and the state it reaches is recorded, so that
        replay later serves the final state."""
        mode = ex.mode
        found = self.response_ids.find(req.response_id) if mode.serves_recordings else None
        path_only, _, query = path.partition("?")
        if found is not None:
            entry, doc = found
            final = doc.get("status") in responsestate.TERMINAL_STATUS
            if mode is Mode.REPLAY or final or req.action != "retrieve":
                status, body = responsestate.answer(req, doc, entry.request, dict(parse_qsl(query)))
                ex.status, ex.fingerprint = Status.HIT, entry.fingerprint
                self.served.add((entry.key, entry.fingerprint))
                headers = [("content-type", "application/json")]
                ex.reply = Reply(status, headers + ex.headers(), json.dumps(body, ensure_ascii=False).encode())
                return ex
        if mode is Mode.REPLAY:
            err = errors.unknown_response(req.response_id, req.action, self.settings.miss_hint)
            return self._refuse(ex, err, Status.MISS)
        if req.action == "retrieve" and mode.records:  # poll it live and record the state it reaches
            ex.dialect = dialects.RESPONSES
            ex.canonical = canonicalize("GET", path_only, query, b"", namespace=namespace)
            ex.status = Status.LIVE
        return ex

    def _from_remote(self, key: str, fingerprint: str | None) -> TapeEntry | None:
        """The remote tier's entry after a local miss, copied into the local store in the background."""
        assert self.shared is not None
        entry = self.shared.find(key, fingerprint)
        if entry is None:
            return None
        if self.writer is not None:  # kept as recorded (timestamps, counts), never queued back
            self.writer.submit(self.store.merging([entry]))
        else:
            self.store.merge([entry])
        return entry

    def _count(self, scope: str, key: str) -> int:
        """--repeats sequence: which occurrence of this request in its scope this one is (1, 2, ...)."""
        return self.occurrences.next(scope, key)

    def _credential(self, headers: dict[str, str]) -> str:
        """With key_by_credential: who is asking, as a salted hash (the raw key is never kept)."""
        if not self.settings.key_by_credential:
            return ""
        raw = next((headers[h] for h in CREDENTIAL_HEADERS if headers.get(h)), "")
        if not raw:
            return "anonymous"
        return hashlib.sha256(self._salt() + raw.encode("utf-8", "surrogateescape")).hexdigest()[:32]

    def _salt(self) -> bytes:
        if self._salt_cache is None:
            self._salt_cache = self.settings.credential_salt.encode() or self.store.salt()
        return self._salt_cache

    def _explain(self, ex: Exchange) -> nearest.Explanation | None:
        """The nearest recordings and how this request differs; never lets a miss fail for it."""
        assert ex.canonical is not None
        try:
            fields = self.settings.redact_fields
            redact = (lambda r: scrub.request(r, fields)[0]) if fields else None
            explanation = nearest.explain(self.store, self.index, ex.canonical, self.settings.fingerprint, redact)
        except Exception:  # the miss answer matters more than its explanation
            return None
        if self.shared is not None and not explanation.note:
            remote = (
                f"The remote {self.shared.name} has no recording for this request either; "
                "the nearest are looked for in the local store only."
            )
            explanation.caveat = f"{explanation.caveat} {remote}".strip()
        return explanation

    def _serve(self, ex: Exchange, entry: TapeEntry) -> Exchange:
        """Answer from a recording, in the format the client asked for."""
        if not recordable_status(entry.status):  # only a crafted store or tape holds one: fail closed
            return self._refuse(
                ex,
                errors.internal(
                    f"the recording for {ex.key[:12]} has status {entry.status!r}, "
                    "which seedtape never records; delete or re-record it"
                ),
            )
        dialect = dialects.named(entry.endpoint)
        if dialect is dialects.RESPONSES:
            entry = self._final_state(entry)
        ex.status = Status.HIT
        ex.fingerprint = entry.fingerprint
        self.served.add((entry.key, entry.fingerprint))
        body, pace = entry.body, None
        want = "sse" if ex.stream else "json"
        if entry.format == want == "sse":
            if entry.extra.get("include_usage") and not ex.include_usage:
                body = dialect.restream(body, include_usage=False)
            elif self.settings.replay_pace > 0:
                pace = paced(body, entry.extra.get("gaps") or [], self.settings.replay_pace)
        elif entry.format == "json" and want == "sse":
            body = dialect.to_stream(body, ex.include_usage)
            ex.status = Status.HIT_FROM_JSON
        elif entry.format == "sse" and want == "json":
            body = dialect.to_json(body)
            ex.status = Status.HIT_FROM_SSE
        ctype = "text/event-stream; charset=utf-8" if want == "sse" else "application/json"
        # Only what recording keeps, also from stores written before a rule tightened; framing is computed.
        headers = [(k, v) for k, v in safe_headers(entry.headers) if k != "content-type"] + [("content-type", ctype)]
        ex.reply = Reply(entry.status, headers + ex.headers(), body, pace)
        return ex

    def _final_state(self, entry: TapeEntry) -> TapeEntry:
        """A background call's recording holds it queued: serve the final state it was polled to, if recorded."""
        if b'"queued"' not in entry.body and b'"in_progress"' not in entry.body:
            return entry  # the common case, decided without parsing the body
        doc = response_of(entry)
        if doc is None or doc.get("status") in responsestate.TERMINAL_STATUS or not isinstance(doc.get("id"), str):
            return entry
        found = self.response_ids.find(doc["id"])
        if found is None or found[1].get("status") not in responsestate.TERMINAL_STATUS:
            return entry
        return found[0]

    def _refuse(self, ex: Exchange, err: errors.SeedtapeError, status: Status = Status.ERROR) -> Exchange:
        ex.status = status
        ex.reply = Reply(err.status, list(err.all_headers().items()) + ex.headers(), err.body())
        ex.note = err.message
        return ex

    # -- response side --------------------------------------------------------

    def finish(self, ex: Exchange, status: int, headers: list[tuple[str, str]], content: bytes) -> Exchange:
        """Record a live answer if it is a complete, good one; set the status either way."""
        if ex.status is not Status.LIVE or ex.canonical is None or ex.dialect is None:
            return ex
        try:
            body = json.loads(content)
        except (ValueError, UnicodeDecodeError, RecursionError):
            body = None
        if isinstance(body, dict):
            ex.fingerprint = ex.dialect.fingerprint(body)
        if not recordable_status(status):
            ex.status, ex.note = Status.UNRECORDED, f"upstream answered {status}"
            return ex
        if why := ex.dialect.answer_problem(body):
            ex.status, ex.note = Status.UNRECORDED, why
            return ex
        self._compare(ex, "json", content)
        return self._record(ex, status, headers, content, "json", ex.dialect.model(body), {})

    def start_stream(self, ex: Exchange) -> StreamTape | None:
        """A live event stream is about to pass: return a tape for it if it may be recorded."""
        if ex.status is not Status.LIVE or ex.canonical is None or ex.dialect is None or not ex.dialect.can_stream:
            return None
        ex.tape = StreamTape(ex.dialect)
        ex.status = Status.RECORDING if ex.mode.records else Status.LIVE
        return ex.tape

    def feed_stream(self, ex: Exchange, data: bytes, status: int, headers: list[tuple[str, str]]) -> None:
        """The next piece of a taped stream (``b""``: its clean end); records it once the upstream completed it."""
        tape = ex.tape
        if tape is None:
            return
        tape.feed(data)
        if tape.done or not data:
            self._finish_stream(ex, status, headers)

    def _finish_stream(self, ex: Exchange, status: int, headers: list[tuple[str, str]]) -> None:
        tape = ex.tape
        if tape is None or ex.status not in (Status.RECORDING, Status.LIVE):
            return
        ex.tape = None  # taken: the rest of the body records nothing more
        ex.fingerprint = tape.fingerprint
        why = tape.verdict() or (f"upstream answered {status}" if not recordable_status(status) else "")
        ex.upstream_completed = not tape.verdict()
        if why:
            ex.status, ex.note = Status.UNRECORDED, why
            return
        self._compare(ex, "sse", bytes(tape.raw))
        if ex.status is Status.LIVE:
            return
        extra = {"gaps": tape.gaps, "include_usage": ex.include_usage}
        self._record(ex, status, headers, bytes(tape.raw), "sse", tape.model, extra)

    def _compare(self, ex: Exchange, fmt: str, content: bytes) -> None:
        """Set ex.divergence when there is a recording to compare the live answer with."""
        rec = ex.recorded
        if rec is None or ex.dialect is None:
            return
        try:
            ex.live_output = ex.dialect.outputs_of(fmt, content)
            ex.divergence = divergence.compare(
                divergence.outputs(rec.endpoint, rec.format, rec.body),
                rec.fingerprint,
                ex.live_output,
                ex.fingerprint,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            ex.note = "could not compare with the recording"

    async def settle(self, ex: Exchange, auth: dict[str, str]) -> dict | None:
        """After a compared answer: its embedding distance (with --embedding-model) and its audit event.

        ``auth`` is the client's credential, used for the embeddings call and dropped. Stores the event
        of every compared exchange in audit mode, and of disagreements otherwise; returns it.
        """
        d, rec = ex.divergence, ex.recorded
        if d is None or rec is None or ex.live_output is None or (d.verdict == "match" and ex.mode is not Mode.AUDIT):
            return None
        recorded_output = divergence.outputs(rec.endpoint, rec.format, rec.body)
        if self.embedder is not None:
            ex.embedding_distance = await self.embedder.distance(
                divergence.text_of(recorded_output), divergence.text_of(ex.live_output), auth
            )
        event = events.divergence_event(
            source="proxy",
            mode=ex.mode.value,
            recorded=rec,
            verdict=d.verdict,
            similarity=d.similarity,
            live_fingerprint=d.live_fingerprint,
            first_difference=d.departure,
            recorded_output=recorded_output,
            live_output=ex.live_output,
            embedding_distance=ex.embedding_distance,
        )
        queue = self.shared is not None and self.shared.queues
        if self.writer is None:
            self.store.add_event(event, queue=queue)
        else:
            await asyncio.wrap_future(self.writer.submit(self.store.adding_event(event, queue=queue)))
        return event

    def _record(
        self, ex: Exchange, status: int, headers: list[tuple[str, str]], content: bytes, fmt: str, model: str, extra: dict
    ) -> Exchange:
        if not ex.mode.records:
            return ex
        assert ex.canonical is not None and ex.dialect is not None
        if (why := fingerprint_problem(ex.fingerprint)) is not None:
            ex.status, ex.note = Status.UNRECORDED, f"the upstream's system_fingerprint is unusable: {why}"
            return ex
        s = self.settings
        request = ex.canonical.to_json()
        if s.redact_fields:
            request, _ = scrub.request(request, s.redact_fields)
            content, _ = scrub.body(content, fmt, s.redact_fields)
        body = ex.canonical.body  # a JSON object: requestbody.parse admits nothing else
        requested = body.get("model", "") if isinstance(body, dict) else ""
        entry = TapeEntry(
            key=ex.key,
            fingerprint=ex.fingerprint,
            endpoint=ex.dialect.name,
            request=request,
            status=status,
            headers=[h for h in safe_headers(headers) if h[0] not in s.redact_headers],
            body=content,
            format=fmt,
            model=model or str(requested),
            namespace=ex.canonical.namespace,
            upstream_ms=round((time.monotonic() - ex.started) * 1000, 1),
            extra=extra,
        )
        queue = self.shared is not None and self.shared.queues
        if self.writer is None:
            self._recorded(ex, entry, self.store.replace(entry, queue=queue), fmt, content)
        else:  # the exchange waits for it (committed) before its client gets the end of the answer
            ex.pending = self.writer.submit(self.store.replacing(entry, queue=queue))
            ex.on_commit = lambda replaced: self._recorded(ex, entry, replaced, fmt, content)
        return ex

    def _recorded(self, ex: Exchange, entry: TapeEntry, replaced: TapeEntry | None, fmt: str, content: bytes) -> None:
        """The recording is on disk: the exchange is recorded (and compared with what it replaced)."""
        if ex.dialect is dialects.RESPONSES:
            self.response_ids.add(entry)
        ex.status = Status.RECORDED
        self.served.add((ex.key, ex.fingerprint))  # recorded for a request of this run: used
        if replaced is not None and ex.divergence is None:
            # Recorded meanwhile by someone else (another proxy, a concurrent request): compare as audit would.
            ex.recorded = replaced
            self._compare(ex, fmt, content)

    async def committed(self, ex: Exchange) -> bool:
        """Wait until the exchange's recording, handed to the writer, is on disk (no-op without one).

        False when the write failed: the exchange is then unrecorded, with the reason as its note.
        """
        fut = ex.pending
        if fut is None:
            return True
        after, ex.on_commit = ex.on_commit, None  # taken: a second waiter (a stream cut at its end) only waits
        try:
            replaced = await asyncio.wrap_future(fut)
        except Exception as e:
            ex.pending = None
            ex.unrecorded(f"recording failed: {type(e).__name__}: {e}")
            return False
        ex.pending = None
        if after is not None:
            after(replaced)
        return True

    def stop_writing(self) -> None:
        """Write what is queued and stop the writer (before its store is closed)."""
        if self.writer is not None:
            self.writer.close()

    async def close(self) -> None:
        if self.embedder is not None:
            await self.embedder.close()
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)


def _placeholder_key(headers: dict[str, str]) -> bool:
    """Whether the request carries the pytest plugin's placeholder key instead of a real one."""
    return any(wire.PLACEHOLDER_API_KEY in headers.get(h, "") for h in CREDENTIAL_HEADERS)


@dataclasses.dataclass(frozen=True)
class _Sequence:
    """--repeats sequence: the Nth identical request gets its own key, and seed+N-1 where seedtape injects
    the seed, so repeated sampling (best-of-n, votes) stays varied and reproducible."""

    keyed: Callable[..., CanonicalRequest]  # (body, occurrence) -> canonical request, with the proxy's rules
    unseeded: dict  # the body as the client sent it
    seed: SeedPolicy
    injected: bool  # seedtape injects the seed into this request

    def body(self, n: int) -> tuple[dict, str | None]:
        if not self.injected:
            return self.unseeded, None
        seeded, header = dataclasses.replace(self.seed, seed=self.seed.seed + n - 1).apply(self.unseeded)
        return seeded, header

    def nth(self, n: int, seed: str, forward: bytes | None) -> tuple[CanonicalRequest, str, bytes | None]:
        body, header = self.body(n)
        if header is None:
            return self.keyed(body, n), seed, forward
        return self.keyed(body, n), header, jsontext.encode(body)

    def recorded_before(self, n: int, store: Store) -> str:
        """How many earlier occurrences were recorded, for the miss of occurrence ``n``."""
        recorded = 0
        while recorded < n - 1 and store.fingerprints(self.keyed(self.body(recorded + 1)[0], recorded + 1).key):
            recorded += 1
        times = "once" if recorded == 1 else f"{recorded} times"
        return f"With --repeats sequence this request was recorded {times} in its scope, this is the {_ordinal(n)}."


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
