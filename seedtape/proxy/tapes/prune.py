"""Pruning: which tape entries a set of filters selects, and removing them.

Filters combine with AND. An empty filter selects nothing and ``select``
refuses it: a store is never emptied by accident.
"""

from __future__ import annotations

from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.entryfilter import EntryFilter
from seedtape.proxy.tapes.store import Store


def select(store: Store, f: EntryFilter, now: float | None = None) -> list[TapeEntry]:
    """The entries every filter of ``f`` matches, in key then fingerprint order."""
    if f.empty:
        raise ValueError("no filter: pruning needs at least one, it never empties a store by accident")
    return f.select(store, now)


def prune(store: Store, entries: list[TapeEntry]) -> int:
    """Delete the given entries; returns how many were still there."""
    return sum(store.delete(e.key, e.fingerprint) for e in entries)
