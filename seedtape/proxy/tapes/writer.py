"""Group commit: the store's writes, made by one thread, many to a transaction.

Each LMDB commit is synced to disk, which costs a millisecond or more. Made on the
proxy's event loop, every recording would stall every hit behind its fsync; made one
by one, recordings could go no faster than fsyncs. The writer thread takes whatever
is queued when it is free and commits it as one transaction (Store.batch), so a burst
of recordings shares one fsync, and the event loop never waits for the disk: an
exchange awaits its own future, resolved once its write is on disk.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from seedtape.proxy.tapes.store import Store

log = logging.getLogger("seedtape")
MAX_GROUP = 512  # writes per transaction: bounds one commit's time and memory

Step = Callable[[Any], Any]


class WriterClosed(RuntimeError):
    """The writer was closed: nothing more is written."""


class GroupWriter:
    def __init__(self, store: Store, after: Callable[[], None] | None = None):
        """``after``: run in the writer's thread after each commit, before the group's futures are resolved
        (the remote tier pushes what the commit queued for it, so a client's answer waits for that too)."""
        self.store = store
        self.after = after
        self._queue: queue.SimpleQueue[tuple[Step, Future] | None] = queue.SimpleQueue()
        self._closed = False
        self.commits = 0  # transactions committed (for tests and stats: fewer than writes under load)
        self.writes = 0
        self._thread = threading.Thread(target=self._run, name="seedtape-writer", daemon=True)
        self._thread.start()

    def submit(self, step: Step) -> Future:
        """Queue one write (a Store step such as ``store.replacing(entry)``); its future holds the step's result."""
        fut: Future = Future()
        if self._closed:
            fut.set_exception(WriterClosed("the store writer is closed"))
            return fut
        self._queue.put((step, fut))
        return fut

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            group = [item]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            self._commit(group)
            if stop:
                return

    def _commit(self, group: list[tuple[Step, Future]]) -> None:
        try:
            results = self.store.batch([step for step, _ in group])
        except BaseException as e:  # the transaction failed as a whole: every write in it failed
            for _, fut in group:
                fut.set_exception(e)
            return
        self.commits += 1
        self.writes += len(group)
        if self.after is not None:
            try:
                self.after()
            except Exception:  # what it could not do stays queued on disk; it logs its own failures
                log.exception("seedtape: the store writer's follow-up failed")
        for (_, fut), result in zip(group, results, strict=True):
            if isinstance(result, Exception):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    def close(self) -> None:
        """Write what is queued, then stop the thread; later submits fail with WriterClosed."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
