"""The canonical request and its request key.

Two requests that mean the same thing must get the same key, however a client
spelled them. The rules are versioned (KEY_VERSION enters every key), so a rule
change can never silently serve an old recording for a new meaning.

Rules, version 1 (docs/request-key.md repeats them):

1. method is upper-cased.
2. path: repeated slashes collapse, a trailing slash is dropped.
3. query: parameters sorted by name, then value; parameters on the query
   ignore list (``--ignore-query``, e.g. Azure's ``api-version``) are removed.
4. body, when it parses as JSON: keys sorted, compact separators, UTF-8;
   floats with an integral value are written as ints (1.0 == 1); top-level
   fields on the ignore list are removed; ``stream`` and ``stream_options``
   never count (the format is part of the tape entry, not the key).
   A body that is not JSON enters as the sha256 of its bytes.
5. namespace (header ``seedtape-namespace``) enters the key; no other header
   does, so Authorization, api-key, user-agent and SDK telemetry
   (x-stainless-*) can never split or leak into a key. The one exception is
   opt-in (``--key-by-credential``): a salted hash of the credential, never
   the credential itself.
6. occurrence (``--repeats sequence``): the Nth identical request of a scope
   enters the key as ``occurrence: N`` from the second one on, so the first
   keeps the key it has without the option.
7. volatile values, opt-in (keyrules.py): after rule 4, every field an
   ``--ignore-path`` reaches is removed from the body (``messages.*.tool_call_id``),
   then every match of a ``--mask`` regex in a string value becomes ``<masked>``.
   Without them a body is keyed exactly as before, so no key changes: the
   version stays 1. The rules that changed something are kept on the canonical
   request (``applied``), outside the key.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from urllib.parse import parse_qsl

from seedtape.proxy.key.keyrules import IgnorePath, Mask, RuleUse, apply_in_place

KEY_VERSION = 1

# Fields that never change an answer: who asks, labels, server-side storage, cache routing.
DEFAULT_IGNORED_FIELDS: tuple[str, ...] = ("user", "metadata", "store", "prompt_cache_key", "safety_identifier")
# Transport details: the tape entry records the format, the key does not.
ALWAYS_IGNORED_FIELDS: frozenset[str] = frozenset({"stream", "stream_options"})

_SLASHES = re.compile(r"/{2,}")


@dataclass(frozen=True)
class CanonicalRequest:
    """What a request means, minus everything that must not split or leak a key."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    body: object  # parsed JSON (after ignore rules), or {"sha256": ...} for raw bytes
    namespace: str = ""
    credential: str = ""  # salted hash of the API key, only with --key-by-credential
    occurrence: int = 1  # the Nth identical request of its scope, with --repeats sequence
    # the --ignore-path and --mask rules that changed the body; never part of the key or to_json
    applied: tuple[RuleUse, ...] = field(default=(), compare=False)

    def to_json(self) -> dict:
        out = {
            "v": KEY_VERSION,
            "method": self.method,
            "path": self.path,
            "query": [list(p) for p in self.query],
            "namespace": self.namespace,
            "body": self.body,
        }
        if self.credential:
            out["credential"] = self.credential
        if self.occurrence > 1:
            out["occurrence"] = self.occurrence
        return out

    def canonical_bytes(self) -> bytes:
        return dumps_canonical(self.to_json())

    @cached_property  # a hit reads it several times; compute the sha256 once
    def key(self) -> str:
        return hashlib.sha256(self.canonical_bytes()).hexdigest()


@functools.lru_cache(maxsize=4096)  # a process sees few distinct paths; this runs on every request
def normalize_path(path: str) -> str:
    """Path without query, with repeated and trailing slashes removed."""
    path = path.split("?", 1)[0] or "/"
    path = _SLASHES.sub("/", path)
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    return path


def normalize_query(query: str, ignored: frozenset[str] | set[str] = frozenset()) -> tuple[tuple[str, str], ...]:
    if not query:
        return ()
    return tuple(sorted(p for p in parse_qsl(query, keep_blank_values=True) if p[0] not in ignored))


def normalize_numbers(value: object) -> object:
    """Integral floats become ints, recursively, so 1.0 and 1 hash alike."""
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        return value
    if isinstance(value, dict):
        return {k: normalize_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize_numbers(v) for v in value]
    return value


def dumps_canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8", "surrogatepass"
    )


def canonical_body(
    body: object,
    ignored_fields: frozenset[str] | set[str],
    *,
    ignored_paths: Sequence[IgnorePath] = (),
    masks: Sequence[Mask] = (),
) -> object:
    """The body as it enters the key: ignore rules applied, numbers normalized."""
    return rules_body(body, ignored_fields, ignored_paths=ignored_paths, masks=masks)[0]


def rules_body(
    body: object,
    ignored_fields: frozenset[str] | set[str],
    *,
    ignored_paths: Sequence[IgnorePath] = (),
    masks: Sequence[Mask] = (),
) -> tuple[object, tuple[RuleUse, ...]]:
    """canonical_body, and the --ignore-path / --mask rules that changed it (keyrules.MaskTimeout: a mask ran too long)."""
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in ignored_fields and k not in ALWAYS_IGNORED_FIELDS}
    body = normalize_numbers(body)  # a fresh copy of every list and object: the rules below may change it
    if not ignored_paths and not masks:
        return body, ()
    return apply_in_place(body, ignored_paths, masks)


def raw_body(content: bytes) -> dict:
    return {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}


def canonicalize(
    method: str,
    path: str,
    query: str,
    body: object,
    *,
    ignored_fields: frozenset[str] | set[str] = frozenset(DEFAULT_IGNORED_FIELDS),
    ignored_query: frozenset[str] | set[str] = frozenset(),
    namespace: str = "",
    credential: str = "",
    ignored_paths: Sequence[IgnorePath] = (),
    masks: Sequence[Mask] = (),
) -> CanonicalRequest:
    """Build the canonical request; ``body`` is parsed JSON, or bytes when it is not JSON.

    ``ignored_paths`` and ``masks`` (keyrules.parse_path, keyrules.compile_mask) act on a JSON
    body only; a mask that runs too long raises keyrules.MaskTimeout (a ValueError).
    """
    applied: tuple[RuleUse, ...] = ()
    if isinstance(body, (bytes, bytearray)):
        cbody: object = raw_body(bytes(body)) if body else None
    else:
        cbody, applied = rules_body(body, ignored_fields, ignored_paths=ignored_paths, masks=masks)
    return CanonicalRequest(
        method=method.upper(),
        path=normalize_path(path),
        query=normalize_query(query, ignored_query),
        body=cbody,
        namespace=namespace,
        credential=credential,
        applied=applied,
    )
