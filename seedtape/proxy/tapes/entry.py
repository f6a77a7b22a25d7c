"""Tape entries: one recorded exchange for a (request key, fingerprint).

Stored as a small JSON header followed by the raw response body, so replay
gives back the exact bytes the upstream sent and the header stays readable.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import asdict, dataclass, field

from seedtape.proxy import dialects

MAGIC = b"ST1"
_LEN = struct.Struct(">I")

MAX_FINGERPRINT = 200  # real ones are ~13 characters; the store's keys hold at most 511 bytes
_FINGERPRINT = re.compile(r"[\x21-\x7e]+")


def fingerprint_problem(fp: object) -> str | None:
    """Why ``fp`` cannot be a stored fingerprint (None: it can).

    A fingerprint becomes a response header, a file name stem and part of a store key,
    and it comes from an untrusted upstream or tape: visible ASCII only, bounded.
    """
    if not isinstance(fp, str) or not fp:
        return "the fingerprint is empty"
    if len(fp) > MAX_FINGERPRINT:
        return f"the fingerprint has {len(fp)} characters (at most {MAX_FINGERPRINT})"
    if not _FINGERPRINT.fullmatch(fp):
        return "the fingerprint holds spaces, control characters or non-ASCII"
    return None


def recordable_status(status: object) -> bool:
    """The statuses seedtape records: a 2xx that carries a body (never 204/205, 1xx, 3xx or errors)."""
    return isinstance(status, int) and not isinstance(status, bool) and 200 <= status < 300 and status not in (204, 205)


class CorruptEntry(ValueError):
    """A stored value that is not a complete tape entry."""


@dataclass
class TapeEntry:
    key: str
    fingerprint: str
    endpoint: str
    request: dict  # the canonical request (CanonicalRequest.to_json())
    status: int
    headers: list[list[str]]
    body: bytes
    format: str = "json"  # "json" or "sse"
    model: str = ""
    namespace: str = ""
    recorded_at: float = 0.0
    first_recorded_at: float = 0.0
    times_recorded: int = 1
    upstream_ms: float | None = None
    extra: dict = field(default_factory=dict)

    def encode(self) -> bytes:
        meta = asdict(self)
        del meta["body"]
        # ASCII escapes: a request may hold lone surrogates ("\ud800" is valid JSON, not valid UTF-8).
        head = json.dumps(meta, separators=(",", ":")).encode()
        return MAGIC + _LEN.pack(len(head)) + head + _LEN.pack(len(self.body)) + self.body

    @classmethod
    def decode(cls, data: bytes) -> TapeEntry:
        data = bytes(data)
        try:
            if not data.startswith(MAGIC):
                raise CorruptEntry("bad magic")
            (hlen,) = _LEN.unpack_from(data, 3)
            head = data[7 : 7 + hlen]
            (blen,) = _LEN.unpack_from(data, 7 + hlen)
            body = data[11 + hlen :]
            if len(head) != hlen or len(body) != blen:
                raise CorruptEntry("truncated")
            meta = json.loads(head)
            if not isinstance(meta, dict):
                raise CorruptEntry("the header is not an object")
            return cls(body=body, **{k: v for k, v in meta.items() if k in _FIELDS})
        except (struct.error, ValueError, TypeError) as e:
            raise CorruptEntry(str(e)) from e

    @staticmethod
    def decode_header(data: bytes) -> dict:
        """Only the JSON header of an encoded entry (no body copy): for scans over many entries."""
        try:
            if not data.startswith(MAGIC):
                raise CorruptEntry("bad magic")
            (hlen,) = _LEN.unpack_from(data, 3)
            meta = json.loads(data[7 : 7 + hlen])
        except (struct.error, ValueError) as e:
            raise CorruptEntry(str(e)) from e
        if not isinstance(meta, dict):
            raise CorruptEntry("the header is not an object")
        return meta

    def sse_chunks(self) -> list[dict]:
        """The JSON chunks of a recorded stream, without its end marker."""
        return dialects.named(self.endpoint).chunks(self.body)

    def json_body(self) -> object | None:
        if self.format != "json":
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None


_FIELDS = frozenset(TapeEntry.__dataclass_fields__) - {"body"}
