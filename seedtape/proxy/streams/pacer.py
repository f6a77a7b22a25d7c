"""A loopback HTTP server that plays recorded streams back with their recorded gaps.

mitmproxy sends a response made by an addon in one piece, so a paced replay
(``--replay-pace``) is served from here instead: the addon points the flow at
this server with a one-time token, and the reply streams back through
mitmproxy like a live one.
"""

from __future__ import annotations

import asyncio
import secrets
from http import HTTPStatus

from seedtape.proxy.exchange import Reply


class Pacer:
    def __init__(self) -> None:
        self._pending: dict[str, Reply] = {}
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Pacer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def register(self, reply: Reply) -> str:
        """Keep a reply for one request; returns the path to ask for it."""
        token = secrets.token_hex(16)
        self._pending[token] = reply
        return f"/{token}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            token = lines[0].split(" ")[1].lstrip("/")
            length = next(
                (int(v) for k, _, v in (ln.partition(":") for ln in lines[1:]) if k.strip().lower() == "content-length"), 0
            )
            if length:
                await reader.readexactly(length)
            reply = self._pending.pop(token, None)
            if reply is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                return
            status = f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}\r\n"
            hdrs = "".join(f"{k}: {v}\r\n" for k, v in reply.headers if k.lower() not in ("content-length", "transfer-encoding"))
            writer.write((status + hdrs + "transfer-encoding: chunked\r\nconnection: close\r\n\r\n").encode())
            for delay, data in reply.pace or [(0.0, reply.body)]:
                if delay:
                    await asyncio.sleep(delay)
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def paced(body: bytes, gaps: list[list[float]], factor: float) -> list[tuple[float, bytes]]:
    """Split a recorded stream at its recorded reads, with the gaps between them scaled."""
    out, start, last_t = [], 0, 0.0
    for offset, t in gaps:
        offset = int(offset)
        if offset <= start or offset > len(body):
            continue
        out.append((max(0.0, (t - last_t) * factor), body[start:offset]))
        start, last_t = offset, t
    if start < len(body):
        out.append((0.0, body[start:]))
    return out
