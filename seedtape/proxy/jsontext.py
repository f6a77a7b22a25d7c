"""One JSON encoder for bodies seedtape sends or stores.

UTF-8, as the API sends it; but a request may hold lone surrogates (``"\\ud800"``
is valid JSON and not valid UTF-8), and only then is the text ASCII-escaped.
"""

from __future__ import annotations

import json


def encode(doc: object, *, compact: bool = False) -> bytes:
    """``doc`` as UTF-8 JSON bytes; ASCII escapes only when it holds lone surrogates."""
    seps = (",", ":") if compact else None
    try:
        return json.dumps(doc, ensure_ascii=False, separators=seps).encode()
    except UnicodeEncodeError:
        return json.dumps(doc, separators=seps).encode()
