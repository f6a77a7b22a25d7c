"""Raw HTTP/1.1 for tests that need more control than an HTTP client gives: h11 frames and parses.

``http_request`` sends either exact bytes (a malformed or hostile request, an HTTP/1.0 one; h11
only writes well-formed HTTP/1.1) or an ``h11.Request`` (``build_request``) to host:port, and
reads the response with h11. ``parse_response`` reads a response from bytes a test collected
itself (a slow reader, a cut stream) and says whether it was complete.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import h11

MAX_HEAD = 1 << 20  # h11's default of 16 KiB would refuse the big heads some tests provoke


class RawResponse(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-cased names; a repeated header's values joined with ", "
    body: bytes  # de-chunked, still content-encoded


class ClosedEarly(ConnectionError):
    """The peer closed the connection before a complete response."""


def build_request(
    method: str,
    target: str,
    body: bytes = b"",
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    *,
    host: str = "127.0.0.1",
) -> h11.Request:
    """An HTTP/1.1 request head; ``host`` and ``content-length`` are added unless ``headers`` has them (or chunking).

    ``body`` only sizes the content-length: pass it again to ``http_request`` or ``request_bytes``.
    """
    items = list(headers.items() if isinstance(headers, Mapping) else headers)
    names = {k.lower() for k, _ in items}
    if "host" not in names:
        items.insert(0, ("host", host))
    if (
        "content-length" not in names
        and "transfer-encoding" not in names
        and (body or method.upper() in ("POST", "PUT", "PATCH"))
    ):
        items.append(("content-length", str(len(body))))
    return h11.Request(method=method, target=target, headers=items)


def request_bytes(request: h11.Request, body: bytes | None = b"") -> bytes:
    """The bytes h11 writes for ``request`` and ``body`` (framed as its headers say); with None, the head alone."""
    conn = h11.Connection(h11.CLIENT)
    out = conn.send(request)
    if body is None:
        return out
    if body:
        out += conn.send(h11.Data(data=body))
    return out + conn.send(h11.EndOfMessage())


def _reader(method: bytes) -> h11.Connection:
    """An h11 client that believes it sent a ``method`` request: what it needs to frame the response."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    conn.send(
        h11.Request(
            method=b"HEAD" if method == b"HEAD" else b"POST", target="/", headers=[("host", "x"), ("content-length", "0")]
        )
    )
    conn.send(h11.EndOfMessage())
    return conn


class _Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.complete = False

    def take(self, conn: h11.Connection, recv) -> None:
        """Events until the response ends; ``recv()`` gives more bytes (b"" at the end)."""
        closed = False
        while True:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as e:
                if closed:
                    raise ClosedEarly(f"the connection closed {self._where()}: {e}") from None
                raise
            if ev is h11.NEED_DATA:
                data = recv()
                closed = not data
                conn.receive_data(data)
            elif isinstance(ev, h11.Response):
                self.status = ev.status_code
                for name, value in ev.headers:
                    k, v = name.decode("latin-1").lower(), value.decode("latin-1")
                    self.headers[k] = f"{self.headers[k]}, {v}" if k in self.headers else v
            elif isinstance(ev, h11.Data):
                self.body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                self.complete = True
                return
            elif isinstance(ev, h11.ConnectionClosed):
                raise ClosedEarly(f"the connection closed {self._where()}")
            # an InformationalResponse (100 Continue) is skipped

    def _where(self) -> str:
        return f"after the head and {len(self.body)} body bytes" if self.status else "before a response"

    def result(self) -> RawResponse:
        return RawResponse(self.status, self.headers, bytes(self.body))


def http_request(
    port: int,
    request: bytes | h11.Request,
    body: bytes = b"",
    *,
    host: str = "127.0.0.1",
    timeout: float = 30.0,
    until_close: bool = False,
) -> RawResponse:
    """Send ``request`` to host:port and read one response.

    ``request`` is exact bytes (sent as they are, ``body`` appended) or an ``h11.Request`` (written by
    h11, with ``body``). A HEAD request's answer is read without a body. ``until_close``: also wait
    for the peer to close the connection (nothing may follow the response). Raises ClosedEarly when
    the connection closes before a complete response, TimeoutError when nothing comes in ``timeout``.
    """
    if isinstance(request, h11.Request):
        data, method = request_bytes(request, body), bytes(request.method)
    else:
        data, method = request + body, request.split(b" ", 1)[0]
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        resp = _Response()
        resp.take(_reader(method), lambda: s.recv(65536))
        if until_close:
            extra = b""
            while chunk := s.recv(65536):
                extra += chunk
            assert not extra, f"bytes after the response: {extra[:200]!r}"
    return resp.result()


def parse_response(data: bytes, *, method: bytes = b"POST") -> tuple[RawResponse, bool]:
    """The response in ``data`` (everything read until the connection closed), and whether it was complete.

    An incomplete body (a cut stream) comes back as far as it got; no head at all raises ClosedEarly.
    """
    resp = _Response()
    pieces = [data, b""]
    try:
        resp.take(_reader(method), lambda: pieces.pop(0) if pieces else b"")
    except ClosedEarly:
        if not resp.status:
            raise
    return resp.result(), resp.complete
