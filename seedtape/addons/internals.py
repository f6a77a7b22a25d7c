"""Every use of mitmproxy internals in seedtape, in one place (mitmproxy 12, pinned in pyproject.toml).

1. OpenAI-shaped errors for failures mitmproxy answers itself (upstream down,
   upstream timeout, bad HTTP). mitmproxy writes an HTML error page there and no
   public hook can replace it: ``error`` fires, but a response set there is not
   sent. SDKs cannot read HTML (the Node SDK drops a non-OpenAI error body), so
   ``mitmproxy.proxy.layers.http._http1.make_error_response`` is swapped for one
   that answers with seedtape's JSON error.
2. Aborting a stalled upstream (``--upstream-timeout``): mitmproxy has only an
   idle timeout for whole connections, so seedtape cancels the server
   connection's reader task itself (``Proxyserver.connections[...].transports``),
   unless the client is the slow side (its write buffer is not empty).

3. Chunked bodies with trailers: mitmproxy 12 raises NotImplementedError on
   them and its connection handler crashes ("mitmproxy has crashed!").
   ``_http1.make_body_reader`` is wrapped so the chunked reader drops trailers
   (no OpenAI API reads them) and the message ends normally.

tests/test_proxy_e2e.py (upstream unreachable), tests/test_faults.py (timeouts)
and tests/test_untrusted_upstream.py (trailers) check them on every run.
"""

from __future__ import annotations

from collections import deque

import h11
from mitmproxy import ctx, http
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1

from seedtape.proxy import errors, wire

_original = _http1.make_error_response
_original_body_reader = _http1.make_body_reader
_upstream = "the upstream"
_max_body = 0
# Reasons of upstream aborts that have not reached their error page yet. mitmproxy passes
# no flow to make_error_response; aborts are rare and answered at once, so FIFO order holds.
_aborts: deque[errors.SeedtapeError] = deque(maxlen=64)


def make_error_response(status_code: int, message: str = "") -> bytes:
    if status_code == 502 and _aborts:
        err = _aborts.popleft()
    elif status_code == 413:  # mitmproxy's body_size_limit, which `seedtape serve` sets to --max-body
        err = errors.too_large("said by its content-length, or read so far", _max_body)
    elif status_code == 502 and "body_size_limit" in message:
        err = errors.SeedtapeError(502, "response_too_large",
                                   f"the upstream's answer is larger than --max-body ({_max_body} bytes); raise it.")
    elif status_code == 502:
        err = errors.upstream_unreachable(_upstream, message or "connection failed")
    else:
        err = errors.SeedtapeError(status_code, "proxy_error", f"seedtape could not handle the request: {message}.")
    headers = {**err.all_headers(), wire.STATUS: "error", "connection": "close"}
    return http1.assemble_response(http.Response.make(err.status, err.body(), headers))


def install(upstream: str, max_body: int = 0) -> None:
    """Answer mitmproxy's own errors in OpenAI's shape, naming ``upstream``."""
    global _upstream, _max_body
    _upstream, _max_body = upstream, max_body
    for name in ("make_error_response", "make_body_reader"):
        if not callable(getattr(_http1, name, None)):
            raise RuntimeError(f"this mitmproxy has no _http1.{name}; seedtape needs mitmproxy 12")
    _http1.make_error_response = make_error_response
    _http1.make_body_reader = make_body_reader


class _TrailerDroppingReader:
    """h11's chunked reader, with trailers dropped: the message then ends as if it had none."""

    def __init__(self, reader):
        self._reader = reader

    def __call__(self, buf):
        event = self._reader(buf)
        if isinstance(event, h11.EndOfMessage) and event.headers:
            return h11.EndOfMessage()
        return event

    def read_eof(self):
        return self._reader.read_eof()


def make_body_reader(expected_size: int | None):
    reader = _original_body_reader(expected_size)
    return _TrailerDroppingReader(reader) if expected_size is None else reader


def uninstall() -> None:
    _http1.make_error_response = _original
    _http1.make_body_reader = _original_body_reader


def _transports(flow: http.HTTPFlow):
    ps = ctx.master.addons.get("proxyserver")
    handler = ps.connections.get(flow.client_conn.id) if ps else None
    return handler.transports if handler else {}


def client_backlogged(flow: http.HTTPFlow) -> bool:
    """The client has not read what it was sent yet: mitmproxy holds back upstream reads meanwhile."""
    io = _transports(flow).get(flow.client_conn)
    transport = getattr(getattr(io, "writer", None), "transport", None)
    return bool(transport is not None and transport.get_write_buffer_size() > 0)


def abort_upstream(flow: http.HTTPFlow, err: errors.SeedtapeError | None) -> bool:
    """Cut the flow's upstream connection. ``err`` is what the client gets if no response started."""
    io = _transports(flow).get(flow.server_conn)
    if io is None or io.handler is None or io.handler.done():
        return False
    if err is not None:
        _aborts.append(err)
    io.handler.cancel("seedtape upstream timeout")
    return True
