"""strictjson.fast_loads (orjson on the hit path) parses exactly as strictjson.loads does, or declines."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedtape.proxy import strictjson
from seedtape.proxy.key import requestbody

leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
docs = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=4), max_leaves=25)


def same(a: object, b: object) -> bool:
    """Equal and of the same types throughout (1 and 1.0 differ in a key)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@settings(max_examples=400, deadline=None)
@given(docs)
def test_fast_loads_agrees_or_declines(doc):
    for text in (json.dumps(doc), json.dumps(doc, ensure_ascii=False), json.dumps(doc, indent=1)):
        fast = strictjson.fast_loads(text.encode("utf-8", "surrogatepass"))
        if fast is not None:
            assert same(fast, strictjson.loads(text))


@pytest.mark.parametrize("raw", [
    b'{"a": 123456789012345678901234567890}',  # orjson would read a float
    b'{"a": -9223372036854775809}', b'{"a": "\\ud800"}', b'{"a": 1e400}', b'{"a": NaN}', b"\xff{}",
    b"[" * 300 + b"]" * 300,
])
def test_fast_loads_declines_what_orjson_reads_differently_or_refuses(raw):
    assert strictjson.fast_loads(raw) is None


def test_request_bodies_keep_their_big_integers_and_messages():
    assert requestbody.parse(b'{"seed": 123456789012345678901234567890}') == {"seed": 123456789012345678901234567890}
    assert requestbody.parse(b'{"a": "\\ud800"}') == {"a": "\ud800"}
    with pytest.raises(ValueError, match="not valid JSON"):
        requestbody.parse(b'{"a": NaN}')
    with pytest.raises(ValueError, match="must be an object"):
        requestbody.parse(b"[1, 2]")
    with pytest.raises(ValueError, match="nested too deeply"):
        requestbody.parse(b'{"a": ' + b"[" * 300 + b"]" * 300 + b"}")
    with pytest.raises(ValueError, match="BOM"):  # refused as before: the fast path never sees a BOM
        requestbody.parse(b'\xef\xbb\xbf{"a": 1}')
