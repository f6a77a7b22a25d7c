"""Tape entries on disk: zstd-compressed head and body (ST2), ST1 entries still read, zstd bombs refused."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import lmdb
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from seedtape.proxy.key.canonical import dumps_canonical
from seedtape.proxy.tapes import entry as entry_module
from seedtape.proxy.tapes import tapefile
from seedtape.proxy.tapes.entry import (
    BODY_ZSTD,
    DICTIONARY,
    HEAD_ZSTD,
    MAGIC,
    MAGIC_V1,
    MAX_PART,
    CorruptEntry,
    TapeEntry,
    plaintext,
)
from seedtape.proxy.tapes.store import Store

HEADER = struct.Struct(">3sBII")  # magic, flags, stored head size, stored body size

# Written by TapeEntry.encode before compression (seedtape commit cd05912, format ST1): they must
# decode as they always did. Their entries are ST1_JSON_ENTRY and ST1_SSE_ENTRY below.
ST1_JSON = base64.b64decode(
    "U1QxAAACKnsia2V5IjoiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYiIsIm"
    "ZpbmdlcnByaW50IjoiZnBfNDQ3MDlkNmZjYiIsImVuZHBvaW50IjoiY2hhdC5jb21wbGV0aW9ucyIsInJlcXVlc3QiOnsidiI6MSwibWV0aG9k"
    "IjoiUE9TVCIsInBhdGgiOiIvdjEvY2hhdC9jb21wbGV0aW9ucyIsInF1ZXJ5IjpbXSwibmFtZXNwYWNlIjoiIiwiYm9keSI6eyJtb2RlbCI6Im"
    "dwdC00byIsIm1lc3NhZ2VzIjpbeyJyb2xlIjoidXNlciIsImNvbnRlbnQiOiJTYXkgaGkifV0sInNlZWQiOjEyMzR9fSwic3RhdHVzIjoyMDAs"
    "ImhlYWRlcnMiOltbImNvbnRlbnQtdHlwZSIsImFwcGxpY2F0aW9uL2pzb24iXSxbIngtcmVxdWVzdC1pZCIsInJlcV8xIl1dLCJmb3JtYXQiOi"
    "Jqc29uIiwibW9kZWwiOiJncHQtNG8iLCJuYW1lc3BhY2UiOiIiLCJyZWNvcmRlZF9hdCI6MTczNjkzMzQwMC4wLCJmaXJzdF9yZWNvcmRlZF9h"
    "dCI6MTczNjkzMzQwMC4wLCJ0aW1lc19yZWNvcmRlZCI6MSwidXBzdHJlYW1fbXMiOjgxMi41LCJleHRyYSI6e319AAABBnsiaWQiOiJjaGF0Y2"
    "1wbC0xIiwib2JqZWN0IjoiY2hhdC5jb21wbGV0aW9uIiwibW9kZWwiOiJncHQtNG8iLCJzeXN0ZW1fZmluZ2VycHJpbnQiOiJmcF80NDcwOWQ2"
    "ZmNiIiwiY2hvaWNlcyI6W3siaW5kZXgiOjAsIm1lc3NhZ2UiOnsicm9sZSI6ImFzc2lzdGFudCIsImNvbnRlbnQiOiJIaSB0aGVyZSEgSG93IG"
    "NhbiBJIGhlbHAgeW91IHRvZGF5PyBIaSB0aGVyZSEgSG93IGNhbiBJIGhlbHAgeW91IHRvZGF5PyJ9LCJmaW5pc2hfcmVhc29uIjoic3RvcCJ9"
    "XX0="
)
ST1_SSE = base64.b64decode(
    "U1QxAAACQnsia2V5IjoiY2RjZGNkY2RjZGNkY2RjZGNkY2RjZGNkY2RjZGNkY2RjZGNkY2RjZGNkY2RjZGNkY2RjZGNkY2RjZGNkY2RjZCIsIm"
    "ZpbmdlcnByaW50IjoiZnBfNDQ3MDlkNmZjYiIsImVuZHBvaW50IjoiY2hhdC5jb21wbGV0aW9ucyIsInJlcXVlc3QiOnsidiI6MSwibWV0aG9k"
    "IjoiUE9TVCIsInBhdGgiOiIvdjEvY2hhdC9jb21wbGV0aW9ucyIsInF1ZXJ5IjpbXSwibmFtZXNwYWNlIjoidC9cdTAwZTkiLCJib2R5Ijp7Im"
    "1vZGVsIjoiZ3B0LTRvIiwic3RyZWFtIjp0cnVlLCJtZXNzYWdlcyI6W3sicm9sZSI6InVzZXIiLCJjb250ZW50IjoiXHVkODAwIEdvIn1dfX0s"
    "InN0YXR1cyI6MjAwLCJoZWFkZXJzIjpbWyJjb250ZW50LXR5cGUiLCJ0ZXh0L2V2ZW50LXN0cmVhbTsgY2hhcnNldD11dGYtOCJdXSwiZm9ybW"
    "F0Ijoic3NlIiwibW9kZWwiOiJncHQtNG8iLCJuYW1lc3BhY2UiOiJ0L1x1MDBlOSIsInJlY29yZGVkX2F0IjoyLjUsImZpcnN0X3JlY29yZGVk"
    "X2F0IjoxLjUsInRpbWVzX3JlY29yZGVkIjozLCJ1cHN0cmVhbV9tcyI6bnVsbCwiZXh0cmEiOnsiZGl2ZXJnZW5jZSI6eyJ2ZXJkaWN0IjoibW"
    "F0Y2gifX19AAAASWRhdGE6IHsiY2hvaWNlcyI6W3siaW5kZXgiOjAsImRlbHRhIjp7ImNvbnRlbnQiOiJHbyJ9fV19CgpkYXRhOiBbRE9ORV0K"
    "Cv8="
)
ST1_JSON_ENTRY = TapeEntry(
    key="ab" * 32,
    fingerprint="fp_44709d6fcb",
    endpoint="chat.completions",
    request={
        "v": 1,
        "method": "POST",
        "path": "/v1/chat/completions",
        "query": [],
        "namespace": "",
        "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hi"}], "seed": 1234},
    },
    status=200,
    headers=[["content-type", "application/json"], ["x-request-id", "req_1"]],
    body=b'{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","system_fingerprint":"fp_44709d6fcb",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hi there! How can I help you today? '
    b'Hi there! How can I help you today?"},"finish_reason":"stop"}]}',
    format="json",
    model="gpt-4o",
    recorded_at=1736933400.0,
    first_recorded_at=1736933400.0,
    upstream_ms=812.5,
)
ST1_SSE_ENTRY = TapeEntry(
    key="cd" * 32,
    fingerprint="fp_44709d6fcb",
    endpoint="chat.completions",
    request={
        "v": 1,
        "method": "POST",
        "path": "/v1/chat/completions",
        "query": [],
        "namespace": "t/é",
        "body": {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "\ud800 Go"}]},
    },
    status=200,
    headers=[["content-type", "text/event-stream; charset=utf-8"]],
    body=b'data: {"choices":[{"index":0,"delta":{"content":"Go"}}]}\n\ndata: [DONE]\n\n\xff',
    format="sse",
    model="gpt-4o",
    namespace="t/é",
    recorded_at=2.5,
    first_recorded_at=1.5,
    times_recorded=3,
    extra={"divergence": {"verdict": "match"}},
)


# -- realistic bodies ---------------------------------------------------------------------------

WORDS = [
    *("the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on", "be", "by", "this"),
    *("are", "or", "from", "at", "which", "an", "not", "but", "have", "model", "answer", "stream", "token"),
    *("seed", "request", "response", "fingerprint", "recorded", "replay", "tape", "store", "question"),
]


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) + rng.choice(["", "", "", ",", "."]) for _ in range(n))


def chat_json(n_words: int = 200, seed: int = 1) -> bytes:
    """A non-streamed chat completion, pretty-printed as the API sends it."""
    rng = random.Random(seed)
    answer = {
        "id": f"chatcmpl-{rng.getrandbits(128):x}",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text(rng, n_words), "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 19, "completion_tokens": n_words, "total_tokens": 19 + n_words},
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    }
    return json.dumps(answer, indent=2).encode()


def chat_sse(n_tokens: int = 90, seed: int = 2) -> bytes:
    """A streamed chat completion: one event per token (with the random obfuscation field), usage, [DONE]."""
    rng = random.Random(seed)
    base = {
        "id": f"chatcmpl-{rng.getrandbits(128):x}",
        "object": "chat.completion.chunk",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    }
    events = []
    for i in range(n_tokens + 1):
        delta = {"role": "assistant", "content": ""} if i == 0 else {"content": " " + rng.choice(WORDS)}
        finish = None
        if i == n_tokens:
            delta, finish = {}, "stop"
        chunk = {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "obfuscation": f"{rng.getrandbits(40):x}",
        }
        events.append(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
    events.append(b'data: {"choices":[],"usage":{"prompt_tokens":19,"completion_tokens":90}}\n\ndata: [DONE]\n\n')
    return b"".join(events)


def make_entry(body: bytes, fmt: str = "json", key: str = "k" * 64, **kw) -> TapeEntry:
    fields: dict = dict(
        key=key,
        fingerprint="fp_06737a9306",
        endpoint="chat.completions",
        request={
            "v": 1,
            "method": "POST",
            "path": "/v1/chat/completions",
            "query": [],
            "namespace": "",
            "body": {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant. Answer in plain English."},
                    {"role": "user", "content": "Explain what a tape entry is, in a few sentences."},
                ],
                "seed": 1234,
            },
        },
        status=200,
        headers=[
            ["content-type", "text/event-stream; charset=utf-8" if fmt == "sse" else "application/json"],
            ["x-request-id", "req_0123456789abcdef0123456789abcdef"],
            ["openai-processing-ms", "512"],
        ],
        body=body,
        format=fmt,
        model="gpt-4o-mini-2024-07-18",
        recorded_at=1741569952.25,
        first_recorded_at=1741569952.25,
        upstream_ms=612.5,
    )
    fields.update(kw)
    return TapeEntry(**fields)


def encode_st1(entry: TapeEntry) -> bytes:
    """The ST1 encoding of ``entry`` (what TapeEntry.encode wrote before compression)."""
    meta = {k: v for k, v in entry.__dict__.items() if k != "body"}
    head = json.dumps(meta, separators=(",", ":")).encode()
    return MAGIC_V1 + struct.pack(">I", len(head)) + head + struct.pack(">I", len(entry.body)) + entry.body


def flags(data: bytes) -> int:
    return HEADER.unpack_from(data)[1]


def st2(head: bytes, body: bytes, flag_bits: int) -> bytes:
    """A hand-made ST2 value (as a hostile or damaged store could hold)."""
    return HEADER.pack(MAGIC, flag_bits, len(head), len(body)) + head + body


def zstd_frame(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


BODIES = {
    "json": (chat_json(), "json"),
    "long json": (chat_json(1500), "json"),
    "sse": (chat_sse(), "sse"),
    "empty": (b"", "json"),
    "tiny": (b'{"ok":true}', "json"),
    "binary": (random.Random(3).randbytes(4096), "json"),  # incompressible: stored as it is
    "not utf-8": (bytes(range(256)) * 8 + b"\r\n\x00tail", "sse"),
    "large": (chat_sse(40_000, seed=4), "sse"),  # ~9 MB of events
}


# -- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BODIES))
def test_round_trip(name):
    body, fmt = BODIES[name]
    entry = make_entry(body, fmt, extra={"divergence": {"verdict": "match", "similarity": 1.0}})
    data = entry.encode()
    assert data.startswith(MAGIC)
    got = TapeEntry.decode(data)
    assert got == entry
    assert type(got.body) is bytes and got.body == body  # plain bytes in memory, whatever the disk holds
    assert TapeEntry.decode(memoryview(data)) == entry  # LMDB may hand out buffers
    assert TapeEntry.decode(bytearray(data)) == entry
    assert TapeEntry.decode_header(data) == {k: v for k, v in entry.__dict__.items() if k != "body"}


@pytest.mark.parametrize(
    ("name", "compressed"),
    [
        ("json", True),
        ("long json", True),
        ("sse", True),
        ("large", True),
        ("not utf-8", True),
        ("empty", False),
        ("tiny", False),
        ("binary", False),
    ],
)
def test_a_body_is_compressed_only_when_it_pays(name, compressed):
    body, fmt = BODIES[name]
    data = make_entry(body, fmt).encode()
    assert bool(flags(data) & BODY_ZSTD) is compressed
    assert flags(data) & HEAD_ZSTD  # this head (a realistic request) always pays
    if not compressed:
        assert data.endswith(body)  # stored as it is


def test_parts_that_do_not_pay_are_stored_as_they_are(monkeypatch):
    """A JSON head always pays in practice; with nothing compressed, an ST2 value holds both parts as they are."""
    monkeypatch.setattr(entry_module, "MIN_COMPRESS", 1 << 30)
    entry = make_entry(chat_json())
    data = entry.encode()
    assert flags(data) == 0
    assert b'"fingerprint":"fp_06737a9306"' in data and data.endswith(entry.body)
    assert TapeEntry.decode(data) == entry


def test_a_lone_surrogate_in_the_request_round_trips():
    """ "\\ud800" is valid JSON but not UTF-8: the head is ASCII-escaped JSON, compressed or not."""
    entry = make_entry(chat_json(), request={"body": {"input": "\ud800" * 200}})
    assert TapeEntry.decode(entry.encode()) == entry


@given(
    body=st.one_of(
        st.binary(max_size=5000),
        st.text(max_size=3000).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.lists(st.sampled_from(WORDS), max_size=800).map(lambda ws: " ".join(ws).encode()),
    ),
    fmt=st.sampled_from(["json", "sse"]),
    content=st.text(max_size=300),
)
@settings(max_examples=300, deadline=None)
def test_property_round_trip_and_never_larger_than_st1(body, fmt, content):
    entry = make_entry(body, fmt, request={"body": {"messages": [{"role": "user", "content": content}]}})
    data = entry.encode()
    assert TapeEntry.decode(data) == entry
    assert TapeEntry.decode_header(data)["request"] == entry.request
    assert len(data) <= len(encode_st1(entry)) + 1  # ST2's header is one byte longer; a part is compressed only if it pays


def test_the_dictionary_never_changes():
    """Every ST2 frame was compressed with it: another dictionary needs a flag of its own, not an edit."""
    assert hashlib.sha256(DICTIONARY).hexdigest() == "0f3f03623be57b01803849818e92c833560e55447739521713cc119c9e3c93a8"


def test_frames_need_the_dictionary():
    """A compressed part refers to the dictionary: zstd alone cannot read it back (it is part of the format)."""
    data = make_entry(chat_json()).encode()
    _, _, hlen, _ = HEADER.unpack_from(data)
    body = data[HEADER.size + hlen :]
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().decompress(body)
    raw = zstandard.ZstdCompressionDict(DICTIONARY, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    assert zstandard.ZstdDecompressor(dict_data=raw).decompress(body) == chat_json()


# -- the gain -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fmt", "at_most"), [(chat_json(), "json", 0.7), (chat_json(1500), "json", 0.5), (chat_sse(), "sse", 0.2)]
)
def test_typical_answers_take_much_less_room(body, fmt, at_most):
    entry = make_entry(body, fmt)
    assert len(entry.encode()) <= at_most * len(encode_st1(entry))


# -- entries written before compression -----------------------------------------------------------


@pytest.mark.parametrize(("data", "entry"), [(ST1_JSON, ST1_JSON_ENTRY), (ST1_SSE, ST1_SSE_ENTRY)])
def test_st1_entries_still_decode(data, entry):
    assert data.startswith(MAGIC_V1)
    assert TapeEntry.decode(data) == entry
    assert TapeEntry.decode(memoryview(data)) == entry
    assert TapeEntry.decode_header(data)["request"] == entry.request
    assert encode_st1(entry) == data  # the bench and these tests build ST1 as the old encode did
    assert TapeEntry.decode(entry.encode()) == entry  # and re-encoded (ST2), the same entry


def test_every_truncation_of_an_st1_entry_is_a_corrupt_entry():
    for n in range(len(ST1_SSE)):
        with pytest.raises(CorruptEntry):
            TapeEntry.decode(ST1_SSE[:n])


def test_a_store_of_st1_entries_reads_and_takes_new_recordings(tmp_path):
    """A store written before compression: its entries read as they are; a new recording is written ST2 beside them."""
    path = tmp_path / "store"
    Store(path).close()
    env = lmdb.open(str(path), max_dbs=8, mode=0o600)
    try:
        entries_db, latest_db = env.open_db(b"entries"), env.open_db(b"latest")
        with env.begin(write=True) as txn:
            for data, entry in ((ST1_JSON, ST1_JSON_ENTRY), (ST1_SSE, ST1_SSE_ENTRY)):
                txn.put(f"{entry.key}\0{entry.fingerprint}".encode(), data, db=entries_db)
                txn.put(
                    entry.key.encode(),
                    json.dumps({"fingerprint": entry.fingerprint, "recorded_at": entry.recorded_at}).encode(),
                    db=latest_db,
                )
    finally:
        env.close()
    with Store(path) as st:
        assert st.get(ST1_JSON_ENTRY.key) == ST1_JSON_ENTRY
        assert list(st.entries()) == [ST1_JSON_ENTRY, ST1_SSE_ENTRY]
        assert dict(st.requests()) == {e.key: e.request for e in (ST1_JSON_ENTRY, ST1_SSE_ENTRY)}
        again = make_entry(chat_sse(), "sse", key=ST1_SSE_ENTRY.key, fingerprint=ST1_SSE_ENTRY.fingerprint, recorded_at=10.0)
        prev = st.replace(again)
        assert prev == ST1_SSE_ENTRY
        got = st.get(again.key)
        assert got is not None and got.body == again.body and got.times_recorded == ST1_SSE_ENTRY.times_recorded + 1
    env = lmdb.open(str(path), max_dbs=8, readonly=True)
    try:
        with env.begin() as txn:
            raw = dict(txn.cursor(db=env.open_db(b"entries", txn=txn, create=False)))
    finally:
        env.close()
    assert raw[f"{ST1_JSON_ENTRY.key}\0{ST1_JSON_ENTRY.fingerprint}".encode()] == ST1_JSON  # untouched
    assert raw[f"{again.key}\0{again.fingerprint}".encode()].startswith(MAGIC)  # the new recording


# -- damaged and hostile values -------------------------------------------------------------------


def zstd_bomb(size: int = 300 << 20) -> bytes:
    """A real zstd frame of ``size`` zero bytes (about 10 KB): it states its size."""
    out = zstandard.ZstdCompressor(level=1).compressobj(size=size)
    zeros = bytes(1 << 20)
    parts = [out.compress(zeros) for _ in range(size >> 20)]
    return b"".join([*parts, out.compress(bytes(size & ((1 << 20) - 1))), out.flush()])


def test_a_zstd_bomb_is_refused_before_it_is_decompressed():
    bomb = zstd_bomb()
    assert len(bomb) < 20_000 and zstandard.frame_content_size(bomb) == 300 << 20
    head = json.dumps({k: v for k, v in make_entry(b"").__dict__.items() if k != "body"}).encode()
    data = st2(head, bomb, BODY_ZSTD)
    with pytest.raises(CorruptEntry, match=rf"the body would decompress to {300 << 20} bytes, over the {MAX_PART} bytes"):
        TapeEntry.decode(data)
    assert TapeEntry.decode_header(data)["key"] == "k" * 64  # scans over headers never touch the body
    with pytest.raises(CorruptEntry, match="the head would decompress to"):
        TapeEntry.decode_header(st2(bomb, b"", HEAD_ZSTD))


def test_a_frame_that_claims_more_than_the_limit_is_refused_whatever_it_holds():
    """Only the stated size counts: a frame header claiming 2**40 bytes is refused without decompressing."""
    header = b"\x28\xb5\x2f\xfd" + bytes([0b1110_0000]) + (1 << 40).to_bytes(8, "little")  # single segment, 8-byte size
    frame = header + b"\x01\x00\x00"  # one last, raw, empty block
    with pytest.raises(CorruptEntry, match=f"would decompress to {1 << 40} bytes"):
        TapeEntry.decode(st2(b"{}", frame, BODY_ZSTD))


def test_a_frame_without_its_size_is_refused():
    c = zstandard.ZstdCompressor().compressobj()
    frame = c.compress(b"data: [DONE]\n\n" * 50) + c.flush()
    assert zstandard.frame_content_size(frame) == -1
    with pytest.raises(CorruptEntry, match="does not state its size"):
        TapeEntry.decode(st2(b"{}", frame, BODY_ZSTD))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (st2(b"{}", b"not a zstd frame at all", BODY_ZSTD), "flagged as compressed but is not a zstd frame"),
        (st2(b"{}", zstd_frame(b"x" * 500)[:-4], BODY_ZSTD), "zstd frame is damaged"),
        (st2(b"{}", zstd_frame(b"x" * 500) + b"tail", BODY_ZSTD), "zstd frame is damaged"),
        (st2(b"{}", zstd_frame(b"x" * 500) * 2, BODY_ZSTD), "zstd frame is damaged"),
        (st2(zstd_frame(b"[1, 2, 3]" * 20), b"", HEAD_ZSTD), "not valid JSON|not an object|Extra data"),
        (st2(zstd_frame(b"\xff" * 100), b"", HEAD_ZSTD), "codec|decode|JSON"),
        (st2(b"{}", b"", 0x84), "unknown flags 0x84: written by a newer seedtape"),
        (st2(b"{}", b"", 0) + b"x", "trailing bytes"),
        (MAGIC + b"\x00", "unpack"),
        (b"ST9" + bytes(9), "bad magic"),
    ],
)
def test_damaged_values_are_corrupt_entries(data, message):
    with pytest.raises(CorruptEntry, match=message):
        TapeEntry.decode(data)


@pytest.mark.parametrize("claimed", [900, 1100])
def test_a_frame_that_states_a_wrong_size_is_a_corrupt_entry(claimed):
    frame = bytearray(zstd_frame(bytes(range(100)) * 10))
    assert zstandard.get_frame_parameters(bytes(frame)).content_size == 1000
    # A single-segment frame of 256 to 65791 bytes states its size in 2 bytes after the descriptor, minus 256.
    assert frame[4] >> 6 == 1 and frame[4] & 0x20
    frame[5:7] = (claimed - 256).to_bytes(2, "little")
    assert zstandard.frame_content_size(bytes(frame)) == claimed
    with pytest.raises(CorruptEntry, match="damaged"):
        TapeEntry.decode(st2(b"{}", bytes(frame), BODY_ZSTD))


def test_every_truncation_of_a_compressed_entry_is_a_corrupt_entry():
    data = make_entry(chat_json(40)).encode()
    assert flags(data) == HEAD_ZSTD | BODY_ZSTD
    for n in range(len(data)):
        with pytest.raises(CorruptEntry):
            TapeEntry.decode(data[:n])


def test_decode_header_does_not_decompress_the_body():
    data = make_entry(chat_sse()).encode()
    mangled = data[:-10] + b"\x00" * 10  # the body's frame is broken; the head is intact
    assert TapeEntry.decode_header(mangled)["fingerprint"] == "fp_06737a9306"
    with pytest.raises(CorruptEntry):
        TapeEntry.decode(mangled)


# -- threads, the store, export -------------------------------------------------------------------


def test_threads_encode_and_decode_at_once():
    """Each thread has its own zstd contexts: concurrent use gives the same bytes as one thread."""
    entries = [
        make_entry(chat_sse(60, seed=i) if i % 2 else chat_json(100 + i, seed=i), "sse" if i % 2 else "json", key=f"{i:064x}")
        for i in range(40)
    ]
    expected = [e.encode() for e in entries]
    barrier = threading.Barrier(8)

    def work(i: int) -> bool:
        barrier.wait()
        return all(TapeEntry.decode(e.encode()) == e and e.encode() == x for e, x in zip(entries, expected))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(8)))


def test_store_put_get_round_trip(tmp_path):
    entries = [make_entry(body, fmt, key=hashlib.sha256(name.encode()).hexdigest()) for name, (body, fmt) in BODIES.items()]
    with Store(tmp_path / "store") as st:
        for e in entries:
            st.put(e, as_is=True)
    with Store(tmp_path / "store", readonly=True) as st:
        for e in entries:
            assert st.get(e.key) == e
        assert sorted(st.entries(), key=lambda e: e.key) == sorted(entries, key=lambda e: e.key)
        assert dict(st.requests()) == {e.key: e.request for e in entries}


def test_a_grep_for_secrets_must_read_plaintext(tmp_path):
    """Compressed, a recorded text may or may not be in the store's files as it is: greps read plaintext()."""
    e = make_entry(chat_json(), request={"v": 1, "body": {"messages": [{"role": "user", "content": "keep my secrets"}]}})
    data = e.encode()
    assert e.body not in data
    text = plaintext(data)
    assert b"keep my secrets" in text and text.endswith(e.body)
    assert json.loads(text[: -len(e.body)])["fingerprint"] == e.fingerprint
    assert plaintext(ST1_JSON) == ST1_JSON[7 : 7 + 0x22A] + ST1_JSON_ENTRY.body  # ST1 holds both as they are
    with pytest.raises(CorruptEntry):
        plaintext(data[:-1])
    with Store(tmp_path / "store") as st:
        st.put(e, as_is=True)
    with Store(tmp_path / "store", readonly=True) as st, st.env.begin() as txn:
        values = [v for _, v in txn.cursor(db=st.env.open_db(b"entries", txn=txn, create=False))]
    assert [plaintext(v) for v in values] == [text]


