"""Request body decoding with a size cap (seedtape/proxy/bodies.py)."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from collections.abc import Callable

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedtape.proxy.bodies import TooLarge, decode

try:  # Python 3.14
    from compression import zstd
except ImportError:  # the backport mitmproxy depends on
    from backports import zstd

BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "décodé " * 40}]}).encode()


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,  # zlib-wrapped, as the RFC says
    "br": brotli.compress,
    "zstd": zstd.compress,
}
CODECS = ["gzip", "deflate", "br", "zstd"]


@pytest.mark.parametrize("enc", list(ENCODERS))
def test_each_encoding_decodes_to_the_original(enc):
    encoded = ENCODERS[enc](BODY)
    assert encoded != BODY
    assert decode(encoded, enc, 10_000) == BODY


def test_raw_deflate_as_some_clients_send_it():
    assert decode(raw_deflate(BODY), "deflate", 10_000) == BODY


@pytest.mark.parametrize("enc", ["", "identity", "IDENTITY", " identity "])
def test_identity_and_no_encoding_leave_the_body_alone(enc):
    assert decode(b"\xff not even JSON", enc, 100) == b"\xff not even JSON"


@pytest.mark.parametrize(
    "header, encode",
    [
        ("gzip, br", lambda b: brotli.compress(gzip.compress(b))),
        ("deflate, gzip", lambda b: gzip.compress(zlib.compress(b))),
        ("zstd,gzip,br", lambda b: brotli.compress(gzip.compress(zstd.compress(b)))),
        ("identity, gzip", gzip.compress),
        (" GZIP ,  Br ", lambda b: brotli.compress(gzip.compress(b))),
        ("gzip,,", gzip.compress),
    ],
)
def test_stacked_encodings_are_undone_last_applied_first(header, encode):
    assert decode(encode(BODY), header, 10_000) == BODY


def test_stacked_encodings_in_the_wrong_order_are_refused():
    with pytest.raises(ValueError, match="broken"):
        decode(brotli.compress(gzip.compress(BODY)), "br, gzip", 10_000)


@pytest.mark.parametrize("enc", ["compress", "x-unknown", "gzip;q=1", "br2"])
def test_an_unknown_encoding_is_refused_by_name(enc):
    with pytest.raises(ValueError, match="unknown content-encoding") as info:
        decode(BODY, enc, 10_000)
    assert not isinstance(info.value, TooLarge)
    assert enc.strip().lower() in str(info.value)


@pytest.mark.parametrize("enc", CODECS)
def test_garbage_is_refused_as_broken_not_too_large(enc):
    with pytest.raises(ValueError) as info:
        decode(b"this was never compressed", enc, 10_000)
    assert not isinstance(info.value, TooLarge)


@pytest.mark.parametrize("enc", CODECS)
@pytest.mark.parametrize("cut", [1, 8, 0.5])
def test_truncated_data_is_refused(enc, cut):
    encoded = ENCODERS[enc](BODY)
    keep = int(len(encoded) * cut) if isinstance(cut, float) else len(encoded) - cut
    with pytest.raises(ValueError) as info:
        decode(encoded[:keep], enc, 10_000)
    assert not isinstance(info.value, TooLarge)


# -- the limit ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("enc", CODECS)
def test_the_limit_is_inclusive(enc):
    encoded = ENCODERS[enc](BODY)
    assert decode(encoded, enc, len(BODY)) == BODY
    with pytest.raises(TooLarge):
        decode(encoded, enc, len(BODY) - 1)


def test_the_wire_size_alone_can_pass_the_limit():
    with pytest.raises(TooLarge, match="101 bytes"):
        decode(b"x" * 101, "", 100)
    assert decode(b"x" * 100, "", 100) == b"x" * 100


def test_each_step_of_a_stack_is_held_to_the_limit():
    inner = gzip.compress(b"0" * 50_000)  # small on the wire, large once the inner step is undone
    outer = brotli.compress(inner)
    assert len(inner) < 1_000 and len(outer) < 1_000
    with pytest.raises(TooLarge):
        decode(outer, "gzip, br", 1_000)


@given(size=st.integers(0, 3_000), limit=st.integers(0, 3_000), enc=st.sampled_from(CODECS))
@settings(max_examples=100, deadline=None)
def test_decoded_size_against_the_limit(size, limit, enc):
    data = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    encoded = ENCODERS[enc](data)
    if len(encoded) > limit or size > limit:
        with pytest.raises(TooLarge):
            decode(encoded, enc, limit)
    else:
        assert decode(encoded, enc, limit) == data


# -- decompression bombs --------------------------------------------------------------------------------------

BOMB_SIZE = 64 << 20  # 64 MiB of zeros; a few dozen KiB once compressed
MIB = b"\0" * (1 << 20)


def _bomb(enc: str) -> bytes:
    """Built piece by piece, so the test never holds the inflated bytes either."""
    if enc in ("gzip", "deflate"):
        c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if enc == "gzip" else zlib.MAX_WBITS)
        return b"".join(c.compress(MIB) for _ in range(BOMB_SIZE >> 20)) + c.flush()
    if enc == "br":
        c = brotli.Compressor(quality=1)
        return b"".join(c.process(MIB) for _ in range(BOMB_SIZE >> 20)) + c.finish()
    c = zstd.ZstdCompressor()
    return b"".join(c.compress(MIB) for _ in range(BOMB_SIZE >> 20)) + c.flush()


@pytest.mark.parametrize("enc", CODECS)
def test_a_bomb_is_refused_without_being_inflated(enc):
    bomb = _bomb(enc)
    limit = 100_000
    assert len(bomb) < limit
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge, match=str(limit)):
            decode(bomb, enc, limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"decoding a {len(bomb)}-byte {enc} bomb took {peak >> 20} MiB at its peak"
