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
6. Early errors, answered before the request body is read (a 413 over --max-body, a
   request mitmproxy refuses at its headers): mitmproxy sends them with
   ``connection: close`` and closes at once, so a client still sending its body gets a
   reset instead of the answer. The ``Http1Server.send`` wrapper answers, half-closes
   (the client reads the answer, then EOF), and reads and drops what the client still
   sends (up to ``max(--max-body, 8 MiB)`` bytes, for ``LINGER_SECONDS``) before it
   closes, as web servers do.
7. mitmproxy closes a connection by cancelling its handler task; cancelled while it
   waits for mitmproxy's event lock, the handler skips its clean-up and its socket
   stays open for good (seen: every 413 for a client still sending leaked one). A
   wrapper of ``ConnectionHandler.handle_connection`` does that clean-up then.
8. A client that leaves a live taped stream (the SDK's ``.stream()`` helper at a
   ``length`` finish): mitmproxy would close the upstream connection and the answer
   could never be recorded. For a flow registered with :func:`read_to_end`, the client's
   close is kept from the HTTP layer (``Http1Server.wait``): the stream goes on, fed to
   the tap, its bytes to the client are dropped (``Http1Server.send``), and the client
   connection is closed when the upstream answer ends, completed or cut. A write error
   on that client marks it gone instead of tearing the connection down
   (``ConnectionHandler.drain_writers``, which waits on no gone client). The upstream
   timeout still applies; nothing is ever re-sent.
9. Group commit (seedtape/proxy/tapes/writer.py): a recording is written off the event loop,
   and a client must not see the end of a stream before its recording is on disk. mitmproxy's
   stream callable is synchronous and cannot wait, so for a flow marked with
   :func:`finish_before_end` a wrapper of ``HttpStream.state_stream_response_body`` runs a hook
   of seedtape's own (:class:`StreamEndHook`, the addon's async ``seedtape_stream_end``) when the
   upstream's answer ends, before the callable's last call: the tap holds back the stream's end
   (from the event that completed it) until then.

