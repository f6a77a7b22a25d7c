"""Every use of mitmproxy internals in seedtape, in one place (mitmproxy 12, pinned below 13 in pyproject.toml).

1. OpenAI-shaped errors for failures mitmproxy answers itself (upstream down,
   bad HTTP, a body over --max-body). mitmproxy writes an HTML error page there
   and no public hook can replace it: ``error`` fires, but a response set there is
   not sent. SDKs cannot read HTML (the Node SDK drops a non-OpenAI error body), so
   ``_http1.make_error_response`` is swapped for one that answers with seedtape's
   JSON error.
2. Aborting a stalled upstream (``--upstream-timeout``): mitmproxy has only an
   idle timeout for whole connections, so seedtape cancels the server
   connection's reader task itself (``Proxyserver.connections[...].transports``),
   unless the client is the slow side (its write buffer is not empty). The reason
   is kept per client connection (HTTP/1 carries one request at a time) and
   answered by a wrapper around ``_http1.Http1Server.send``, so no stale reason
   can label another flow's error.
3. Chunked bodies with trailers: mitmproxy 12 raises NotImplementedError on them
   and its connection handler crashes. ``_http1.make_body_reader`` is wrapped so
   the chunked reader drops trailers (no OpenAI API reads them).
4. The lean Master ``seedtape serve`` runs (:func:`build_master`): only the
   addons seedtape needs, about twice as fast as mitmdump's ~36.
5. mitmproxy's words for its body size limit, turned into seedtape's (:func:`describe_error`).

:func:`install` checks every symbol it patches or reads and fails loudly at start-up
when one is missing. tests/test_proxy_e2e.py (upstream unreachable),
tests/test_faults.py (timeouts) and tests/test_untrusted_upstream.py (trailers) check
them on every run.
"""

from __future__ import annotations

import asyncio
import dataclasses

import h11
from mitmproxy import ctx, exceptions, hooks, http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, server
from mitmproxy.proxy.layers.http import ResponseProtocolError, _http1

from seedtape.proxy import errors, wire

_original_error_response = _http1.make_error_response
_original_body_reader = _http1.make_body_reader
_original_send = _http1.Http1Server.send
_upstream = "the upstream"
_max_body = 0
_aborts: dict[str, errors.SeedtapeError] = {}  # client connection id -> why seedtape cut its upstream


def _error_bytes(err: errors.SeedtapeError) -> bytes:
    headers = {**err.all_headers(), wire.STATUS: "error", "connection": "close"}
    return http1.assemble_response(http.Response.make(err.status, err.body(), headers))


def make_error_response(status_code: int, message: str = "") -> bytes:
    if status_code == 413:  # mitmproxy's body_size_limit, which `seedtape serve` sets to --max-body
        err = errors.too_large("said by its content-length, or read so far", _max_body)
    elif status_code == 502 and "body_size_limit" in message:
        err = errors.SeedtapeError(
            502, "response_too_large", f"the upstream's answer is larger than --max-body ({_max_body} bytes); raise it."
        )
    elif status_code == 502:
        err = errors.upstream_unreachable(_upstream, message or "connection failed")
    else:
        err = errors.SeedtapeError(status_code, "proxy_error", f"seedtape could not handle the request: {message}.")
    return _error_bytes(err)


def _send(self, event):
    """Http1Server.send, answering an upstream seedtape aborted with the reason kept for this client."""
    err = _aborts.pop(self.conn.id, None) if isinstance(event, ResponseProtocolError) else None
    if err is None:
        yield from _original_send(self, event)
        return
    if not (self.conn.state & ConnectionState.CAN_WRITE):
        return
    if not self.response:
        yield commands.SendData(self.conn, _error_bytes(err))
    yield commands.CloseConnection(self.conn)


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


