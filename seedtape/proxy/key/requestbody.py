"""Reading a request body that must be a JSON object, with the limits of strictjson.

The API reads bodies as UTF-8 JSON objects; seedtape refuses what it could not
key or store (NaN, huge numbers, deep nesting) with a reason the client reads.
"""

from __future__ import annotations

import json

from seedtape.proxy import strictjson


def parse(content: bytes) -> dict:
    """The body as a JSON object; ValueError says why it is not one."""
    fast = strictjson.fast_loads(content) if content[:3] != b"\xef\xbb\xbf" else None
    if isinstance(fast, dict):  # the common case; anything else takes the strict path for its message
        return fast
    try:
        text = content.decode("utf-8")  # strict: json.loads(bytes) would guess UTF-16/32 and pass surrogates
    except UnicodeDecodeError:
        raise ValueError("the body is not UTF-8") from None
    try:
        body = strictjson.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"the body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except strictjson.TooDeep as e:
        raise ValueError(f"the JSON body is {e}") from None
    except ValueError as e:  # NaN/Infinity, a float overflow, a huge int
        raise ValueError(f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ValueError(f"the JSON body must be an object, not {type(body).__name__}")
    return body
