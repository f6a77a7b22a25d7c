"""The remote tier: a shared store of tape entries on Redis (or Redis Cluster), behind the local store.

Proxies on many machines share recordings through it. Entries are immutable per (request key,
fingerprint): the first one written stays, so two proxies recording one request at once can
disagree but never corrupt anything. Keys (PREFIX keeps projects apart in one Redis; ``{KEY}``
is a cluster hash tag, so a key's entries, fingerprints and pointer live in one slot and one
Lua script can update them atomically):

- ``P:e:{KEY}:FP``  the entry: b"SR1" | sha256(entry bytes) | the entry bytes, exactly as the
                    local store holds them (TapeEntry.encode: already redacted, compressed).
- ``P:f:{KEY}``     a set: the key's fingerprints.
- ``P:l:{KEY}``     the newest pointer, JSON {"fingerprint", "recorded_at"}: the fingerprint
                    recorded most recently, what replay serves.
- ``P:events``      a stream of audit and divergence events (field ``event``: JSON), capped
                    at about EVENTS_MAX.
- ``P:count``       entries added (approximate: kept apart from the entries' slots).

The remote is untrusted: every value read is checked (magic, checksum, size, that it decodes to
the key and fingerprint asked for) and a bad one is a RemoteError naming the key, never served.
Every call has a timeout and no retry, so a hung Redis costs a caller at most ``timeout``. No
password ever appears in a message: names and errors carry the URL through ``redact_url``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from seedtape.proxy.tapes.entry import CorruptEntry, TapeEntry, fingerprint_problem

log = logging.getLogger("seedtape")

MAGIC = b"SR1"
_DIGEST = 32  # sha256
MAX_ENTRY_BYTES = 128 << 20  # the largest entry shared (and read back): Redis holds it all in memory
EVENTS_MAX = 100_000  # the stream is trimmed to about this many events (MAXLEN ~)
MAX_EVENT_BYTES = 16 << 20
SCHEMES = {"redis": (False, False), "rediss": (True, False), "redis+cluster": (False, True), "rediss+cluster": (True, True)}
_PREFIX = re.compile(r"[A-Za-z0-9._-]{1,64}")  # no glob or hash-tag characters: it enters SCAN patterns and cluster keys
_KEY = re.compile(r"[0-9a-f]{64}")
_BATCH = 256  # commands per pipeline

# One atomic put. KEYS: entry, fingerprint set, newest pointer. ARGV: value, fingerprint, recorded_at, pointer JSON.
# The entry is set only if absent; the pointer moves only to a recording at least as recent as the one it names
# (as the local store's). A conflicting entry leaves the pointer alone: the remote keeps its own recording.
_PUT = """
local cur = redis.call('GET', KEYS[1])
local outcome = 'added'
if cur then
  if cur ~= ARGV[1] then return 'conflict' end
  outcome = 'same'
else
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SADD', KEYS[2], ARGV[2])
end
local p = redis.call('GET', KEYS[3])
if p then
  local ok, d = pcall(cjson.decode, p)
  if ok and type(d) == 'table' and tonumber(d['recorded_at']) and tonumber(d['recorded_at']) > tonumber(ARGV[3]) then
    return outcome
  end
