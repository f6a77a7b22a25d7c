"""Taping a live event stream as it passes through, and judging whether it is complete.

The tape keeps the exact bytes and when each read arrived (for paced replay);
the stream's dialect reads each event (a chunk, the end, or a problem) and
judges completeness, so only a stream the upstream finished is recorded: a
cut, an error event or a malformed event makes the tape unrecordable.
"""

from __future__ import annotations

import time

from seedtape.proxy.dialects.base import Dialect, StreamEvent
from seedtape.proxy.streams.sse import SSEParser


class StreamTape:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.raw = bytearray()
        self.gaps: list[list[float]] = []  # [byte offset where a read ended, seconds since the first byte]
        self.chunks: list[dict] = []
        self.done = False  # the dialect's end event arrived (chat: data: [DONE])
        self.ended = False  # the upstream closed the body cleanly
        self.problem = ""
        self._parser = SSEParser()
        self._t0: float | None = None

    def feed(self, data: bytes) -> None:
        """Take the next piece of the body as sent; ``b""`` marks a clean end."""
        if not data:
            self.ended = True
            self._take(self._parser.close())
            return
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        self.raw += data
        self.gaps.append([len(self.raw), round(now - self._t0, 4)])
        self._take(self._parser.feed(data))

    def _take(self, events) -> None:
        for ev in events:
            if self.done:
                self.problem = self.problem or "events after the stream's end"
                continue
            kind, value = self.dialect.read_event(ev)
            if kind == StreamEvent.END:
                self.done = True
                if isinstance(value, dict):  # an end event with content (Responses: the whole response)
                    self.chunks.append(value)
            elif kind == StreamEvent.CHUNK:
                assert isinstance(value, dict)
                self.chunks.append(value)
            else:
                self.problem = self.problem or str(value)
        if self._parser.malformed:
            self.problem = self.problem or "an event is not UTF-8"

    @property
    def fingerprint(self) -> str:
        return self.dialect.stream_fingerprint(self.chunks)

    @property
    def model(self) -> str:
        return self.dialect.stream_model(self.chunks)

    def verdict(self) -> str:
        """Empty when the stream is complete and recordable, else why not."""
        return self.problem or self.dialect.stream_problem(self.chunks, self.done, self.ended)
