"""One request's way through seedtape, as data: what it is, where it stands, what it answers.

The adapter reads an Exchange and never assigns to it: every change of state is
one of the transition methods below (or Tapedeck's), so the status a client sees
and the log line it produces are decided in the core.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum

from seedtape.proxy import wire
from seedtape.proxy.audit.divergence import Divergence
from seedtape.proxy.dialects import Dialect
from seedtape.proxy.explain.nearest import Explanation
from seedtape.proxy.key.canonical import CanonicalRequest
from seedtape.proxy.modes import Mode
from seedtape.proxy.streams.streamtape import StreamTape
from seedtape.proxy.tapes.entry import TapeEntry


class Status(StrEnum):
    """The ``seedtape-status`` of an exchange (docs/headers.md)."""

    HIT = "hit"  # served from the store
    HIT_FROM_JSON = "hit; converted-from=json"  # a stream built from a recorded JSON answer
    HIT_FROM_SSE = "hit; converted-from=sse"  # a JSON answer assembled from a recorded stream
    RECORDED = "recorded"  # live, stored
    RECORDING = "recording"  # a live stream being taped; stored if the upstream completes it
    LIVE = "live"  # live, not stored (the mode does not record)
    UNRECORDED = "unrecorded"  # live, not stored: an upstream error, a cut stream, a body that is no answer
    MISS = "miss"  # replay miss
    PASSTHROUGH = "passthrough"  # not an API seedtape records, or passthrough mode
    ERROR = "error"  # seedtape refused it, or the exchange failed

    @property
    def is_hit(self) -> bool:
        return self in (Status.HIT, Status.HIT_FROM_JSON, Status.HIT_FROM_SSE)


@dataclass
class Reply:
    """A response seedtape answers with itself, without the upstream."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    pace: list[tuple[float, bytes]] | None = None  # (seconds to wait, bytes to send), for paced streams


@dataclass
class Exchange:
    """What seedtape knows about one request, from arrival to recording."""

    method: str
    path: str
    mode: Mode = Mode.AUTO  # the proxy's mode, or the request's own (routing prefix)
    forward_path: str | None = None  # set when a /_seedtape/ prefix was stripped
    dialect: Dialect | None = None  # the API the request speaks; None: not one seedtape records
    canonical: CanonicalRequest | None = None
    seed: str = "none"
    occurrence: int = 0  # with --repeats sequence: the Nth identical request of its scope (0: not counted)
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage as the client asked
    tape: StreamTape | None = None  # the live stream being taped
    recorded: TapeEntry | None = None  # the recording a live answer is compared with
    divergence: Divergence | None = None
    live_output: list | None = None
    embedding_distance: float | None = None
    miss: Explanation | None = None  # why a replay missed
    forward_body: bytes | None = None  # set when the forwarded body differs (seed injected)
    reply: Reply | None = None  # set when seedtape answers itself
    status: Status = Status.PASSTHROUGH
    fingerprint: str = ""
    started: float = field(default_factory=time.monotonic)
    upstream_completed: bool = False  # the upstream sent its whole answer (a stream: up to its end)
    pending: Future | None = None  # its recording, handed to the store's writer and not yet on disk
    on_commit: Callable[[TapeEntry | None], None] | None = None  # the deck's last step once it is (with what it replaced)
    note: str = ""  # why something was not recorded, for the log

    @property
    def key(self) -> str:
        return self.canonical.key if self.canonical else ""

    @property
    def goes_live(self) -> bool:
        """Whether the upstream answers this request (seedtape did not answer it itself)."""
        return self.reply is None

    def headers(self) -> list[tuple[str, str]]:
        """The ``seedtape-*`` headers for the response the client gets, as safe header values.

        The fingerprint and the miss explanation come from an upstream or a tape: untrusted.
        """
        out: list[tuple[str, str]] = [(wire.STATUS, self.status.value)]
        if self.canonical:
            out += [(wire.KEY, self.key), (wire.SEED, self.seed)]
        if self.occurrence:
            out.append((wire.OCCURRENCE, str(self.occurrence)))
        if self.fingerprint:
            out.append((wire.FINGERPRINT, self.fingerprint))
        if self.divergence:
            out.append((wire.DIVERGENCE, self.divergence.header()))
        if self.miss is not None:
            out.append((wire.MISS, self.miss.summary()))
        return [(k, wire.header_value(v)) for k, v in out]

    # -- transitions the adapter reports ---------------------------------------------------------

    def unrecorded(self, why: str) -> None:
        """The answer went to the client but will not be recorded (taping or recording failed)."""
        self.tape = None
        self.status, self.note = Status.UNRECORDED, why

    def failed(self, why: str) -> None:
        """The exchange broke (connection lost, upstream cut, timed out): nothing is recorded."""
        if self.status is Status.RECORDED or self.pending is not None:
            return  # the upstream had completed it: the recording stands (or is being written)
        self.tape = None
        self.status, self.note = Status.ERROR, why

    def timed_out(self, seconds: float) -> None:
        self.failed(f"upstream timeout after {seconds:g}s")

    def log_line(self, status_code: int) -> str:
        """The per-request log line: status, method, path (no query), key prefix, fingerprint, code, time, notes."""
        ms = (time.monotonic() - self.started) * 1000
        extra = f" ({self.note})" if self.note and not self.status.is_hit else ""
        if self.divergence is not None:
            extra += f" divergence={self.divergence.header()}"
            if self.embedding_distance is not None:
                extra += f" embedding_distance={self.embedding_distance}"
            if self.divergence.departure:
                extra += f" first difference: {self.divergence.departure['summary']}"
        return (
            f"seedtape: {self.status.value} {self.method} {wire.log_path(self.path)} key={self.key[:12] or '-'} "
            f"fp={self.fingerprint or '-'} -> {status_code} {ms:.1f}ms{extra}"
        )
