"""Tape entries: one recorded exchange for a (request key, fingerprint).

In memory ``body`` is always the exact bytes the upstream sent (replay serves them as they are).
On disk (a value in the store) an entry is its metadata as JSON (the head) and its body, each
one zstd frame (level LEVEL, with the DICTIONARY below) when that makes it at least an eighth
smaller, else stored as it is:

    ST2 format:  b"ST2" | flags (1 byte) | head size (u32) | body size (u32) | head | body
                 flags: 1 = the head is a zstd frame, 2 = the body is a zstd frame (other bits
                 are refused: a newer format); sizes are the stored sizes, big-endian.
    ST1 format:  b"ST1" | head size (u32) | head | body size (u32) | body    (read, never written)

A store may come from an untrusted source, so decoding is bounded: a frame must state its
decompressed size, at most MAX_PART, and must decompress to exactly that.
"""

from __future__ import annotations

import json
import re
import struct
import threading
from dataclasses import dataclass, field

import zstandard

from seedtape.proxy import dialects

MAGIC = b"ST2"  # what encode writes
MAGIC_V1 = b"ST1"  # uncompressed entries, written before; still decoded
_HEADER = struct.Struct(">3sBII")  # magic, flags, stored head size, stored body size
_LEN = struct.Struct(">I")  # ST1 sizes
HEAD_ZSTD, BODY_ZSTD = 1, 2
_KNOWN_FLAGS = HEAD_ZSTD | BODY_ZSTD

# zstd's default level. In bench/bench_store_size.py levels 6 to 9 save another 3-7% for 1.7-2.8x the
# encode time (on the proxy's thread, once per recording), level 12 takes 17x; decoding costs the same.
LEVEL = 3
MIN_COMPRESS = 64  # below this a zstd frame's own ~10 bytes eat what it could save
MAX_PART = 256 << 20  # the most a compressed head or body may decompress to (tapefile's MAX_BODY too); larger: stored raw

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


