"""Taping a live event stream as it passes through, and judging whether it is complete.

Only a stream the upstream finished (``data: [DONE]``, or a clean end) whose
every event is a JSON chunk, with a finish_reason, is worth recording. A cut,
an error event or a malformed event makes the tape unrecordable.
"""

from __future__ import annotations

import json
import time

from seedtape.proxy.streams.sse import DONE, SSEParser


class StreamTape:
    def __init__(self) -> None:
        self.raw = bytearray()
        self.gaps: list[list[float]] = []  # [byte offset where a read ended, seconds since the first byte]
        self.chunks: list[dict] = []
        self.done = False  # saw data: [DONE]
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
                self.problem = self.problem or "events after [DONE]"
            elif ev.data == DONE:
                self.done = True
            else:
                try:
                    chunk = json.loads(ev.data)
                except ValueError:
                    self.problem = self.problem or "an event is not JSON"
                    continue
                if not isinstance(chunk, dict) or "error" in chunk:
                    self.problem = self.problem or "the stream carried an error event"
                    continue
                self.chunks.append(chunk)
        if self._parser.malformed:
            self.problem = self.problem or "an event is not UTF-8"

    @property
    def fingerprint(self) -> str | None:
        for c in self.chunks:
            if isinstance(c.get("system_fingerprint"), str) and c["system_fingerprint"]:
                return c["system_fingerprint"]
        return None

    def verdict(self) -> str:
        """Empty when the stream is complete and recordable, else why not."""
        if self.problem:
            return self.problem
        if not (self.done or self.ended):
            return "the stream did not finish"
        if not self.chunks:
            return "the stream carried no events"
        if not any(c.get("finish_reason") for ch in self.chunks for c in ch.get("choices") or []):
            return "the stream ended without a finish_reason"
        return ""
