"""One request's way through seedtape: serve a recording, forward, or refuse.

This is the mode decision, free of mitmproxy: the addon hands in plain
method/path/headers/bytes and gets back either a reply to send or the body to
forward, and later hands in the upstream's answer to be recorded.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

from seedtape.proxy import errors, strictjson, wire
from seedtape.proxy.audit import divergence
from seedtape.proxy.dialects import convert, endpoints
from seedtape.proxy.dialects.endpoints import Endpoint
from seedtape.proxy.explain import nearest
from seedtape.proxy.headers import CREDENTIAL_HEADERS, safe_headers
from seedtape.proxy.key import routing
from seedtape.proxy.key.canonical import DEFAULT_IGNORED_FIELDS, CanonicalRequest, canonicalize, normalize_path
from seedtape.proxy.key.seed import SeedPolicy
from seedtape.proxy.modes import Mode
from seedtape.proxy.streams.streamtape import StreamTape
from seedtape.proxy.tapes import scrub
from seedtape.proxy.tapes.entry import NO_FINGERPRINT, TapeEntry, fingerprint_of, fingerprint_problem, recordable_status
from seedtape.proxy.tapes.store import Store


@dataclass(frozen=True)
class Settings:
    mode: Mode = Mode.AUTO
    seed: SeedPolicy = field(default_factory=SeedPolicy)
    ignored_fields: frozenset[str] = frozenset(DEFAULT_IGNORED_FIELDS)
    fingerprint: str | None = None  # pin replay to one fingerprint
    upstream: str = "https://api.openai.com"
    embedding_model: str | None = None  # also compare live and recorded outputs by embedding distance
    redact_headers: frozenset[str] = frozenset()  # response headers never stored, beyond the built-in rules
    redact_fields: tuple[scrub.FieldPath, ...] = ()  # request./response. paths stored as "[scrubbed]"
    key_by_credential: bool = False  # a salted hash of the API key enters the request key
    credential_salt: str = ""  # shared salt (so keys match across stores); default: the store's own
    miss_hint: str = ""  # how to record a replay miss, when the default advice does not fit (pytest)
    replay_pace: float = 0.0  # replay streams with their recorded gaps times this factor (0: at once)


@dataclass
class Reply:
    """A response seedtape answers with itself, without the upstream."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    pace: list[tuple[float, bytes]] | None = None  # (seconds to wait, bytes to send), for paced streams


@dataclass
class Exchange:
    """What seedtape knows about one request, from arrival to recording."""

    method: str
    path: str
    mode: Mode = Mode.AUTO  # the proxy's mode, or the request's own (routing prefix)
    forward_path: str | None = None  # set when a /_seedtape/ prefix was stripped
    endpoint: Endpoint | None = None
    canonical: CanonicalRequest | None = None
    seed: str = "none"
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage as the client asked
    tape: StreamTape | None = None  # the live stream being taped
    recorded: TapeEntry | None = None  # the recording a live answer is compared with
    divergence: divergence.Divergence | None = None
    live_output: list | None = None
    miss: nearest.Explanation | None = None  # why a replay missed
    forward_body: bytes | None = None  # set when the forwarded body differs (seed injected)
    reply: Reply | None = None  # set when seedtape answers itself
    status: str = "passthrough"
    fingerprint: str = ""
    started: float = field(default_factory=time.monotonic)
    note: str = ""  # why something was not recorded, for the log

    @property
    def key(self) -> str:
        return self.canonical.key if self.canonical else ""

    def headers(self) -> list[tuple[str, str]]:
        """The ``seedtape-*`` headers for the response the client gets, as safe header values.

        The fingerprint and the miss explanation come from an upstream or a tape: untrusted.
        """
        out = [(wire.STATUS, self.status)]
        if self.canonical:
            out += [(wire.KEY, self.key), (wire.SEED, self.seed)]
        if self.fingerprint:
            out.append((wire.FINGERPRINT, self.fingerprint))
        if self.divergence:
            out.append((wire.DIVERGENCE, self.divergence.header()))
        if self.miss is not None:
            out.append((wire.MISS, self.miss.summary()))
        return [(k, wire.header_value(v)) for k, v in out]


