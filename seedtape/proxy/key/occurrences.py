"""--repeats sequence: how many times an identical request was seen in its scope so far.

One proxy process counts in memory. The workers of `seedtape serve --workers N` count in one
small LMDB environment in their run directory (seedtape/proxy/workerrun.py), so the Nth
identical request is occurrence N whichever worker it reaches. That environment lives for
one run only: it is written without fsync.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import lmdb

from seedtape.proxy import workerrun


class Occurrences:
    """In-process counts, by (scope, request key)."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def next(self, scope: str, key: str) -> int:
        """Count one more request (scope, key); which occurrence it is (1, 2, ...)."""
        self.counts[(scope, key)] += 1
        return self.counts[(scope, key)]


class SharedOccurrences(Occurrences):
    """Counts shared by the processes that open the same directory (one LMDB write per count)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(path), map_size=64 << 20, sync=False, metasync=False, mode=0o600)

    def next(self, scope: str, key: str) -> int:
        # a scope can be long (a test's node id): LMDB keys stop at 511 bytes
        k = hashlib.sha256(f"{scope}\0{key}".encode()).digest()
        with self.env.begin(write=True) as txn:  # LMDB serializes writers across processes
            n = int(txn.get(k, b"0")) + 1
            txn.put(k, str(n).encode())
        return n


_shared: dict[Path, SharedOccurrences] = {}  # LMDB must not open one environment twice in a process


def for_this_process() -> Occurrences:
    """Shared counts in a worker of `serve --workers N` (one environment per process, however many decks
    it builds), in-process counts otherwise."""
    run = workerrun.current()
    if run is None:
        return Occurrences()
    if run.occurrences not in _shared:
        _shared[run.occurrences] = SharedOccurrences(run.occurrences)
    return _shared[run.occurrences]
