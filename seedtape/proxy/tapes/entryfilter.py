"""Which entries (or audit events) a set of filters selects: one filter for prune, audit, events and export.

Filters combine with AND; an unset filter matches everything. ``model`` matches
the model an answer names or the one the request asked for (an alias such as
``gpt-4o-mini`` and the snapshot that answered it). Ages are seconds before ``now``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.store import Store


@dataclass(frozen=True)
class EntryFilter:
    model: str | None = None
    key_prefix: str | None = None
    older_than: float | None = None  # recorded longer ago than this
    newer_than: float | None = None  # recorded more recently than this
    since: float | None = None  # an absolute time, inclusive
    until: float | None = None  # an absolute time, exclusive
    only: frozenset[tuple[str, str]] | None = None  # (key, fingerprint) pairs, e.g. an unused report
    not_newest: bool = False  # every fingerprint of a key but the one replay serves (entries only)

    @property
    def empty(self) -> bool:
        return self == EntryFilter()

    def matches(
        self, key: str, models: Iterable[str | None], at: float, now: float | None = None, fingerprint: str | None = None
    ) -> bool:
        """Whether a record with this key, these model names (None: not named) and this time passes every filter."""
        now = time.time() if now is None else now
        if self.key_prefix is not None and not key.startswith(self.key_prefix.lower()):
            return False
        if self.model is not None and self.model not in models:
            return False
        if self.older_than is not None and not now - at > self.older_than:
            return False
        if self.newer_than is not None and not now - at < self.newer_than:
            return False
        if self.since is not None and at < self.since:
            return False
        if self.until is not None and at >= self.until:
            return False
        return self.only is None or (key, fingerprint) in self.only

    def entry(self, e: TapeEntry, now: float | None = None) -> bool:
        requested = (e.request.get("body") or {}).get("model") if isinstance(e.request.get("body"), dict) else None
        return self.matches(e.key, (e.model, requested), e.recorded_at, now, e.fingerprint)

    def event(self, ev: dict, now: float | None = None) -> bool:
        return self.matches(str(ev.get("key", "")), (ev.get("model"),), float(ev.get("time", 0)), now)

    def select(self, store: Store, now: float | None = None) -> list[TapeEntry]:
        """The entries that pass, in key then fingerprint order."""
        now = time.time() if now is None else now
        newest: dict[str, str | None] = {}
        out = []
        for e in store.entries():
            if not self.entry(e, now):
                continue
            if self.not_newest:
                if e.key not in newest:
                    newest[e.key] = store.latest_fingerprint(e.key)
                if e.fingerprint == newest[e.key]:
                    continue
            out.append(e)
        return out


def newest_per_key(entries: Iterable[TapeEntry]) -> list[TapeEntry]:
    """The most recently recorded entry of each request key, in key order (what `seedtape audit` re-sends)."""
    newest: dict[str, TapeEntry] = {}
    for e in entries:
        if e.key not in newest or e.recorded_at > newest[e.key].recorded_at:
            newest[e.key] = e
    return sorted(newest.values(), key=lambda e: e.key)