# Every ST2 frame is compressed with this raw-content dictionary: the text an entry most often
# repeats (field names, the headers seedtape keeps, the shapes of answers and stream events), so
# that a small entry need not spell it out again: it makes typical JSON entries ~30% smaller,
# which keeps more of them within one LMDB page. Part of the ST2 format: never edit it (another
# dictionary needs a flag of its own; tests pin its sha256).
DICTIONARY = b"".join(
    [
        b'{\n  "object": "list",\n  "data": [\n    {\n      "object": "embedding",\n      "index": 0,\n'
        b'      "embedding": [\n        -0.0',
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":1,'
        b'"item_id":"msg_","output_index":0,"content_index":0,"delta":"","logprobs":[],"obfuscation":""}\n\n',
        b'data: {"id":"chatcmpl-","object":"chat.completion.chunk","created":17,"model":"gpt-4o-mini-2024-07-18",'
        b'"service_tier":"default","system_fingerprint":"fp_","choices":[{"index":0,"delta":{"role":"assistant",'
        b'"content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":""}\n\n',
        b'data: {"id":"chatcmpl-","object":"chat.completion.chunk","created":17,"model":"gpt-4o-mini-2024-07-18",'
        b'"service_tier":"default","system_fingerprint":"fp_","choices":[{"index":0,"delta":{"content":" the"},'
        b'"logprobs":null,"finish_reason":null}],"obfuscation":""}\n\n',
        b'data: {"id":"chatcmpl-","object":"chat.completion.chunk","created":17,"model":"gpt-4o-mini-2024-07-18",'
        b'"service_tier":"default","system_fingerprint":"fp_","choices":[{"index":0,"delta":{},"logprobs":null,'
        b'"finish_reason":"stop"}],"obfuscation":""}\n\ndata: [DONE]\n\n',
        b'{\n  "id": "chatcmpl-",\n  "object": "chat.completion",\n  "created": 17,\n'
        b'  "model": "gpt-4o-mini-2024-07-18",\n  "choices": [\n    {\n      "index": 0,\n      "message": {\n'
        b'        "role": "assistant",\n        "content": "",\n        "refusal": null,\n        "annotations": []\n'
        b'      },\n      "logprobs": null,\n      "finish_reason": "stop"\n    }\n  ],\n  "usage": {\n'
        b'    "prompt_tokens": 1,\n    "completion_tokens": 1,\n    "total_tokens": 2,\n'
        b'    "prompt_tokens_details": {\n      "cached_tokens": 0,\n      "audio_tokens": 0\n    },\n'
        b'    "completion_tokens_details": {\n      "reasoning_tokens": 0,\n      "audio_tokens": 0,\n'
        b'      "accepted_prediction_tokens": 0,\n      "rejected_prediction_tokens": 0\n    }\n  },\n'
        b'  "service_tier": "default",\n  "system_fingerprint": "fp_"\n}',
        b'{"key":"","fingerprint":"fp_","endpoint":"chat.completions","request":{"v":1,"method":"POST",'
        b'"path":"/v1/chat/completions","query":[],"namespace":"","body":{"model":"gpt-4o-mini","messages":'
        b'[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":""},'
        b'{"role":"assistant","content":""}],"stream":true,"stream_options":{"include_usage":true},'
        b'"max_tokens":1,"temperature":0,"seed":1234}},"status":200,"headers":[["content-type","application/json"],'
        b'["content-type","text/event-stream; charset=utf-8"],["openai-processing-ms","1"],'
        b'["openai-version","2020-10-01"],["x-envoy-upstream-service-time","1"],'
        b'["x-ratelimit-limit-requests","10000"],["x-ratelimit-limit-tokens","30000000"],'
        b'["x-ratelimit-remaining-requests","9999"],["x-ratelimit-remaining-tokens","29999"],'
        b'["x-ratelimit-reset-requests","6ms"],["x-ratelimit-reset-tokens","0s"],["x-request-id","req_"]],'
        b'"format":"json","model":"gpt-4o-mini-2024-07-18","namespace":"","recorded_at":17,'
        b'"first_recorded_at":17,"times_recorded":1,"upstream_ms":1,"extra":{"gaps":[[0,0.0]],"include_usage":true}}',
    ]
)

_contexts = threading.local()  # zstandard's objects must not be shared by threads; a fresh context costs ~20 µs


def _dictionary() -> zstandard.ZstdCompressionDict:
    d = getattr(_contexts, "dictionary", None)
    if d is None:
        d = _contexts.dictionary = zstandard.ZstdCompressionDict(DICTIONARY, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return d


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_contexts, "compressor", None)
    if c is None:
        c = _contexts.compressor = zstandard.ZstdCompressor(
            level=LEVEL, dict_data=_dictionary(), write_content_size=True, write_checksum=False, write_dict_id=False
        )
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_contexts, "decompressor", None)
    if d is None:
        d = _contexts.decompressor = zstandard.ZstdDecompressor(dict_data=_dictionary())
    return d


def _pack(data: bytes) -> tuple[bytes, bool]:
    """``data`` as stored: a zstd frame (True) when that saves an eighth, else as it is (False)."""
    if MIN_COMPRESS <= len(data) <= MAX_PART:
        frame = _compressor().compress(data)
        if len(frame) <= len(data) - len(data) // 8:
            return frame, True
    return data, False


