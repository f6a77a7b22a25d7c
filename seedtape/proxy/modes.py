"""Modes: what the proxy does with a request it can record."""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    AUTO = "auto"  # replay hits, record misses (default)
    REPLAY = "replay"  # offline only: a miss is an error, the upstream is never contacted
    RECORD = "record"  # always live, store every good answer
    AUDIT = "audit"  # always live, compare with the recording, never change what replay serves
    PASSTHROUGH = "passthrough"  # forward untouched, record nothing

    @property
    def serves_recordings(self) -> bool:
        return self in (Mode.AUTO, Mode.REPLAY)

    @property
    def records(self) -> bool:
        return self in (Mode.AUTO, Mode.RECORD)


MODE_NAMES = tuple(m.value for m in Mode)