10. Several workers on one port (`seedtape serve --workers N`, seedtape/cli/workers.py): mitmproxy
   opens its listening socket itself (``mode_servers.AsyncioServerInstance.listen``) with no
   option for ``SO_REUSEPORT``. In a worker only, :func:`listen_shared` gives reverse mode's
   server instance (``mode_servers.ReverseInstance``) a ``listen`` that opens it with
   ``reuse_port=True``, so the kernel spreads new connections over the workers (TCP only: the UDP
   listener mitmproxy adds for HTTP/3 cannot share a port, and seedtape's port speaks HTTP/1.1).

:func:`install` checks every symbol it patches or reads and fails loudly at start-up
when one is missing. tests/test_proxy_e2e.py (upstream unreachable),
tests/test_faults.py (timeouts, clients leaving a stream), tests/test_connections.py
(early errors, file descriptors) and tests/test_untrusted_upstream.py (trailers) check
them on every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

import h11
from h11._receivebuffer import ReceiveBuffer
from mitmproxy import ctx, exceptions, hooks, http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1, status_codes
from mitmproxy.proxy import commands, events, server
from mitmproxy.proxy.layers.http import HttpStream, ResponseEndOfMessage, ResponseProtocolError, _http1

from seedtape.proxy import errors, wire

_original_error_response = _http1.make_error_response
_original_body_reader = _http1.make_body_reader
_original_send = _http1.Http1Server.send
_original_wait = _http1.Http1Server.wait
_original_handle_connection = server.ConnectionHandler.handle_connection
_original_drain_writers = server.ConnectionHandler.drain_writers
_original_stream_body = HttpStream.state_stream_response_body
_upstream = "the upstream"
_max_body = 0
_aborts: dict[str, errors.SeedtapeError] = {}  # client connection id -> why seedtape cut its upstream
_kept: dict[str, http.HTTPFlow] = {}  # client connection id -> its flow, read to the end if the client leaves
_gone: set[str] = set()  # client connection ids whose client left a kept flow: nothing more is sent to them

LINGER_SECONDS = 5.0  # how long an early error waits for the rest of the request body before it closes
LINGER_MIN_BYTES = 8 << 20  # and how much of it it reads at least (else up to --max-body)


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
    """Http1Server.send: an upstream seedtape aborted is answered with the reason kept for this client;
    an error before the request body was read lingers (docstring, 6.); a client that left a kept flow
    is sent nothing more, and closed when its answer ends (docstring, 8.)."""
    if self.conn.id in _gone:
        yield from _send_to_gone(self, event)
        return
    err = _aborts.pop(self.conn.id, None) if isinstance(event, ResponseProtocolError) else None
    if isinstance(event, ResponseProtocolError) and self.state == self.read_body and not self.response:
        yield from _answer_early(self, event, err)
        return
    if err is None:
        yield from _original_send(self, event)
        return
    if not (self.conn.state & ConnectionState.CAN_WRITE):
        return
    if not self.response:
        yield commands.SendData(self.conn, _error_bytes(err))
    yield commands.CloseConnection(self.conn)


def _send_to_gone(self, event):
    """The client left: mitmproxy's bookkeeping goes on, its bytes are dropped; the answer's end closes it."""
    _aborts.pop(self.conn.id, None)
    if isinstance(event, ResponseEndOfMessage):
        self.buf = ReceiveBuffer()  # nothing it sent before it left is read as a next request
    closing = False
    for command in _original_send(self, event):
        if isinstance(command, commands.SendData):
            continue
        closing = closing or isinstance(command, commands.CloseConnection)
        yield command
    if isinstance(event, (ResponseEndOfMessage, ResponseProtocolError)):
        _gone.discard(self.conn.id)
        if not closing and self.conn.state is not ConnectionState.CLOSED:
            yield commands.CloseConnection(self.conn)


def _answer_early(self, event: ResponseProtocolError, err: errors.SeedtapeError | None):
    """An error while the client still sends its body: answer, half-close, then drop what still comes."""
    if not (self.conn.state & ConnectionState.CAN_WRITE):
        return
    status = event.code.http_status_code()
    if err is not None:
        yield commands.SendData(self.conn, _error_bytes(err))
    elif status is not None:
        yield commands.SendData(self.conn, _http1.make_error_response(status, event.message))
    yield commands.CloseTcpConnection(self.conn, half_close=True)  # the client reads the answer, then EOF
    self.state = _Linger(self, max(_max_body, LINGER_MIN_BYTES))
    self.body_reader = _Linger.no_body  # the rest of the body is never parsed (nor its end, which would leave the linger)
    yield commands.RequestWakeup(LINGER_SECONDS)


class _Linger:
    """The state of an Http1Server that answered early: it reads and drops the rest of the request, then closes."""

    __name__ = "linger"  # mitmproxy names a layer's state in its debug output

    class NoBody:
        """A body reader that finds nothing in what comes."""

        def __call__(self, buf: ReceiveBuffer) -> None:
            return None

        def read_eof(self) -> None:
            return None

    no_body = NoBody()

    def __init__(self, conn: _http1.Http1Server, budget: int) -> None:
        self.conn = conn
        self.budget = budget

    def __call__(self, event: events.Event):
        self.conn.buf = ReceiveBuffer()  # the body nobody will read
        if isinstance(event, events.DataReceived):
            self.budget -= len(event.data)
            if self.budget >= 0:
                return
        elif isinstance(event, events.ConnectionClosed) and event.connection.state is ConnectionState.CLOSED:
            return  # the client closed its side too: mitmproxy closes the rest
        if self.conn.conn.state is not ConnectionState.CLOSED:  # too much, too long, or a half-close
            yield commands.CloseConnection(self.conn.conn)


def _wait(self, event):
    """Http1Server.wait: a client that leaves a kept flow does not end it (docstring, 8.)."""
    if isinstance(event, events.ConnectionClosed) and self.conn.id in _kept and self.conn.state & ConnectionState.CAN_WRITE:
        _gone.add(self.conn.id)
        return
    yield from _original_wait(self, event)


async def _handle_connection(self, connection):
    """ConnectionHandler.handle_connection, with the clean-up it skips when cancelled in its event lock (docstring, 7.)."""
    try:
        await _original_handle_connection(self, connection)
    except asyncio.CancelledError:
        io = self.transports.get(connection)
        if io is not None and io.handler is asyncio.current_task():  # mitmproxy's own clean-up did not run
            connection.state = ConnectionState.CLOSED
            try:
                await self.server_event(events.ConnectionClosed(connection))
            finally:
                with contextlib.suppress(OSError):
                    if io.writer is not None:
                        io.writer.close()
                self.transports.pop(connection, None)
        raise


async def _drain_writers(self):
    """ConnectionHandler.drain_writers, where a client that left a kept flow is neither waited on nor
    torn down by a write error (docstring, 8.)."""
    async with self._drain_lock:
        for connection, io in list(self.transports.items()):
            if io.writer is None or connection.id in _gone:
                continue
            try:
                await io.writer.drain()
            except OSError as e:
                if connection.id in _kept:
                    _gone.add(connection.id)
                elif io.handler is not None:
                    io.handler.cancel(f"Error sending data: {e}")


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


_FINISH_FIRST = "seedtape_finish_before_end"  # flow.metadata mark (docstring, 9.)


@dataclasses.dataclass
class StreamEndHook(commands.StartHook):
    """A marked stream's upstream answer ended; its end goes to the client once every addon returned."""

    flow: http.HTTPFlow
    name = "seedtape_stream_end"


def _stream_response_body(self, event):
    if isinstance(event, ResponseEndOfMessage) and self.flow.metadata.pop(_FINISH_FIRST, False):
        yield StreamEndHook(self.flow)
    return (yield from _original_stream_body(self, event))


def finish_before_end(flow: http.HTTPFlow) -> None:
    """Run the ``seedtape_stream_end`` hook when the flow's streamed answer ends, before its last bytes go out."""
    flow.metadata[_FINISH_FIRST] = True


def make_body_reader(expected_size: int | None):
    reader = _original_body_reader(expected_size)
    return _TrailerDroppingReader(reader) if expected_size is None else reader


def install() -> None:
    """Patch what mitmproxy offers no hook for; a missing symbol is a loud error, never a silent no-op."""
    missing = [name for name in ("make_error_response", "make_body_reader") if not callable(getattr(_http1, name, None))]
    for name in ("send", "wait", "read_body"):
        if not callable(getattr(getattr(_http1, "Http1Server", None), name, None)):
            missing.append(f"Http1Server.{name}")
    for name in ("handle_connection", "drain_writers", "server_event"):
        if not callable(getattr(server.ConnectionHandler, name, None)):
            missing.append(f"server.ConnectionHandler.{name}")
    if not callable(getattr(HttpStream, "state_stream_response_body", None)):
        missing.append("layers.http.HttpStream.state_stream_response_body")
    if {f.name for f in dataclasses.fields(server.ConnectionIO)} < {"handler", "writer"}:
        missing.append("server.ConnectionIO.handler/writer")
    if missing:
        raise RuntimeError(
            f"this mitmproxy lacks {', '.join(m if m.startswith(('server.', 'layers.')) else '_http1.' + m for m in missing)}, which "
            "seedtape patches: install mitmproxy 12 (pip install 'mitmproxy>=12,<13')"
        )
    _http1.make_error_response = make_error_response
    _http1.make_body_reader = make_body_reader
    # deliberate patches of mitmproxy (docstring, 2., 6., 7., 8. and 9.)
    _http1.Http1Server.send = _send  # type: ignore[method-assign]
    _http1.Http1Server.wait = _wait  # type: ignore[method-assign]
    server.ConnectionHandler.handle_connection = _handle_connection  # type: ignore[method-assign]
    server.ConnectionHandler.drain_writers = _drain_writers  # type: ignore[method-assign]
    HttpStream.state_stream_response_body = _stream_response_body  # type: ignore[method-assign]


def configure(upstream: str, max_body: int) -> None:
    """What mitmproxy's own error answers name: the upstream and --max-body."""
    global _upstream, _max_body
    _upstream, _max_body = upstream, max_body


def uninstall() -> None:
    _http1.make_error_response = _original_error_response
    _http1.make_body_reader = _original_body_reader
    # undo the patches of install()
    _http1.Http1Server.send = _original_send  # type: ignore[method-assign]
    _http1.Http1Server.wait = _original_wait  # type: ignore[method-assign]
    server.ConnectionHandler.handle_connection = _original_handle_connection  # type: ignore[method-assign]
    server.ConnectionHandler.drain_writers = _original_drain_writers  # type: ignore[method-assign]
    HttpStream.state_stream_response_body = _original_stream_body  # type: ignore[method-assign]


def _transports(flow: http.HTTPFlow):
    ps = ctx.master.addons.get("proxyserver")
    connections = getattr(ps, "connections", None)
    if connections is None:
        raise RuntimeError("mitmproxy's proxyserver addon has no connections table: seedtape needs mitmproxy 12")
    handler = connections.get(flow.client_conn.id)
    return handler.transports if handler else {}


def client_backlogged(flow: http.HTTPFlow) -> bool:
    """The client has not read what it was sent yet: mitmproxy holds back upstream reads meanwhile."""
    if client_left(flow):  # nothing is sent to it any more, and nothing waits on it
        return False
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
    """A client connection closed: drop what was kept for it."""
    _aborts.pop(client_conn_id, None)
    _kept.pop(client_conn_id, None)
    _gone.discard(client_conn_id)


def read_to_end(flow: http.HTTPFlow) -> None:
    """Read the flow's upstream answer to its end even if its client leaves (a live taped stream; docstring, 8.)."""
    _kept[flow.client_conn.id] = flow


def release(flow: http.HTTPFlow) -> None:
    """The flow's upstream answer ended (completed or not): a client leaving from now on is an ordinary close."""
    if _kept.get(flow.client_conn.id) is flow:
        del _kept[flow.client_conn.id]


def client_left(flow: http.HTTPFlow) -> bool:
    """The client of a flow registered with :func:`read_to_end` left before its answer ended."""
    return flow.client_conn.id in _gone


def describe_error(message: str, max_body: int) -> str:
    """mitmproxy's error text for a flow, in seedtape's words where it means a seedtape option."""
    if "body_size_limit" in message:  # mitmproxy's name for seedtape's --max-body
        side = "response" if "response" in message.lower() else "request"
        return f"the {side} body is larger than --max-body ({max_body} bytes)"
    return message


async def _listen_reuse_port(self, host: str, port: int) -> list:
    """AsyncioServerInstance.listen for one TCP listener that shares its port (docstring, 10.). Without
    the UDP (HTTP/3) listener reverse mode adds for an http(s) upstream: seedtape's clients speak HTTP/1.1."""
    if self.mode.transport_protocol not in ("tcp", "both") or port == 0:  # the supervisor always names the port
        raise RuntimeError(
            f"a worker listens over TCP on the port its supervisor chose, not {port}/{self.mode.transport_protocol}"
        )
    return [await asyncio.start_server(self.handle_stream, host, port, reuse_port=True)]


def listen_shared() -> None:
    """Listen with SO_REUSEPORT in reverse mode, in this process (a worker of `serve --workers N`)."""
    from mitmproxy.proxy import mode_servers

    instance = getattr(mode_servers, "ReverseInstance", None)
    if not callable(getattr(instance, "listen", None)) or not callable(getattr(instance, "handle_stream", None)):
        raise RuntimeError(
            "this mitmproxy lacks mode_servers.ReverseInstance.listen/handle_stream, which seedtape's workers "
            "replace: install mitmproxy 12 (pip install 'mitmproxy>=12,<13')"
        )
    instance.listen = _listen_reuse_port  # type: ignore[union-attr]


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


_FRAMING = (b"content-encoding", b"transfer-encoding", b"content-length")


def own_response(status: int, fields: list[tuple[bytes, bytes]], body: bytes) -> http.Response:
    """``http.Response.make(status, body, fields)`` without its cost on the hit path.

    ``make`` builds the message through a dataclass whose ``__post_init__`` type-checks every
    field in debug mode (Python's default), about a third of what a replay hit costs in the
    adapter. seedtape's own answers have known types, so the data is assembled directly; a
    response with framing headers (which ``make`` would re-encode) takes the ordinary path.
    """
    if any(k.lower() in _FRAMING for k, _ in fields):
        return http.Response.make(status, body, fields)
    now = time.time()
    data = object.__new__(http.ResponseData)  # the dataclass's fields, as its __init__ would set them
    data.http_version = b"HTTP/1.1"
    data.status_code = status
    data.reason = status_codes.RESPONSES.get(status, "").encode()
    data.headers = http.Headers([*fields, (b"content-length", str(len(body)).encode())])
    data.content = body
    data.trailers = None
    data.timestamp_start = data.timestamp_end = now
    resp = object.__new__(http.Response)
    resp.data = data
    return resp