def _json_object(content: bytes) -> dict:
    """Parse a request body that must be a JSON object; ValueError says why not."""
    try:
        text = content.decode("utf-8")  # strict: json.loads(bytes) would guess UTF-16/32 and pass surrogates
    except UnicodeDecodeError:
        raise ValueError("the body is not UTF-8") from None
    try:
        body = strictjson.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"the body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except strictjson.TooDeep as e:
        raise ValueError(f"the JSON body is {e}") from None
    except ValueError as e:  # NaN/Infinity, a float overflow, a huge int
        raise ValueError(f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ValueError(f"the JSON body must be an object, not {type(body).__name__}")
    return body


def encode_json(body: object) -> bytes:
    """UTF-8 JSON; ASCII escapes only when the body holds lone surrogates (valid JSON, not UTF-8)."""
    try:
        return json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(body).encode()


class Tapedeck:
    """Applies the mode to requests and records what the upstream answers."""

    def __init__(self, store: Store, settings: Settings):
        self.store = store
        self.settings = settings
        self._salt_cache: bytes | None = None
        self.index = nearest.NearestIndex(store)  # filled lazily, for explaining misses
        self.served: set[tuple[str, str]] = set()  # (key, fingerprint) of every entry replayed or recorded in this run

    # -- request side -------------------------------------------------------

    def begin(self, method: str, path: str, headers: dict[str, str], content: bytes) -> Exchange:
        """Decide what to do with a request. Never raises for bad input: it refuses."""
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
        ex.endpoint = endpoints.match(method, normalize_path(path))
        if ex.endpoint is None:
            if mode is Mode.REPLAY:
                return self._refuse(ex, errors.not_replayable(f"{method} {path.split('?', 1)[0]}", "is not an endpoint seedtape records"))
            ex.status = "passthrough"
            return ex

        try:
            body = _json_object(content)
        except ValueError as e:
            return self._refuse(ex, errors.bad_request(str(e)))

        path_only, _, query = path.partition("?")
        try:
            if ex.endpoint.takes_seed:
                injected, ex.seed = s.seed.apply(body)
                if injected is not body:
                    body = injected
                    ex.forward_body = encode_json(body)
            namespace = over.namespace if over.namespace is not None else headers.get(wire.NAMESPACE, "")
            canonical = canonicalize(method, path_only, query, body, ignored_fields=s.ignored_fields,
                                     namespace=namespace, credential=self._credential(headers))
            canonical.key  # noqa: B018 - hash now, inside the guard
        except RecursionError:  # parsed, but too deep to re-serialize
            ex.forward_body = None
            return self._refuse(ex, errors.bad_request("the JSON body is nested too deeply"))
        ex.canonical = canonical
        ex.stream = body.get("stream") is True and ex.endpoint.can_stream
        opts = body.get("stream_options")
        ex.include_usage = isinstance(opts, dict) and opts.get("include_usage") is True

        if mode.serves_recordings:
            entry = self.store.get(ex.key, s.fingerprint)
            if entry is not None:
                return self._serve(ex, entry)
            if mode is Mode.REPLAY:
                ex.status = "miss"
                ex.miss = self._explain(ex)
                detail = ex.miss.text() if ex.miss else ""
                return self._refuse(ex, errors.replay_miss(ex.key, path_only, detail, s.miss_hint), status="miss")
        ex.status = "live"
        # The live answer will be compared with what replay would serve for this key (auto and
        # replay looked that up above: only a pinned miss may still have a newest one to compare with).
        if mode.serves_recordings:
            ex.recorded = self.store.get(ex.key) if s.fingerprint else None
        else:
            ex.recorded = self.store.get(ex.key, s.fingerprint) or (self.store.get(ex.key) if s.fingerprint else None)
        return ex

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
        try:
            fields = self.settings.redact_fields
            redact = (lambda r: scrub.request(r, fields)[0]) if fields else None
            return nearest.explain(self.store, self.index, ex.canonical, self.settings.fingerprint, redact)
        except Exception:  # noqa: BLE001 - the miss answer matters more than its explanation
            return None

    def _serve(self, ex: Exchange, entry: TapeEntry) -> Exchange:
        """Answer from a recording, in the format the client asked for."""
        if not recordable_status(entry.status):  # only a crafted store or tape holds one: fail closed
            return self._refuse(ex, errors.internal(f"the recording for {ex.key[:12]} has status {entry.status!r}, "
                                                    "which seedtape never records; delete or re-record it"))
        ex.status = "hit"
        ex.fingerprint = entry.fingerprint
        self.served.add((entry.key, entry.fingerprint))
        body, pace = entry.body, None
        want = "sse" if ex.stream else "json"
        if entry.format == want == "sse":
            recorded_usage = bool(entry.extra.get("include_usage"))
            if recorded_usage and not ex.include_usage:
                body = convert.restream(entry.sse_chunks(), include_usage=False)
            elif self.settings.replay_pace > 0:
                pace = paced(body, entry.extra.get("gaps") or [], self.settings.replay_pace)
        elif entry.format == "json" and want == "sse":
            body = convert.to_stream(entry.endpoint, json.loads(body), ex.include_usage)
            ex.status = "hit; converted-from=json"
        elif entry.format == "sse" and want == "json":
            body = convert.to_completion(entry.endpoint, entry.sse_chunks())
            ex.status = "hit; converted-from=sse"
        ctype = "text/event-stream; charset=utf-8" if want == "sse" else "application/json"
        # Only what recording keeps, also from stores written before a rule tightened; framing is computed.
        headers = [(k, v) for k, v in safe_headers(entry.headers) if k != "content-type"] + [("content-type", ctype)]
        ex.reply = Reply(entry.status, headers + ex.headers(), body, pace)
        return ex

    def _refuse(self, ex: Exchange, err: errors.SeedtapeError, status: str = "error") -> Exchange:
        ex.status = status
        ex.reply = Reply(err.status, list(err.all_headers().items()) + ex.headers(), err.body())
        ex.note = err.message
        return ex

    # -- response side --------------------------------------------------------

    def finish(self, ex: Exchange, status: int, headers: list[tuple[str, str]], content: bytes) -> Exchange:
        """Record a live answer if it is a complete, good one; set the status either way."""
        if ex.status != "live" or ex.canonical is None or ex.endpoint is None:
            return ex
        try:
            body = json.loads(content)
        except (ValueError, UnicodeDecodeError):
            body = None
        if isinstance(body, dict):
            ex.fingerprint = fingerprint_of(body)
        if not recordable_status(status):
            ex.status, ex.note = "unrecorded", f"upstream answered {status}"
            return ex
        if not isinstance(body, dict) or "error" in body:
            ex.status, ex.note = "unrecorded", "upstream body is not a JSON completion"
            return ex
        self._compare(ex, "json", content)
        return self._record(ex, status, headers, content, "json", str(body.get("model") or ""), {})

    def _compare(self, ex: Exchange, fmt: str, content: bytes) -> None:
        """Set ex.divergence when there is a recording to compare the live answer with."""
        rec = ex.recorded
        if rec is None or ex.endpoint is None:
            return
        try:
            ex.live_output = divergence.outputs(ex.endpoint.name, fmt, content)
            ex.divergence = divergence.compare(
                divergence.outputs(rec.endpoint, rec.format, rec.body), rec.fingerprint, ex.live_output, ex.fingerprint,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            ex.note = "could not compare with the recording"
            return

    def note_divergence(self, ex: Exchange, embedding_distance: float | None = None) -> dict | None:
        """Store the audit event of a compared exchange (all of them in audit mode, disagreements otherwise)."""
        d, rec = ex.divergence, ex.recorded
        if d is None or rec is None or (d.verdict == "match" and ex.mode is not Mode.AUDIT):
            return None
        event = {
            "time": time.time(), "source": "proxy", "mode": ex.mode.value, "key": ex.key,
            "endpoint": rec.endpoint, "model": rec.model, "namespace": rec.namespace,
            "recorded_fingerprint": d.recorded_fingerprint, "live_fingerprint": d.live_fingerprint,
            "verdict": d.verdict, "similarity": d.similarity, "embedding_distance": embedding_distance,
            "first_difference": d.departure,
            "recorded_output": divergence.outputs(rec.endpoint, rec.format, rec.body),
            "live_output": ex.live_output,
        }
        self.store.add_event(event)
        return event

    def start_stream(self, ex: Exchange) -> StreamTape | None:
        """A live event stream is about to pass: return a tape for it if it may be recorded."""
        if ex.status != "live" or ex.canonical is None:
            return None
        ex.tape = StreamTape()
        ex.status = "recording" if ex.mode.records else "live"
        return ex.tape

    def finish_stream(self, ex: Exchange, status: int, headers: list[tuple[str, str]]) -> Exchange:
        """Record a taped stream once, if the upstream completed it."""
        tape = ex.tape
        if tape is None or ex.status not in ("recording", "live"):
            return ex
        ex.tape = None  # taken: a second call (end of body, then the response hook) records nothing more
        ex.fingerprint = tape.fingerprint or NO_FINGERPRINT
        why = tape.verdict() or (f"upstream answered {status}" if not recordable_status(status) else "")
        if why:
            ex.status, ex.note = "unrecorded", why
            return ex
        self._compare(ex, "sse", bytes(tape.raw))
        if ex.status == "live":
            return ex
        model = next((c["model"] for c in tape.chunks if c.get("model")), "")
        extra = {"gaps": tape.gaps, "include_usage": ex.include_usage}
        return self._record(ex, status, headers, bytes(tape.raw), "sse", str(model), extra)

    def _record(self, ex: Exchange, status: int, headers: list[tuple[str, str]], content: bytes,
                fmt: str, model: str, extra: dict) -> Exchange:
        if not ex.mode.records:
            return ex
        assert ex.canonical is not None and ex.endpoint is not None
        if (why := fingerprint_problem(ex.fingerprint)) is not None:
            ex.status, ex.note = "unrecorded", f"the upstream's system_fingerprint is unusable: {why}"
            return ex
        s = self.settings
        request = ex.canonical.to_json()
        if s.redact_fields:
            request, _ = scrub.request(request, s.redact_fields)
            content, _ = scrub.body(content, fmt, s.redact_fields)
        self.index.add(ex.key, request)
        self.store.put(
            TapeEntry(
                key=ex.key,
                fingerprint=ex.fingerprint,
                endpoint=ex.endpoint.name,
                request=request,
                status=status,
                headers=[h for h in safe_headers(headers) if h[0] not in s.redact_headers],
                body=content,
                format=fmt,
                model=model or str((ex.canonical.body or {}).get("model", "")),
                namespace=ex.canonical.namespace,
                upstream_ms=round((time.monotonic() - ex.started) * 1000, 1),
                extra=extra,
            )
        )
        ex.status = "recorded"
        self.served.add((ex.key, ex.fingerprint))  # recorded for a request of this run: used
        return ex


def paced(body: bytes, gaps: list[list[float]], factor: float) -> list[tuple[float, bytes]]:
    """Split a recorded stream at its recorded reads, with the gaps between them scaled."""
    out, start, last_t = [], 0, 0.0
    for offset, t in gaps:
        offset = int(offset)
        if offset <= start or offset > len(body):
            continue
        out.append((max(0.0, (t - last_t) * factor), body[start:offset]))
        start, last_t = offset, t
    if start < len(body):
        out.append((0.0, body[start:]))
    return out
