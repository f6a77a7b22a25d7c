"""The remote tier as a proxy uses it: looked up after a local miss, written through, queued on disk while away.

- A lookup (``find``) goes to the remote only after the local store missed; what it finds is
  copied into the local store (in the background: the hit is served at once).
- A recording or an event is committed locally with a marker in the store's outbox, in the
  same transaction; right after that commit the writer thread pushes what is marked
  (``push_queued``) and takes the markers off. A client's answer waits for both, so a
  recording is on the remote before its client has it, unless the remote is away: then
  the markers stay on disk and are pushed when it answers again (also after a restart).
- Away: the first failed call marks the remote down (one warning line); lookups then fail at
  once (RemoteError, for a replay miss to name it) instead of waiting for a timeout each, and
  a thread of its own pings the remote every RETRY_SECONDS until it answers.

A read-only remote (``--remote-readonly``) is looked up but never written: nothing is marked.
"""

from __future__ import annotations

import logging
import threading

from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.remote import BadRemoteEntry, Remote, RemoteError
from seedtape.proxy.tapes.store import Store

log = logging.getLogger("seedtape")
RETRY_SECONDS = 1.0
PUSH_BATCH = 200


class SharedTier:
    unreachable = RemoteError  # what a lookup raises while the remote is away

    def __init__(self, store: Store, remote: Remote, readonly: bool = False):
        self.store = store
        self.remote = remote
        self.readonly = readonly
        self.down_reason = ""  # why the remote is away ("" while it answers)
        self.pushed = 0  # recordings and events pushed from the queue (counts for the log)
        self._lock = threading.Lock()  # one push at a time: the writer's and the watcher's
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="seedtape-remote", daemon=True)

    @property
    def name(self) -> str:
        return self.remote.name

    @property
    def queues(self) -> bool:
        """Whether recordings are marked for the remote (not when it is read-only)."""
        return not self.readonly

    def start(self) -> SharedTier:
        """Check the remote once (a warning when away) and start the thread that pushes the queue."""
        try:
            self.remote.ping()
        except RemoteError as e:
            self._down(e)
        self._watcher.start()
        return self

    # -- lookups (the proxy's thread) ----------------------------------------------------

    def find(self, key: str, fingerprint: str | None) -> TapeEntry | None:
        """The remote's entry for a local miss; RemoteError when the remote is away (at once while it is down)."""
        if self.down_reason:
            raise RemoteError(self.down_reason)
        try:
            return self.remote.get(key, fingerprint)
        except BadRemoteEntry as e:  # the remote answers; this one entry is unsound: a miss, not an outage
            log.warning("seedtape: %s", e)
            return None
        except RemoteError as e:
            self._down(e)
            raise

    # -- pushing (the writer's thread, and the watcher's) ------------------------------------

    def push_queued(self) -> int:
        """Push what waits in the outbox while the remote answers; how many were pushed."""
        if self.down_reason or not self.queues:
            return 0
        with self._lock:
            done = 0
            while True:
                items = self.store.queued(PUSH_BATCH)
                if not items:
                    return done
                markers: list[bytes] = []
                try:
                    entries = [(marker, TapeEntry.decode(raw), raw) for marker, kind, _, raw in items if kind == "entry" and raw]
                    outcomes = self.remote.put_many([(e, raw) for _, e, raw in entries]) if entries else []  # one round trip
                    for (_, e, _), outcome in zip(entries, outcomes, strict=True):
                        if outcome == "conflict":
                            log.warning(
                                "seedtape: the remote %s holds another recording for key=%s; it keeps its own",
                                self.name,
                                e.key[:12],
                            )
                    for _, kind, what, _ in items:
                        if kind == "event" and isinstance(what, dict) and what:
                            self.remote.add_event(what)
                    markers = [marker for marker, *_ in items]
                except RemoteError as e:
                    self._down(e)
                    return done
                finally:
                    self.store.dequeue(markers)
                    done += len(markers)
                    self.pushed += len(markers)

    def _down(self, e: RemoteError) -> None:
        if not self.down_reason:
            log.warning(
                "seedtape: %s; serving from the local store, recordings queue on disk until it answers", str(e) or self.name
            )
        self.down_reason = str(e) or f"the remote {self.name} is unreachable"

    def _watch(self) -> None:
        while not self._stop.wait(RETRY_SECONDS):
            if self.down_reason:
                try:
                    self.remote.ping()
                except RemoteError:
                    continue
                queued = self.store.queued_count()
                self.down_reason = ""
                log.warning("seedtape: the remote %s answers again; pushing %d queued", self.name, queued)
            if self.queues and self.store.queued_count():
                try:
                    self.push_queued()
                except Exception:  # a store error: logged, retried on the next round
                    log.exception("seedtape: pushing the queue to the remote %s failed", self.name)

    def stop(self) -> None:
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join()
        left = self.store.queued_count() if self.queues else 0
        if left:
            log.warning(
                "seedtape: %d recordings and events wait for the remote %s (on disk: pushed by the next proxy "
                "on this store, or by `seedtape push`)",
                left,
                self.name,
            )
