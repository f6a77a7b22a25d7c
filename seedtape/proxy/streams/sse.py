"""Server-sent events: an incremental parser and a renderer.

The parser follows the WHATWG event-stream rules (lines end in CRLF, LF or CR;
``data`` lines join with LF; a blank line dispatches; ``:`` starts a comment).
It is written here because the SSE libraries (httpx-sse, sseclient-py) are
bound to an HTTP client's response object and keep their incremental decoder
private, while seedtape must parse bytes as mitmproxy hands them over.
"""

from __future__ import annotations

from dataclasses import dataclass

DONE = "[DONE]"


@dataclass(frozen=True)
class Event:
    data: str
    event: str = ""
    id: str = ""


class SSEParser:
    """Feed it bytes in any chunking; it returns the events completed so far."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._event = ""
        self._id = ""
        self.malformed = False  # a line that is not UTF-8

    def feed(self, chunk: bytes) -> list[Event]:
        self._buf += chunk
        out: list[Event] = []
        while True:
            cut = _line_end(self._buf)
            if cut is None:
                return out
            line, rest = self._buf[: cut[0]], self._buf[cut[1] :]
            self._buf = rest
            ev = self._line(line)
            if ev is not None:
                out.append(ev)

    def close(self) -> list[Event]:
        """End of stream: a trailing event without its blank line is dispatched too."""
        out = self.feed(b"\n") if self._buf else []
        if self._data:
            ev = self._dispatch()
            if ev is not None:
                out.append(ev)
        return out

    @property
    def pending(self) -> bool:
        """Bytes or fields of an unfinished event are buffered."""
        return bool(self._buf or self._data)

    def _line(self, raw: bytes) -> Event | None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.malformed = True
            line = raw.decode("utf-8", "replace")
        if not line:
            return self._dispatch() if self._data or self._event else None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None

    def _dispatch(self) -> Event | None:
        if not self._data:
            self._event = ""
            return None
        ev = Event("\n".join(self._data), self._event, self._id)
        self._data, self._event = [], ""
        return ev


def _line_end(buf: bytes) -> tuple[int, int] | None:
    """(end of line, start of next) for the first complete line, or None."""
    n, r = buf.find(b"\n"), buf.find(b"\r")
    if r == -1 and n == -1:
        return None
    if r == -1 or (n != -1 and n < r):
        return n, n + 1
    if r == len(buf) - 1:
        return None  # a CR at the end may be the first half of CRLF
    return (r, r + 2) if buf[r + 1 : r + 2] == b"\n" else (r, r + 1)


def parse(body: bytes) -> list[Event]:
    p = SSEParser()
    return p.feed(body) + p.close()


def render(events: list[Event]) -> bytes:
    out = []
    for e in events:
        if e.event:
            out.append(f"event: {e.event}\n")
        out.extend(f"data: {line}\n" for line in e.data.split("\n"))
        out.append("\n")
    return "".join(out).encode()
