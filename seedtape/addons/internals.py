"""OpenAI-shaped errors for failures mitmproxy answers itself (upstream down, bad HTTP).

mitmproxy writes an HTML error page when it cannot reach the upstream, and no
public hook can replace it: ``error`` fires, but a response set there is not
sent. SDKs cannot read HTML (the Node SDK drops a non-OpenAI error body), so
this module swaps mitmproxy's HTTP/1 error writer for one that answers with
seedtape's JSON error. This is the one patch of mitmproxy internals in
seedtape; it targets ``mitmproxy.proxy.layers.http._http1.make_error_response``
(mitmproxy 12, pinned in pyproject.toml); test_upstream_unreachable_gives_openai_shaped_502
in tests/test_proxy_e2e.py checks it on every run.
"""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1

from seedtape.proxy import errors, wire

_original = _http1.make_error_response
_upstream = "the upstream"


def make_error_response(status_code: int, message: str = "") -> bytes:
    if status_code == 502:
        err = errors.upstream_unreachable(_upstream, message or "connection failed")
    else:
        err = errors.SeedtapeError(status_code, "proxy_error", f"seedtape could not handle the request: {message}.")
    headers = {**err.all_headers(), wire.STATUS: "error", "connection": "close"}
    resp = http.Response.make(err.status, err.body(), headers)
    return http1.assemble_response(resp)


def install(upstream: str) -> None:
    """Answer mitmproxy's own errors in OpenAI's shape, naming ``upstream``."""
    global _upstream
    _upstream = upstream
    if not callable(getattr(_http1, "make_error_response", None)):
        raise RuntimeError("this mitmproxy has no _http1.make_error_response; seedtape needs mitmproxy 12")
    _http1.make_error_response = make_error_response


def uninstall() -> None:
    _http1.make_error_response = _original
