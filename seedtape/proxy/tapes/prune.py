"""Pruning: which tape entries a set of filters selects, and removing them.

Filters combine with AND. An empty filter selects nothing and ``select``
refuses it: a store is never emptied by accident.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.store import Store


@dataclass(frozen=True)
class PruneFilter:
    older_than: float | None = None  # seconds: entries recorded longer ago than this
    not_newest: bool = False  # every fingerprint of a key but the one replay serves
    model: str | None = None
    key_prefix: str | None = None
    only: frozenset[tuple[str, str]] | None = None  # (key, fingerprint) pairs, e.g. an unused report

    @property
    def empty(self) -> bool:
        return (self.older_than is None and not self.not_newest and self.model is None and self.key_prefix is None
                and self.only is None)


def select(store: Store, f: PruneFilter, now: float | None = None) -> list[TapeEntry]:
    """The entries every filter of ``f`` matches, in key then fingerprint order."""
    if f.empty:
        raise ValueError("no filter: pruning needs at least one, it never empties a store by accident")
    cutoff = (now if now is not None else time.time()) - f.older_than if f.older_than is not None else None
    prefix = f.key_prefix.lower() if f.key_prefix is not None else None
    newest: dict[str, str | None] = {}
    out = []
    for e in store.entries():
        if prefix is not None and not e.key.startswith(prefix):
            continue
        if f.only is not None and (e.key, e.fingerprint) not in f.only:
            continue
        if f.model is not None and e.model != f.model:
            continue
        if cutoff is not None and not e.recorded_at < cutoff:
            continue
        if f.not_newest:
            if e.key not in newest:
                newest[e.key] = store.latest_fingerprint(e.key)
            if e.fingerprint == newest[e.key]:
                continue
        out.append(e)
    return out


def prune(store: Store, entries: list[TapeEntry]) -> int:
    """Delete the given entries; returns how many were still there."""
    return sum(store.delete(e.key, e.fingerprint) for e in entries)
