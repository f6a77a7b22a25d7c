"""JSON from untrusted sources (request bodies, tape files), parsed with limits.

The standard parser accepts what seedtape could not store, key or print back:
``NaN`` and ``Infinity`` (not JSON, and a later ``json.dumps(allow_nan=False)``
fails), integers of thousands of digits (Python refuses to print them), nesting
deep enough to hit the recursion limit in every later walk, and duplicate keys
(a reviewer reads the first, the parser keeps the last). Each is refused here
with a ValueError that says what was wrong.
"""

from __future__ import annotations

import json
import math
import re

import orjson

MAX_DEPTH = 200  # far beyond any real request or tape; deeper documents could not be stored or diffed
MAX_INT_DIGITS = 1000  # below Python's int-to-str limit (4300), far above any real parameter


_LONG_NUMBER = re.compile(rb"\d{16}")  # orjson reads integers past 64 bits as floats: leave those to json
_NESTING = (ord("{"), ord("["))


def fast_loads(data: bytes) -> object | None:
    """``data`` parsed by orjson (several times faster) when that gives exactly what ``loads`` would
    accept and return, else None: then ``loads`` decides (and says why it refuses).

    orjson refuses what ``loads`` refuses (NaN, Infinity, 1e400, invalid UTF-8), also lone
    surrogates (``loads`` accepts them); it differs on integers past 64 bits, so any run of 16
    digits, and anything nested deeper than MAX_DEPTH could be, goes to ``loads``.
    """
    if _LONG_NUMBER.search(data):
        return None
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if data.count(_NESTING[0]) + data.count(_NESTING[1]) > MAX_DEPTH and depth(doc) > MAX_DEPTH:
        return None
    return doc


class TooDeep(ValueError):
    """Nested past MAX_DEPTH."""


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"{literal} is too large for a JSON number")
    return value


def _integer(literal: str) -> int:
    digits = len(literal.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise ValueError(f"a {digits}-digit integer is too large for a JSON number here")
    return int(literal)


def _unique_object(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the key {json.dumps(k)} appears twice in one object")
        out[k] = v
    return out


def loads(text: str, *, unique_keys: bool = False) -> object:
    """Parse ``text``; ValueError (json.JSONDecodeError for syntax, with its position) says why not.

    With ``unique_keys`` an object that names a key twice is refused (tape files);
    without, the last value wins as in the standard parser (request bodies, as the API does).
    """
    try:
        doc = json.loads(
            text,
            parse_constant=_no_constants,
            parse_float=_finite,
            parse_int=_integer,
            object_pairs_hook=_unique_object if unique_keys else None,
        )
    except RecursionError:
        raise TooDeep(f"nested too deeply (more than {MAX_DEPTH} levels)") from None
    if depth(doc) > MAX_DEPTH:
        raise TooDeep(f"nested too deeply (more than {MAX_DEPTH} levels)")
    return doc


def depth(doc: object) -> int:
    """Nesting depth, without recursion; stops counting past MAX_DEPTH."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            return d
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest
