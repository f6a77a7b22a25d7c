"""One request's way through seedtape: serve a recording, forward, or refuse.

This is the mode decision, free of mitmproxy: the addon hands in plain
method/path/headers/bytes and gets back either a reply to send or the body to
forward, and later hands in the upstream's answer to be recorded.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from . import endpoints, errors, wire
from .canonical import DEFAULT_IGNORED_FIELDS, CanonicalRequest, canonicalize
from .endpoints import Endpoint
from .modes import Mode
from .seed import SeedPolicy
from .store import Store
from .tape import NO_FINGERPRINT, TapeEntry
from .headers import safe_headers


@dataclass(frozen=True)
class Settings:
    mode: Mode = Mode.AUTO
    seed: SeedPolicy = field(default_factory=SeedPolicy)
    ignored_fields: frozenset[str] = frozenset(DEFAULT_IGNORED_FIELDS)
    fingerprint: str | None = None  # pin replay to one fingerprint
    upstream: str = "https://api.openai.com"


@dataclass
class Reply:
    """A response seedtape answers with itself, without the upstream."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Exchange:
    """What seedtape knows about one request, from arrival to recording."""

    method: str
    path: str
    endpoint: Endpoint | None = None
    canonical: CanonicalRequest | None = None
    seed: str = "none"
    stream: bool = False
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
        """The ``seedtape-*`` headers for the response the client gets."""
        out = [(wire.STATUS, self.status)]
        if self.canonical:
            out += [(wire.KEY, self.key), (wire.SEED, self.seed)]
        if self.fingerprint:
            out.append((wire.FINGERPRINT, self.fingerprint))
        return out


def _json_object(content: bytes) -> dict:
    """Parse a request body that must be a JSON object; ValueError says why not."""

    def no_constants(name: str) -> object:
        raise ValueError(f"{name} is not valid JSON")

    try:
        body = json.loads(content, parse_constant=no_constants)
    except RecursionError:
        raise ValueError("the JSON body is nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("the body is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"the body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(body, dict):
        raise ValueError(f"the JSON body must be an object, not {type(body).__name__}")
    return body


def fingerprint_of(body: object) -> str:
    if isinstance(body, dict):
        fp = body.get("system_fingerprint")
        if isinstance(fp, str) and fp:
            return fp
    return NO_FINGERPRINT


class Tapedeck:
    """Applies the mode to requests and records what the upstream answers."""

    def __init__(self, store: Store, settings: Settings):
        self.store = store
        self.settings = settings

    # -- request side -------------------------------------------------------

    def begin(self, method: str, path: str, headers: dict[str, str], content: bytes) -> Exchange:
        """Decide what to do with a request. Never raises for bad input: it refuses."""
        s = self.settings
        ex = Exchange(method=method, path=path)
        if s.mode is Mode.PASSTHROUGH:
            return ex
        ex.endpoint = endpoints.match(method, path.split("?", 1)[0])
        if ex.endpoint is None:
            if s.mode is Mode.REPLAY:
                return self._refuse(ex, errors.not_replayable(f"{method} {path.split('?', 1)[0]}", "is not an endpoint seedtape records"))
            ex.status = "passthrough"
            return ex

        try:
            body = _json_object(content)
        except ValueError as e:
            return self._refuse(ex, errors.bad_request(str(e)))

        if ex.endpoint.takes_seed:
            injected, ex.seed = s.seed.apply(body)
            if injected is not body:
                body = injected
                ex.forward_body = json.dumps(body, ensure_ascii=False).encode()
        ex.stream = body.get("stream") is True
        path_only, _, query = path.partition("?")
        ex.canonical = canonicalize(
            method,
            path_only,
            query,
            body,
            ignored_fields=s.ignored_fields,
            namespace=headers.get(wire.NAMESPACE, ""),
        )

        if ex.stream:
            # Streams are forwarded live and not recorded (yet).
            if s.mode is Mode.REPLAY:
                return self._refuse(ex, errors.not_replayable(path_only, "was asked with stream=true, which seedtape cannot replay yet"))
            ex.status = "live"
            ex.note = "streamed responses are not recorded"
            return ex

        if s.mode.serves_recordings:
            entry = self.store.get(ex.key, s.fingerprint)
            if entry is not None:
                return self._serve(ex, entry)
            if s.mode is Mode.REPLAY:
                ex.status = "miss"
                return self._refuse(ex, errors.replay_miss(ex.key, path_only, self._miss_detail(ex.key)), status="miss")
        ex.status = "live"
        return ex

    def _miss_detail(self, key: str) -> str:
        pinned = self.settings.fingerprint
        if pinned:
            fps = self.store.fingerprints(key)
            if fps:
                return f"It is recorded only under fingerprint(s) {', '.join(fps)}, and replay is pinned to {pinned}."
        return ""

    def _serve(self, ex: Exchange, entry: TapeEntry) -> Exchange:
        ex.status = "hit"
        ex.fingerprint = entry.fingerprint
        headers = [(k, v) for k, v in entry.headers]
        ex.reply = Reply(entry.status, headers + ex.headers(), entry.body)
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
        if ex.stream:
            ex.status = "unrecorded"
            return ex
        if not 200 <= status < 300:
            ex.status, ex.note = "unrecorded", f"upstream answered {status}"
            return ex
        if not isinstance(body, dict) or "error" in body:
            ex.status, ex.note = "unrecorded", "upstream body is not a JSON completion"
            return ex
        if not self.settings.mode.records:
            return ex
        model = body.get("model") or (ex.canonical.body or {}).get("model", "")
        self.store.put(
            TapeEntry(
                key=ex.key,
                fingerprint=ex.fingerprint,
                endpoint=ex.endpoint.name,
                request=ex.canonical.to_json(),
                status=status,
                headers=safe_headers(headers),
                body=content,
                format="json",
                model=str(model),
                namespace=ex.canonical.namespace,
                upstream_ms=round((time.monotonic() - ex.started) * 1000, 1),
            )
        )
        ex.status = "recorded"
        return ex
