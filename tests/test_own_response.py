"""internals.own_response builds what mitmproxy's Response.make builds, without its debug-mode checks."""

from __future__ import annotations

import pytest
from mitmproxy import http

from seedtape.addons import internals


def state(r: http.Response) -> dict:
    s = r.get_state()
    return {k: v for k, v in s.items() if k not in ("timestamp_start", "timestamp_end")}


@pytest.mark.parametrize(("status", "fields", "body"), [
    (200, [(b"content-type", b"application/json"), (b"seedtape-status", b"hit")], b'{"ok": true}'),
    (200, [(b"content-type", b"text/event-stream; charset=utf-8"), (b"x-request-id", b"req_1")], b"data: {}\n\n"),
    (404, [(b"content-type", b"application/json"), (b"x-should-retry", b"false")], b'{"error": {}}'),
    (413, [], b""),
    (599, [(b"X-Odd", b"v"), (b"x-odd", b"w")], b"\xff\x00 binary"),
    (200, [(b"content-encoding", b"gzip")], b"plain text"),  # framing: the ordinary path
    (200, [(b"content-length", b"3")], b"abcdef"),
])
def test_own_response_is_what_make_builds(status, fields, body):
    fast, made = internals.own_response(status, fields, body), http.Response.make(status, body, fields)
    assert state(fast) == state(made)
    assert fast.content == made.content and fast.headers.fields == made.headers.fields
    assert abs(fast.timestamp_start - made.timestamp_start) < 5