end
redis.call('SET', KEYS[3], ARGV[4])
return outcome
"""


class RemoteError(RuntimeError):
    """The remote is unreachable, timed out, refused a write, or answered with something that is not an entry."""


class BadRemoteEntry(RemoteError):
    """The remote answered, but what it holds for one request key is not a sound entry (it is not used)."""


class EntryTooLarge(ValueError):
    """An entry over MAX_ENTRY_BYTES: kept locally, never shared (not a remote failure: retrying cannot help)."""


def redact_url(url: str) -> str:
    """``url`` with its password (and any ``password=`` query value) replaced by ``***``; the user name stays.

    A lone user-info part (``redis://SECRET@host``) is redacted whole: some clients read it as a password.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return re.sub(r"[^@/]*@", "***@", url, count=1) if "@" in url else url
    cut = len(rest)
    for c in "/?#":
        i = rest.find(c, rest.rfind("@") + 1 if "@" in rest else 0)
        if i >= 0:
            cut = min(cut, i)
    netloc, tail = rest[:cut], rest[cut:]
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    tail = re.sub(r"(?i)([?&](?:password|pass|auth)=)[^&#]*", r"\1***", tail)
    return f"{scheme}://{netloc}{tail}"


def _secrets(url: str) -> list[str]:
    """The secret parts of ``url`` (what redact_url hides), as written and decoded: scrubbed out of third-party messages."""
    try:
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        found = [parts.password or (parts.username if userinfo and ":" not in userinfo else None)]
        found += [v for k, v in parse_qsl(parts.query) if k.lower() in ("password", "pass", "auth")]
    except ValueError:
        return []
    return sorted({s for f in found if f for s in (f, unquote(f))}, key=len, reverse=True)


def check_prefix(prefix: str) -> None:
    """ValueError saying what a key prefix may hold: it enters SCAN patterns and cluster keys."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"remote prefix {prefix!r}: use 1 to 64 letters, digits, '.', '_' or '-'")


@dataclass(frozen=True)
class RemoteConfig:
    """Where the remote is and how to use it; ``timeout``: seconds for connecting and for every call."""

    url: str
    prefix: str = "seedtape"
    readonly: bool = False
    timeout: float = 2.0

    def __post_init__(self) -> None:
        parse_url(self.url)
        check_prefix(self.prefix)
        if not self.timeout > 0:
            raise ValueError(f"remote timeout {self.timeout!r}: use a number of seconds above 0")

    def __repr__(self) -> str:  # never the password (a dataclass repr would print the URL as given)
        return f"RemoteConfig(url={redact_url(self.url)!r}, prefix={self.prefix!r}, readonly={self.readonly}, timeout={self.timeout})"


@dataclass(frozen=True)
class _Target:
    tls: bool
    cluster: bool
    client_url: str  # what redis-py's from_url takes (the scheme without "+cluster")


def parse_url(url: str) -> _Target:
    """Check a remote URL; ValueError (one line, redacted) for anything seedtape cannot connect to."""
    shown = redact_url(url)
    forms = "redis://[user:password@]host:port/db, rediss://... (TLS), redis+cluster://[user:password@]host:port"
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ValueError(f"remote URL {shown}: use {forms} (or rediss+cluster://)")
    tls, cluster = SCHEMES[scheme.lower()]
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise ValueError(f"remote URL {shown}: the host or port is not valid; use {forms}") from None
    if not host:
        raise ValueError(f"remote URL {shown}: no host; use {forms}")
    path = unquote(parts.path).strip("/")
    if path and not path.isdigit():
        raise ValueError(f"remote URL {shown}: the database {path!r} is not a number")
    if cluster and path not in ("", "0"):
        raise ValueError(f"remote URL {shown}: a Redis Cluster has only database 0")
    if cluster and any(name.lower() == "db" for name, _ in parse_qsl(parts.query)):
        raise ValueError(f"remote URL {shown}: a Redis Cluster has only database 0")
    del port  # checked (urlsplit raises for a bad one); redis-py defaults a missing one to 6379
    return _Target(tls=tls, cluster=cluster, client_url=("rediss" if tls else "redis") + url[len(scheme) :])


class Remote:
    """A remote store. Connecting is lazy: the constructor only checks the URL; ``ping`` tells whether it answers."""

    def __init__(self, config: RemoteConfig):
        self.config = config
        self.prefix = config.prefix
        self.readonly = config.readonly
        self._target = parse_url(config.url)
        self.cluster = self._target.cluster
        self.name = f"{redact_url(config.url)} (prefix {config.prefix})"
        self._secrets = _secrets(config.url)
        self._client: Any = None
        self._lock = threading.Lock()
        self._put_script: Any = None

    # -- plumbing -------------------------------------------------------------

    def _redis(self) -> Any:
        """The client, made on first use (a cluster client reads the topology when made)."""
        with self._lock:
            if self._client is None:
                kw: dict[str, Any] = {
                    "socket_timeout": self.config.timeout,
                    "socket_connect_timeout": self.config.timeout,
                    "client_name": "seedtape",
                }
                with self._failing("does not answer"):
                    if self.cluster:
                        client: Any = RedisCluster.from_url(self._target.client_url, retry=Retry(NoBackoff(), 0), **kw)
                    else:
                        client = redis.Redis.from_url(self._target.client_url, retry=Retry(NoBackoff(), 0), **kw)
                self._put_script = client.register_script(_PUT)
                self._client = client
            return self._client

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _failing(self, what: str) -> _Failing:
        return _Failing(self, what)

    def _k(self, kind: str, key: str, fingerprint: str | None = None) -> str:
        k = f"{self.prefix}:{kind}:{{{key}}}"
        return k if fingerprint is None else f"{k}:{fingerprint}"

    def _bad(self, key: str, fingerprint: str | None, why: str) -> BadRemoteEntry:
        where = f"{key}" + (f" ({fingerprint})" if fingerprint else "")
        return BadRemoteEntry(f"the remote {self.name} holds a bad entry for request key {where}: {why}; it is not used")

    def _writable(self) -> None:
        if self.readonly:
            raise RemoteError(f"the remote {self.name} is read-only (--remote-readonly): nothing is written to it")

    @staticmethod
    def _check_key(key: str) -> None:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f"{key!r} is not a request key (64 lowercase hex digits)")

    def _value(self, raw: bytes) -> bytes:
        return MAGIC + hashlib.sha256(raw).digest() + raw

    def _verified(self, key: str, fingerprint: str, value: bytes) -> tuple[TapeEntry, bytes]:
        """The entry a stored value holds, after every check; RemoteError naming the key for anything else."""
        if len(value) > len(MAGIC) + _DIGEST + MAX_ENTRY_BYTES:
            raise self._bad(key, fingerprint, f"it is larger than {MAX_ENTRY_BYTES} bytes")
        if not value.startswith(MAGIC) or len(value) < len(MAGIC) + _DIGEST:
            raise self._bad(key, fingerprint, "it is not a seedtape remote value (bad magic)")
        digest, raw = value[len(MAGIC) : len(MAGIC) + _DIGEST], value[len(MAGIC) + _DIGEST :]
        if hashlib.sha256(raw).digest() != digest:
            raise self._bad(key, fingerprint, "its checksum does not match (damaged or truncated)")
        try:
            entry = TapeEntry.decode(raw)
        except CorruptEntry as e:
            raise self._bad(key, fingerprint, f"it does not decode ({e})") from None
        if entry.key != key or entry.fingerprint != fingerprint:
            raise self._bad(key, fingerprint, "it holds another request key or fingerprint")
        return entry, raw

    def _pointer(self, key: str, data: bytes | None) -> str | None:
        if data is None:
            return None
        try:
            doc = json.loads(data)
            fp = doc["fingerprint"]
            float(doc["recorded_at"])
        except (ValueError, TypeError, KeyError):
            raise self._bad(key, None, "its newest-fingerprint pointer is not valid JSON") from None
        problem = fingerprint_problem(fp)
        if problem:
            raise self._bad(key, None, f"its newest-fingerprint pointer is bad ({problem})")
        return fp

    def _read(self, key: str, fingerprint: str) -> Any:
        """GETRANGE: at most one byte more than a value may hold, so a huge value is refused, not read."""
        return self._redis().getrange(self._k("e", key, fingerprint), 0, len(MAGIC) + _DIGEST + MAX_ENTRY_BYTES)

    # -- API -------------------------------------------------------------------

    def ping(self) -> None:
        """Return when the remote answers; RemoteError (naming it, redacted) when it does not."""
        with self._failing("does not answer"):
            self._redis().ping()

    def get_raw(self, key: str, fingerprint: str | None = None) -> tuple[str, bytes] | None:
        """(fingerprint, the entry's bytes as TapeEntry.encode wrote them), checked; None when the remote has none."""
        found = self._get(key, fingerprint)
        return None if found is None else (found[0].fingerprint, found[1])

    def get(self, key: str, fingerprint: str | None = None) -> TapeEntry | None:
        """The entry under ``fingerprint``, or under the key's newest fingerprint; None when the remote has none."""
        found = self._get(key, fingerprint)
        return None if found is None else found[0]

    def _get(self, key: str, fingerprint: str | None) -> tuple[TapeEntry, bytes] | None:
        self._check_key(key)
        with self._failing(f"failed reading request key {key}"):
            fp = fingerprint
            if fp is None:
                fp = self._pointer(key, self._redis().get(self._k("l", key)))
                if fp is None:
                    return None
            elif fingerprint_problem(fp):
                return None  # no stored entry can have it
            value = self._read(key, fp)
        if not value:  # GETRANGE of a missing key is b""
            return None
        return self._verified(key, fp, bytes(value))

    def _put_args(self, entry: TapeEntry, raw: bytes | None) -> tuple[list[str], list[bytes | str]]:
        if raw is None:
            raw = entry.encode()
        self._check_key(entry.key)
        problem = fingerprint_problem(entry.fingerprint)
        if problem:
            raise ValueError(f"request key {entry.key}: {problem}")
        if len(raw) > MAX_ENTRY_BYTES:
            raise EntryTooLarge(f"request key {entry.key} ({entry.fingerprint}): {len(raw)} bytes, over {MAX_ENTRY_BYTES}")
        try:
            head = TapeEntry.decode_header(raw)
        except CorruptEntry as e:
            raise ValueError(f"request key {entry.key}: the bytes to share are not an entry ({e})") from None
        if head.get("key") != entry.key or head.get("fingerprint") != entry.fingerprint:
            raise ValueError(f"request key {entry.key}: the bytes to share hold another key or fingerprint")
        at = float(head.get("recorded_at") or 0.0)
        pointer = json.dumps({"fingerprint": entry.fingerprint, "recorded_at": at})
        keys = [self._k("e", entry.key, entry.fingerprint), self._k("f", entry.key), self._k("l", entry.key)]
        return keys, [self._value(raw), entry.fingerprint, repr(at), pointer]

    def put(self, entry: TapeEntry, raw: bytes | None = None) -> str:
        """Share one entry (``raw``: its encoded bytes, default ``entry.encode()``): "added", "same" or "conflict"."""
        return self.put_many([(entry, raw)])[0]

    def put_many(self, entries: Iterable[TapeEntry | tuple[TapeEntry, bytes | None]]) -> list[str]:
        """``put`` for many entries, pipelined (each one atomic on its own); outcomes in order."""
        self._writable()
        calls = [self._put_args(*(e if isinstance(e, tuple) else (e, None))) for e in entries]
        out: list[str] = []
        with self._failing("failed storing entries"):
            client = self._redis()
            for start in range(0, len(calls), _BATCH):
                pipe = client.pipeline(transaction=False)
                for keys, args in calls[start : start + _BATCH]:
                    if self.cluster:  # a cluster pipeline refuses EVALSHA; EVAL sends the script's text
                        pipe.execute_command("EVAL", _PUT, len(keys), *keys, *args)
                    else:
                        self._put_script(keys=keys, args=args, client=pipe)
                out += [r.decode() if isinstance(r, bytes) else str(r) for r in pipe.execute()]
            added = out.count("added")
            if added:
                client.incrby(f"{self.prefix}:count", added)
        if set(out) - {"added", "same", "conflict"}:
            raise RemoteError(f"the remote {self.name} answered a write with something unexpected: {sorted(set(out))}")
        return out

    def fingerprints(self, key: str) -> list[str]:
        """The fingerprints the remote holds for ``key``, sorted."""
        self._check_key(key)
        with self._failing(f"failed reading request key {key}"):
            members = self._redis().smembers(self._k("f", key))
        out = []
        for m in members:
            fp = m.decode("ascii", "replace") if isinstance(m, bytes) else str(m)
            if fingerprint_problem(fp):
                raise self._bad(key, None, "its fingerprint set holds a value that is not a fingerprint")
            out.append(fp)
        return sorted(out)

    def keys(self) -> Iterator[str]:
        """Every request key with a newest pointer (SCAN; every primary of a cluster), each once."""
        head, seen = f"{self.prefix}:l:{{", set()
        with self._failing("failed listing request keys"):
            client = self._redis()
            kw = {"target_nodes": RedisCluster.PRIMARIES} if self.cluster else {}
            for k in client.scan_iter(match=f"{self.prefix}:l:*", count=1000, **kw):
                text = k.decode("ascii", "replace") if isinstance(k, bytes) else str(k)
                key = text[len(head) : -1] if text.startswith(head) and text.endswith("}") else ""
                if not _KEY.fullmatch(key):
                    log.warning("seedtape: the remote %s holds %r, not a seedtape key: ignored", self.name, text[:200])
                    continue
                if key not in seen:
                    seen.add(key)
                    yield key

    def entries(self, errors: list[RemoteError] | None = None) -> Iterator[tuple[TapeEntry, bytes]]:
        """Every entry with its bytes, checked, by request key.

        A bad entry raises RemoteError, or with ``errors`` is appended there and skipped (so one
        damaged value does not stop a pull).
        """
        batch: list[str] = []
        for key in self.keys():
            batch.append(key)
            if len(batch) >= _BATCH:
                yield from self._entries_of(batch, errors)
                batch = []
        if batch:
            yield from self._entries_of(batch, errors)

    def _entries_of(self, keys: list[str], errors: list[RemoteError] | None) -> Iterator[tuple[TapeEntry, bytes]]:
        fps = {key: self.fingerprints(key) for key in keys}
        pairs = [(key, fp) for key in keys for fp in fps[key]]
        with self._failing("failed reading entries"):
            pipe = self._redis().pipeline(transaction=False)
            for key, fp in pairs:
                pipe.getrange(self._k("e", key, fp), 0, len(MAGIC) + _DIGEST + MAX_ENTRY_BYTES)
            values = pipe.execute()
        for (key, fp), value in zip(pairs, values):
            if not value:
                continue  # listed but gone (evicted, deleted by hand)
            try:
                yield self._verified(key, fp, bytes(value))
            except RemoteError as e:
                if errors is None:
                    raise
                errors.append(e)

    def add_event(self, event: dict) -> str:
        """Append an audit or divergence event to the fleet's stream (trimmed to about EVENTS_MAX); its stream id."""
        self._writable()
        data = json.dumps(event, ensure_ascii=False).encode()
        with self._failing("failed storing an event"):
            found = self._redis().xadd(f"{self.prefix}:events", {"event": data}, maxlen=EVENTS_MAX, approximate=True)
        return found.decode() if isinstance(found, bytes) else str(found)

    def events(self) -> list[dict]:
        """Every event in the stream, oldest first, each with its stream ``id``; values that are not events are skipped."""
        out: list[dict] = []
        start = "-"
        with self._failing("failed reading events"):
            client = self._redis()
            while True:
                page = client.xrange(f"{self.prefix}:events", min=start, max="+", count=1000)
                for sid, fields in page:
                    event_id = sid.decode() if isinstance(sid, bytes) else str(sid)
                    doc = self._event(event_id, fields)
                    if doc is not None:
                        out.append(doc)
                if len(page) < 1000:
                    return out
                start = "(" + event_id

    def _event(self, event_id: str, fields: dict) -> dict | None:
        data = fields.get(b"event", fields.get("event"))
        try:
            if data is None or len(data) > MAX_EVENT_BYTES:
                raise ValueError("missing or too large")
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError as e:
            log.warning("seedtape: the remote %s holds a bad event %s (%s): skipped", self.name, event_id, e)
            return None
        return {"id": event_id, **doc}

    def count(self) -> int:
        """Entries added to the remote (approximate: counted apart from the entries)."""
        with self._failing("failed counting entries"):
            n = self._redis().get(f"{self.prefix}:count")
        try:
            return max(0, int(n or 0))
        except ValueError:
            return 0

    def info(self) -> dict:
        return {
            "name": self.name,
            "prefix": self.prefix,
            "readonly": self.readonly,
            "cluster": self.cluster,
            "entries": self.count(),
        }

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                client.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Failing:
    """Turns what redis-py (or the network) raises into a RemoteError naming the remote, password scrubbed."""

    def __init__(self, remote: Remote, what: str):
        self.remote, self.what = remote, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None or isinstance(exc, RemoteError):
            return
        if isinstance(exc, redis.exceptions.TimeoutError):
            reason = f"timed out after {self.remote.config.timeout:g}s"
        elif isinstance(exc, (redis.RedisError, redis.exceptions.RedisClusterException, OSError)):
            reason = self.remote._scrub(f"{type(exc).__name__}: {exc}")
        else:
            return
        raise RemoteError(f"the remote {self.remote.name} {self.what}: {reason}") from None
