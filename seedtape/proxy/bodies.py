"""Request bodies, decoded with a size cap: a few hundred compressed bytes must not become gigabytes.

Content-Encoding gzip, deflate, br and zstd are undone step by step, and
decoding stops as soon as the output passes the limit (``--max-body``).
"""

from __future__ import annotations

import zlib

import brotli

try:  # Python 3.14
    from compression import zstd
except ImportError:  # pragma: no cover - older Pythons: the backport mitmproxy depends on
    from backports import zstd


class TooLarge(ValueError):
    """The decoded body passes the limit."""


def _zlib(data: bytes, wbits: int, limit: int) -> bytes:
    d = zlib.decompressobj(wbits)
    out = d.decompress(data, limit + 1)
    if len(out) > limit or d.unconsumed_tail:
        raise TooLarge(f"it decodes to more than {limit} bytes")
    if not d.eof:
        raise ValueError("the compressed body is truncated")
    return out


def _one(data: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("", "identity"):
        return data
    if encoding in ("gzip", "x-gzip"):
        return _zlib(data, 16 + zlib.MAX_WBITS, limit)
    if encoding == "deflate":
        try:
            return _zlib(data, zlib.MAX_WBITS, limit)
        except zlib.error:
            return _zlib(data, -zlib.MAX_WBITS, limit)  # raw deflate, as some clients send it
    if encoding == "br":
        d = brotli.Decompressor()
        out = d.process(data, output_buffer_limit=limit + 1)
        if len(out) > limit or not d.is_finished():
            raise (
                TooLarge(f"it decodes to more than {limit} bytes")
                if len(out) > limit
                else ValueError("the brotli body is truncated")
            )
        return out
    if encoding == "zstd":
        d = zstd.ZstdDecompressor()
        out = d.decompress(data, max_length=limit + 1)
        if len(out) > limit:
            raise TooLarge(f"it decodes to more than {limit} bytes")
        if not d.eof:
            raise ValueError("the zstd body is truncated")
        return out
    raise ValueError(f"unknown content-encoding {encoding!r}")


def decode(data: bytes, content_encoding: str, limit: int) -> bytes:
    """The body with every content-encoding undone (last applied first); TooLarge past ``limit``."""
    if len(data) > limit:
        raise TooLarge(f"it has {len(data)} bytes")
    steps = [e.strip().lower() for e in content_encoding.split(",") if e.strip()]
    try:
        for enc in reversed(steps):
            data = _one(data, enc, limit)
    except (zlib.error, brotli.error, zstd.ZstdError) as e:
        raise ValueError(f"its {content_encoding} encoding is broken ({e})") from None
    return data