def install() -> None:
    """Patch what mitmproxy offers no hook for; a missing symbol is a loud error, never a silent no-op."""
    missing = [name for name in ("make_error_response", "make_body_reader") if not callable(getattr(_http1, name, None))]
    if not callable(getattr(getattr(_http1, "Http1Server", None), "send", None)):
        missing.append("Http1Server.send")
    if {f.name for f in dataclasses.fields(server.ConnectionIO)} < {"handler", "writer"}:
        missing.append("ConnectionIO.handler/writer")
    if missing:
        raise RuntimeError(
            f"this mitmproxy lacks {', '.join('_http1.' + m for m in missing)}, which seedtape "
            "patches: install mitmproxy 12 (pip install 'mitmproxy>=12,<13')"
        )
    _http1.make_error_response = make_error_response
    _http1.make_body_reader = make_body_reader
    _http1.Http1Server.send = _send  # type: ignore[method-assign]  # deliberate patch of mitmproxy (docstring, 2.)


def configure(upstream: str, max_body: int) -> None:
    """What mitmproxy's own error answers name: the upstream and --max-body."""
    global _upstream, _max_body
    _upstream, _max_body = upstream, max_body


def uninstall() -> None:
    _http1.make_error_response = _original_error_response
    _http1.make_body_reader = _original_body_reader
    _http1.Http1Server.send = _original_send  # type: ignore[method-assign]  # undoes the patch of install()


def _transports(flow: http.HTTPFlow):
    ps = ctx.master.addons.get("proxyserver")
    connections = getattr(ps, "connections", None)
    if connections is None:
        raise RuntimeError("mitmproxy's proxyserver addon has no connections table: seedtape needs mitmproxy 12")
    handler = connections.get(flow.client_conn.id)
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
        _aborts[flow.client_conn.id] = err
    io.handler.cancel("seedtape upstream timeout")
    return True


def forget(client_conn_id: str) -> None:
    """A client connection closed: drop an abort reason it never needed."""
    _aborts.pop(client_conn_id, None)


def describe_error(message: str, max_body: int) -> str:
    """mitmproxy's error text for a flow, in seedtape's words where it means a seedtape option."""
    if "body_size_limit" in message:  # mitmproxy's name for seedtape's --max-body
        side = "response" if "response" in message.lower() else "request"
        return f"the {side} body is larger than --max-body ({max_body} bytes)"
    return message


class StartError(Exception):
    """The proxy could not start (a bad option value, a store that cannot be opened); one line says why."""


async def run_lean(options: dict, addon, grace: float = 0.0) -> None:
    """Run the lean Master with ``addon`` until SIGINT or SIGTERM; StartError when it cannot start.

    ``grace``: seconds a signal leaves the exchanges in flight to finish (see shutdown.py).
    """
    from seedtape.addons import shutdown

    try:
        m = build_master(options, addon)
    except exceptions.OptionsError as e:
        raise StartError(str(e)) from None
    if getattr(addon, "refusal", ""):  # e.g. a store that cannot be opened: before anything listens
        raise StartError(addon.refusal)
    loop = asyncio.get_running_loop()
    shutdown.install(m, addon.in_flight, grace, loop.add_signal_handler)
    await m.run()
    # Client connections still open at shutdown are cancelled; asyncio would print each as an error.
    loop.set_exception_handler(
        lambda lp, c: None if isinstance(c.get("exception"), asyncio.CancelledError) else lp.default_exception_handler(c)
    )


def build_master(options: dict, addon):
    """A lean mitmproxy Master: core, proxyserver, next-layer, TLS, error check, and ``addon``."""
    from mitmproxy import master
    from mitmproxy import options as mopts
    from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig

    opts = mopts.Options()
    m = master.Master(opts, with_termlog=True)
    m.addons.add(
        core.Core(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        errorcheck.ErrorCheck(repeat_errors_on_stderr=True),
    )
    # Options registered by the proxyserver addon are set after adding it, and the listener's
    # address before seedtape's addon sees any option: a failed update rolls back to these values.
    options = dict(options)
    opts.update(connection_strategy="lazy", listen_host=options.pop("listen_host", "127.0.0.1"))
    opts.update_defer(**options)  # the addon's own options take their values as it registers them
    m.addons.add(addon)
    m.addons.invoke_addon_sync(addon, hooks.ConfigureHook(set(opts.keys())))  # as mitmdump's script loader does
    return m