def test_export_writes_the_plain_bodies(tmp_path):
    """The store compresses; an export still holds the exact, reviewable bytes."""
    entries = {
        "sse": make_entry(chat_sse(), "sse", request={"v": 1, "body": {"stream": True}}),
        "json": make_entry(chat_json(), request={"v": 1, "body": {}}),
    }
    for e in entries.values():  # import checks that a request hashes to its key
        e.key = hashlib.sha256(dumps_canonical(e.request)).hexdigest()
    with Store(tmp_path / "store") as st:
        for e in entries.values():
            st.put(e, as_is=True)
        tapefile.export(st, tmp_path / "tapes")
    files = {p.name.rsplit(".", 1)[1]: p.read_bytes() for p in (tmp_path / "tapes").rglob("*.body.*")}
    assert files == {fmt: e.body for fmt, e in entries.items()}
    assert files["sse"].startswith(b"data: {") and b"data: [DONE]" in files["sse"]
    assert all(not f.startswith(b"\x28\xb5\x2f\xfd") for f in files.values())
    with Store(tmp_path / "again") as st:
        tapefile.import_(st, tmp_path / "tapes")
        assert {e.key: e for e in st.entries()} == {e.key: e for e in entries.values()}


def test_a_part_over_the_limit_is_stored_as_it_is(monkeypatch):
    """encode never writes a frame that decode would refuse: past MAX_PART a part is stored as it is."""
    monkeypatch.setattr(entry_module, "MAX_PART", 1000)
    body = bytes(1001)
    data = make_entry(body).encode()
    assert not flags(data) & BODY_ZSTD
    assert TapeEntry.decode(data).body == body
    with pytest.raises(CorruptEntry, match="the body would decompress to 1001 bytes, over the 1000 bytes"):
        TapeEntry.decode(st2(b"{}", zstd_frame(body), BODY_ZSTD))