def _unpack(frame: bytes, part: str) -> bytes:
    """A stored zstd frame decompressed, refusing one that would grow past MAX_PART (a zstd bomb)."""
    try:
        size = zstandard.frame_content_size(frame)
    except zstandard.ZstdError:
        raise CorruptEntry(f"the {part} is flagged as compressed but is not a zstd frame") from None
    if size < 0:
        raise CorruptEntry(f"the {part} is a zstd frame that does not state its size (seedtape always writes it)")
    if size > MAX_PART:
        raise CorruptEntry(
            f"the {part} would decompress to {size} bytes, over the {MAX_PART} bytes an entry may hold: "
            "a corrupt or hostile store"
        )
    try:  # with the size stated, zstandard decompresses into exactly that many bytes or fails
        return _decompressor().decompress(frame, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise CorruptEntry(f"the {part}'s zstd frame is damaged ({e})") from None


def _parts(data: bytes, body: bool = True) -> tuple[bytes, bytes]:
    """The plain head and (when ``body``) the plain body of an encoded entry, in either format."""
    if data.startswith(MAGIC):
        _, flags, hlen, blen = _HEADER.unpack_from(data)
        if flags & ~_KNOWN_FLAGS:
            raise CorruptEntry(f"unknown flags {flags:#04x}: written by a newer seedtape?")
        start = _HEADER.size
        if len(data) != start + hlen + blen:
            raise CorruptEntry("truncated" if len(data) < start + hlen + blen else "trailing bytes")
        head = data[start : start + hlen]
        if flags & HEAD_ZSTD:
            head = _unpack(head, "head")
        if not body:
            return head, b""
        stored = data[start + hlen :]
        return head, _unpack(stored, "body") if flags & BODY_ZSTD else stored
    if data.startswith(MAGIC_V1):
        (hlen,) = _LEN.unpack_from(data, 3)
        head = data[7 : 7 + hlen]
        (blen,) = _LEN.unpack_from(data, 7 + hlen)
        stored = data[11 + hlen :]
        if len(head) != hlen or len(stored) != blen:
            raise CorruptEntry("truncated")
        return head, stored
    raise CorruptEntry("bad magic")


def plaintext(data: bytes) -> bytes:
    """A stored value with its compressed parts inflated: its head (JSON) and then its body.

    For whatever must read every byte a store holds (a test grepping a store for secrets, whose
    files hold entries compressed), not for replay; CorruptEntry as ``TapeEntry.decode``.
    """
    try:
        head, body = _parts(bytes(data))
    except (struct.error, ValueError, zstandard.ZstdError) as e:
        raise CorruptEntry(str(e)) from e
    return head + body


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
        """The entry as the store holds it (the ST2 format)."""
        meta = {name: getattr(self, name) for name in _HEAD_FIELDS}  # no deep copy (asdict): dumps only reads
        # ASCII escapes: a request may hold lone surrogates ("\ud800" is valid JSON, not valid UTF-8).
        head, head_zstd = _pack(json.dumps(meta, separators=(",", ":")).encode())
        body, body_zstd = _pack(bytes(self.body))
        flags = (HEAD_ZSTD if head_zstd else 0) | (BODY_ZSTD if body_zstd else 0)
        return _HEADER.pack(MAGIC, flags, len(head), len(body)) + head + body

    @classmethod
    def decode(cls, data: bytes) -> TapeEntry:
        """An entry from its stored bytes (ST2 or ST1); CorruptEntry for anything else."""
        try:
            head, body = _parts(bytes(data))
            meta = json.loads(head)
            if not isinstance(meta, dict):
                raise CorruptEntry("the header is not an object")
            return cls(body=body, **{k: v for k, v in meta.items() if k in _FIELDS})
        except (struct.error, ValueError, TypeError, zstandard.ZstdError) as e:
            raise CorruptEntry(str(e)) from e

    @staticmethod
    def decode_header(data: bytes) -> dict:
        """Only the JSON header of an encoded entry (its body is not decompressed): for scans over many entries."""
        try:
            head, _ = _parts(bytes(data), body=False)
            meta = json.loads(head)
        except (struct.error, ValueError, zstandard.ZstdError) as e:
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


_HEAD_FIELDS = tuple(name for name in TapeEntry.__dataclass_fields__ if name != "body")  # in the order the head lists them
_FIELDS = frozenset(_HEAD_FIELDS)
