"""The LMDB store of tape entries.

Layout (named sub-databases in one LMDB environment):

- ``meta``:    ``schema`` -> schema version, so an old binary never misreads a new store.
- ``entries``: ``<request key>\\0<fingerprint>`` -> encoded TapeEntry.
- ``latest``:  ``<request key>`` -> the fingerprint recorded most recently for it.
- ``events``:  ``<ns timestamp>-<random>`` -> an audit event (JSON), in time order.
- ``near``, ``paths``: the miss index (missindex.py): MinHash bands and endpoint paths -> key id,
  for finding the recordings nearest to a request that missed. The write steps below keep it
  current in the same transactions as the entries (a key enters it with its first fingerprint and
  leaves it with its last), so it is consistent, shared by every process, and never built at
  start-up. A store of schema 1 or 2 gets it built once, when first opened for writing; opened
  read-only, such a store has none, and ``nearest`` compares a bounded sample instead.

LMDB gives one writer at a time across processes and lock-free readers, so
several proxies can share one store. Every commit is synced to disk (LMDB's
defaults ``sync=True, metasync=True``): a crash, even of the machine, loses at
most the transaction in flight, and never corrupts committed entries.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import TypeVar

import lmdb
import orjson

from seedtape.proxy.tapes import missindex
from seedtape.proxy.tapes.entry import CorruptEntry, TapeEntry

# 2: entries may be zstd-compressed (entry.py's ST2 format); 3: a persistent miss index (missindex.py).
# A store of 1 or 2 is upgraded when opened for writing.
SCHEMA_VERSION = 3
_READABLE = (b"1", b"2", str(SCHEMA_VERSION).encode())
UNINDEXED_SAMPLE = 5000  # request keys compared at a miss on a store without a miss index (read-only, schema < 3)
DECODED_ENTRIES, DECODED_MAX_BYTES = 512, 256 * 1024  # get's decoded entries kept: how many, how big at most
DEFAULT_MAP_SIZE = 256 * 1024 * 1024
MAX_MAP_SIZE = 1 << 40

T = TypeVar("T")
_MADV_DONTNEED = 4
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
log = logging.getLogger("seedtape")


class StoreError(RuntimeError):
    """The store cannot be used; the message says why and what to do."""


_QUEUED_ENTRY, _QUEUED_EVENT = b"e\0", b"v\0"  # outbox markers: an entry's store key, an event's id


def _entry_key(key: str, fingerprint: str) -> bytes:
    return f"{key}\0{fingerprint}".encode()


class _Remap:
    """Transactions of this process share the map; a size change takes it alone (LMDB remaps then).

    Reentrant per thread: a thread already inside a transaction enters again without waiting.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._resizing = False
        self._depth = threading.local()

    @contextlib.contextmanager
    def using(self) -> Iterator[None]:
        depth = getattr(self._depth, "n", 0)
        with self._cond:
            while self._resizing and depth == 0:
                self._cond.wait()
            self._active += 1
        self._depth.n = depth + 1
        try:
            yield
        finally:
            self._depth.n = depth
            with self._cond:
                self._active -= 1
                if self._active == 0:
                    self._cond.notify_all()

    def resize(self, change: Callable[[], None]) -> None:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._active:
                self._cond.wait()
            try:
                change()
            finally:
                self._resizing = False
                self._cond.notify_all()


class Store:
    def __init__(self, path: str | os.PathLike, *, readonly: bool = False, map_size: int = DEFAULT_MAP_SIZE):
        self.path = Path(path)
        self._remap = _Remap()
        if not readonly:
            try:
                self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create the store directory {self.path}: {e.strerror or e}") from None
        elif not (self.path / "data.mdb").exists():
            raise StoreError(f"no seedtape store at {self.path}: record into it first (seedtape serve --store {self.path})")
        try:
            self.env = lmdb.open(
                str(self.path),
                map_size=0 if readonly else map_size,  # a reader adopts the store's own size
                max_dbs=8,
                mode=0o600,
                readonly=readonly,
                create=not readonly,
                max_readers=512,
                # No readahead (MADV_RANDOM): a lookup maps only the pages it reads. With it, each page
                # fault also maps its cached neighbours, and a proxy explaining misses on a large store
                # grows its RSS by ~16x the pages it really touched (bench/bench_million.py).
                readahead=False,
            )
        except lmdb.Error as e:
            raise StoreError(f"cannot open the store at {self.path}: {e}") from e
        if not readonly:
            self.env.reader_check()  # free reader slots left by killed processes
        self._meta, self._entries, self._latest = (self._open_db(n, readonly) for n in (b"meta", b"entries", b"latest"))
        self._events = self._open_db(b"events", readonly, optional=True)  # added after schema 1 first shipped
        self._outbox = self._open_db(b"outbox", readonly, optional=True)  # what waits for the remote tier
        near, paths = (self._open_db(n, readonly, optional=True, dupsort=True) for n in (b"near", b"paths"))
        # None: a store of schema < 3 opened read-only (a writable open builds the index in _check_schema)
        self._index = missindex.MissIndex(near, paths) if near is not None and paths is not None else None
        self._decoded: dict[bytes, tuple[bytes, TapeEntry]] = {}  # get's decoded entries, by entry key
        self._check_schema(readonly)

    # -- plumbing ---------------------------------------------------------

    def _open_db(self, name: bytes, readonly: bool, optional: bool = False, dupsort: bool = False):
        """A named database; open_db runs a transaction, so it too adopts a map another process grew."""
        try:
            return self._retry(lambda: self.env.open_db(name, create=not readonly, dupsort=dupsort, dupfixed=dupsort))
        except lmdb.NotFoundError:
            if optional:
                return None
            self.env.close()
            raise StoreError(
                f"{self.path} is an LMDB directory but not a seedtape store (no {name.decode()!r} database)"
            ) from None

    def _retry(self, fn: Callable[[], T]) -> T:
        """Run a transaction, adopting or growing the map as other writers require.

        LMDB remaps on a size change, so no transaction of this process may be open then: the proxy
        reads on its event loop while the store's writer thread writes, and the one that resizes
        waits for the other's transaction to end (:class:`_Remap`)."""
        while True:
            try:
                with self._remap.using():
                    return fn()
            except lmdb.MapResizedError:
                self._remap.resize(lambda: self.env.set_mapsize(0))  # another process grew the map: adopt its size
            except lmdb.MapFullError:
                size = self.env.info()["map_size"]
                if size >= MAX_MAP_SIZE:
                    raise StoreError(f"the store at {self.path} reached {size} bytes and cannot grow further") from None
                self._remap.resize(functools.partial(self._grow, size * 2))

    def _grow(self, size: int) -> None:
        """Set the map to ``size`` unless another thread of this process already grew it as far."""
        if self.env.info()["map_size"] < size:
            self.env.set_mapsize(size)

    def _write(self, fn: Callable[[lmdb.Transaction[bytes]], T]) -> T:
        def run() -> T:
            with self.env.begin(write=True) as txn:
                return fn(txn)

        return self._retry(run)

    def _read(self, fn: Callable[[lmdb.Transaction[bytes]], T]) -> T:
        def run() -> T:
            with self.env.begin(buffers=False) as txn:
                return fn(txn)

        return self._retry(run)

    def _check_schema(self, readonly: bool) -> None:
        found = self._read(lambda txn: txn.get(b"schema", db=self._meta))
        if found is None:
            if readonly:
                raise StoreError(f"{self.path} is not a seedtape store (no schema version)")
            self._write(lambda txn: txn.put(b"schema", str(SCHEMA_VERSION).encode(), db=self._meta, overwrite=False))
            found = self._read(lambda txn: txn.get(b"schema", db=self._meta))
            assert found is not None, "committed just above (by us or a concurrent writer), never deleted"
        if found in (b"1", b"2") and not readonly:  # its ST1 entries stay readable; what is written now is ST2
            n = self.stats_counts()["request_keys"]
            log.warning("seedtape: building the miss index of the store at %s (%d request keys, once)", self.path, n)
            self._write(self._upgrading)
            found = str(SCHEMA_VERSION).encode()
        if found not in _READABLE:
            raise StoreError(
                f"the store at {self.path} has schema version {found.decode(errors='replace')}, "
                f"but this seedtape reads versions 1 to {SCHEMA_VERSION}: use a matching seedtape release "
                "or record into a new --store"
            )

    def _upgrading(self, txn: lmdb.Transaction[bytes]) -> None:
        """Bring a store of schema 1 or 2 to this one: build its miss index, in one transaction."""
        if txn.get(b"schema", db=self._meta) not in (b"1", b"2"):
            return  # another process upgraded it meanwhile
        assert self._index is not None, "a writable open creates the index databases"
        for key, raw in self._first_entries(txn):
            try:
                self._index.add(txn, key, TapeEntry.decode_header(raw)["request"])
            except (CorruptEntry, KeyError, TypeError, AttributeError):
                continue  # a damaged entry: replay refuses it anyway; it just cannot be anybody's nearest
        txn.put(b"schema", str(SCHEMA_VERSION).encode(), db=self._meta)

    def _first_entries(self, txn: lmdb.Transaction[bytes], limit: int | None = None) -> Iterator[tuple[str, bytes]]:
        """(request key, its first entry's value), in key order, for at most ``limit`` keys."""
        last, n = None, 0
        for k, v in txn.cursor(db=self._entries):
            key = k.split(b"\0", 1)[0]
            if key == last:
                continue
            if limit is not None and n >= limit:
                return
            last, n = key, n + 1
            yield key.decode(), v

    def _index_new(self, txn: lmdb.Transaction[bytes], entry: TapeEntry) -> None:
        """Enter a key in the miss index when its first fingerprint is written (call before _offer_latest)."""
        if self._index is not None and isinstance(entry.request, dict) and txn.get(entry.key.encode(), db=self._latest) is None:
            self._index.add(txn, entry.key, entry.request)

    # -- API ----------------------------------------------------------------

    def put(self, entry: TapeEntry, *, as_is: bool = False) -> TapeEntry:
        """Store an entry for (key, fingerprint); the most recently recorded fingerprint becomes the newest.

        ``as_is`` (import) keeps the entry's own timestamps and counts.
        """
        self.replace(entry, as_is=as_is)
        return entry

    def replace(self, entry: TapeEntry, *, as_is: bool = False, queue: bool = False) -> TapeEntry | None:
        """``put``, returning the entry it replaced for the same (key, fingerprint), if any.

        Read in the writing transaction, so of two proxies recording one key at once the later
        one sees the other's answer (and can tell whether they agree).
        """
        return self._write(self.replacing(entry, as_is=as_is, queue=queue))

    def replacing(
        self, entry: TapeEntry, *, as_is: bool = False, queue: bool = False
    ) -> Callable[[lmdb.Transaction[bytes]], TapeEntry | None]:
        """``replace`` as one step of a transaction, for :meth:`batch`.

        ``queue``: also mark it for the remote tier, in the same transaction (see :meth:`queued`).
        """

        def write(txn: lmdb.Transaction[bytes]) -> TapeEntry | None:
            k = _entry_key(entry.key, entry.fingerprint)
            old = txn.get(k, db=self._entries)
            prev = TapeEntry.decode(old) if old is not None else None
            if prev is not None and not as_is:
                # min: another process may have committed a recording stamped after this one
                entry.first_recorded_at = min(prev.first_recorded_at or prev.recorded_at, entry.recorded_at)
                entry.times_recorded = prev.times_recorded + 1
            txn.put(k, entry.encode(), db=self._entries)
            self._index_new(txn, entry)
            self._offer_latest(txn, entry.key, entry.fingerprint, entry.recorded_at)
            if queue:
                txn.put(_QUEUED_ENTRY + k, b"", db=self._outbox)
            return prev

        if not entry.recorded_at:
            entry.recorded_at = time.time()
        if not entry.first_recorded_at:
            entry.first_recorded_at = entry.recorded_at
        return write

    def batch(self, steps: list[Callable[[lmdb.Transaction[bytes]], T]]) -> list[T | Exception]:
        """Run several writes in one transaction, so they share one commit (one fsync).

        Each step runs in a nested transaction: a step that raises is undone alone and its
        exception takes its place in the result; the others commit.
        """

        def run(txn: lmdb.Transaction[bytes]) -> list[T | Exception]:
            out: list[T | Exception] = []
            for step in steps:
                child = self.env.begin(write=True, parent=txn)
                try:
                    out.append(step(child))
                except (lmdb.MapFullError, lmdb.MapResizedError):
                    child.abort()
                    raise  # the whole batch runs again on a grown map
                except Exception as e:
                    child.abort()
                    out.append(e)
                else:
                    child.commit()
            return out

        return self._write(run)

    def merge(self, entries: list[TapeEntry]) -> list[str]:
        """Import entries as they are (timestamps, counts), all in one transaction; per entry what happened.

        ``imported``: the (key, fingerprint) was not in the store. ``updated``: it replaced an entry recorded
        earlier. ``unchanged``: the store holds exactly this entry. ``kept``: the store's entry was recorded
        later (or at the same time): it stays. The newest fingerprint of a key is its latest recorded_at.
        """
        return self._write(self.merging(entries))

    def merging(self, entries: list[TapeEntry]) -> Callable[[lmdb.Transaction[bytes]], list[str]]:
        """``merge`` as one step of a transaction, for :meth:`batch`."""

        def write(txn: lmdb.Transaction[bytes]) -> list[str]:
            out = []
            for entry in entries:
                k = _entry_key(entry.key, entry.fingerprint)
                old = txn.get(k, db=self._entries)
                if old is not None:
                    prev = TapeEntry.decode(old)
                    if prev == entry or prev.recorded_at >= entry.recorded_at:
                        out.append("unchanged" if prev == entry else "kept")
                        continue
                txn.put(k, entry.encode(), db=self._entries)
                self._index_new(txn, entry)
                self._offer_latest(txn, entry.key, entry.fingerprint, entry.recorded_at)
                out.append("imported" if old is None else "updated")
            return out

        return write

    def delete(self, key: str, fingerprint: str) -> bool:
        """Remove one entry; the key's newest fingerprint falls back to the next most recent.

        The key leaves the miss index with its last entry.
        """

        def write(txn: lmdb.Transaction[bytes]) -> bool:
            gone = txn.pop(_entry_key(key, fingerprint), db=self._entries)
            if gone is None:
                return False
            prefix = f"{key}\0".encode()
            best: tuple[float, str] | None = None
            cur = txn.cursor(db=self._entries)
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    e = TapeEntry.decode(v)
                    if best is None or e.recorded_at >= best[0]:
                        best = (e.recorded_at, e.fingerprint)
            if best is None:
                txn.delete(key.encode(), db=self._latest)
                request = self._request_of(gone)
                if self._index is not None and request is not None:  # a damaged entry was never indexed
                    self._index.remove(txn, key, request)
            else:
                self._offer_latest(txn, key, best[1], best[0], replace=True)
            return True

        return self._write(write)

    def _offer_latest(
        self, txn: lmdb.Transaction[bytes], key: str, fingerprint: str, recorded_at: float, replace: bool = False
    ) -> None:
        """Point the key's newest fingerprint here if it is at least as recent as the current one (or ``replace``)."""
        cur = txn.get(key.encode(), db=self._latest)
        if replace or cur is None or json.loads(cur)["recorded_at"] <= recorded_at:
            txn.put(key.encode(), json.dumps({"fingerprint": fingerprint, "recorded_at": recorded_at}).encode(), db=self._latest)

    def salt(self) -> bytes:
        """This store's random salt (made on first use), for hashing credentials into keys."""
        found = self._read(lambda txn: txn.get(b"salt", db=self._meta))
        if found is None:
            self._write(lambda txn: txn.put(b"salt", os.urandom(32), db=self._meta, overwrite=False))
            found = self._read(lambda txn: txn.get(b"salt", db=self._meta))
            assert found is not None, "committed just above (by us or a concurrent writer), never deleted"
        return found

    def add_event(self, event: dict, *, queue: bool = False) -> str:
        """Append an audit event; returns its id (sortable by time)."""
        return self._write(self.adding_event(event, queue=queue))

    def adding_event(self, event: dict, *, queue: bool = False) -> Callable[[lmdb.Transaction[bytes]], str]:
        """``add_event`` as one step of a transaction, for :meth:`batch` (``queue``: also for the remote tier)."""
        event_id = f"{time.time_ns():020d}-{os.urandom(4).hex()}"
        data = json.dumps({"id": event_id, **event}, ensure_ascii=False).encode()

        def write(txn: lmdb.Transaction[bytes]) -> str:
            txn.put(event_id.encode(), data, db=self._events)
            if queue:
                txn.put(_QUEUED_EVENT + event_id.encode(), b"", db=self._outbox)
            return event_id

        return write

    def events(self) -> list[dict]:
        """Every audit event, oldest first."""
        if self._events is None:
            return []
        return self._read(lambda txn: [json.loads(v) for _, v in txn.cursor(db=self._events)])

    # -- the queue for the remote tier (the outbox) ------------------------------------------

    def queued(self, limit: int = 500) -> list[tuple[bytes, str, str | dict, bytes]]:
        """What waits for the remote tier, in marker order: (marker, kind, ...) where kind "entry" gives
        (marker, "entry", key, encoded entry) and "event" gives (marker, "event", event, b""). A marker whose
        entry or event is gone is returned with empty bytes / an empty event: dequeue it."""

        def read(txn: lmdb.Transaction[bytes]) -> list[tuple[bytes, str, str | dict, bytes]]:
            out: list[tuple[bytes, str, str | dict, bytes]] = []
            if self._outbox is None:
                return out
            for marker in txn.cursor(db=self._outbox).iternext(values=False):
                if len(out) >= limit:
                    break
                marker = bytes(marker)
                if marker.startswith(_QUEUED_ENTRY):
                    k = marker[len(_QUEUED_ENTRY) :]
                    out.append((marker, "entry", k.split(b"\0", 1)[0].decode(), txn.get(k, db=self._entries) or b""))
                elif marker.startswith(_QUEUED_EVENT) and self._events is not None:
                    raw = txn.get(marker[len(_QUEUED_EVENT) :], db=self._events)
                    out.append((marker, "event", json.loads(raw) if raw else {}, b""))
            return out

        return self._read(read)

    def dequeue(self, markers: list[bytes]) -> None:
        """Take these markers off the queue (what they stood for reached the remote, or is gone)."""

        def write(txn: lmdb.Transaction[bytes]) -> None:
            for m in markers:
                txn.delete(m, db=self._outbox)

        if markers and self._outbox is not None:
            self._write(write)

    def queued_count(self) -> int:
        if self._outbox is None:
            return 0
        return self._read(lambda txn: txn.stat(self._outbox)["entries"])

    def latest_fingerprint(self, key: str) -> str | None:
        raw = self._read(lambda txn: txn.get(key.encode(), db=self._latest))
        return json.loads(raw)["fingerprint"] if raw else None

    def get(self, key: str, fingerprint: str | None = None) -> TapeEntry | None:
        """The entry for key under ``fingerprint``, or under its newest fingerprint.

        Decoded entries are kept (a few hundred of them, keyed by their stored bytes) and handed out
        again while the store holds the same bytes: a replay hit then skips decompressing and
        parsing. The entry returned may be shared with later calls: read it, never change it.
        """

        def read(txn: lmdb.Transaction[bytes]) -> tuple[bytes, bytes] | None:
            fp = fingerprint
            if fp is None:
                raw = txn.get(key.encode(), db=self._latest)
                if raw is None:
                    return None
                fp = orjson.loads(raw)["fingerprint"]  # written by _offer_latest: plain ASCII JSON
            k = _entry_key(key, fp)
            raw = txn.get(k, db=self._entries)
            return None if raw is None else (k, raw)

        found = self._read(read)
        if found is None:
            return None
        k, raw = found
        cached = self._decoded.get(k)
        if cached is not None and cached[0] == raw:  # the same stored bytes: the same entry
            return cached[1]
        entry = TapeEntry.decode(raw)
        if len(raw) <= DECODED_MAX_BYTES:
            if len(self._decoded) >= DECODED_ENTRIES:
                del self._decoded[next(iter(self._decoded))]  # the oldest
            self._decoded[k] = (raw, entry)
        return entry

    def fingerprints(self, key: str) -> list[str]:
        prefix = f"{key}\0".encode()

        def read(txn: lmdb.Transaction[bytes]) -> list[str]:
            cur = txn.cursor(db=self._entries)
            out = []
            if cur.set_range(prefix):
                for k in cur.iternext(values=False):
                    if not k.startswith(prefix):
                        break
                    out.append(k[len(prefix) :].decode())
            return out

        return self._read(read)

    def keys(self) -> list[str]:
        """Every request key, sorted."""
        return self._read(lambda txn: [k.decode() for k in txn.cursor(db=self._latest).iternext(values=False)])

    def entries(self) -> Iterator[TapeEntry]:
        """Every entry, in key then fingerprint order (read in one consistent snapshot)."""
        raws = self._read(lambda txn: [v for _, v in txn.cursor(db=self._entries)])
        for raw in raws:
            yield TapeEntry.decode(raw)

    def find(self, prefix: str) -> list[str]:
        """Request keys that start with ``prefix``."""
        p = prefix.encode()

        def read(txn: lmdb.Transaction[bytes]) -> list[str]:
            cur = txn.cursor(db=self._latest)
            out = []
            if cur.set_range(p):
                for k in cur.iternext(values=False):
                    if not k.startswith(p):
                        break
                    out.append(k.decode())
            return out

        return self._read(read)

    def stats_counts(self) -> dict:
        """Entry and request-key counts, without reading any entry (cheap: for polling)."""
        return self._read(
            lambda txn: {"entries": txn.stat(self._entries)["entries"], "request_keys": txn.stat(self._latest)["entries"]}
        )

    def requests(self, skip: AbstractSet[str] = frozenset()) -> Iterator[tuple[str, dict]]:
        """(request key, canonical request) for every key not in ``skip``, reading headers only."""

        def read(txn: lmdb.Transaction[bytes]) -> list[tuple[str, bytes]]:
            out, last = [], None
            for k, v in txn.cursor(db=self._entries):
                key = k.split(b"\0", 1)[0].decode()
                if key != last and key not in skip:
                    out.append((key, v))
                last = key
            return out

        for key, raw in self._read(read):
            yield key, TapeEntry.decode_header(raw)["request"]

    @property
    def indexed(self) -> bool:
        """Whether the store has a miss index (False only for a store of schema < 3 opened read-only)."""
        return self._index is not None

    def nearest(self, request: dict, exclude: Iterable[str] = (), k: int = 3) -> list[tuple[str, float, dict]]:
        """The ``k`` recorded requests of the same path nearest to ``request``: (key, Jaccard score, request).

        Bounded work whatever the store's size: the miss index proposes candidates and only theirs
        are decoded. Without an index, the first UNINDEXED_SAMPLE request keys are compared.
        """
        feats = missindex.features(request)
        index = self._index

        def read(txn: lmdb.Transaction[bytes]) -> list[tuple[str, float, dict]]:
            if index is None:
                pairs = ((key, self._request_of(raw)) for key, raw in self._first_entries(txn, UNINDEXED_SAMPLE))
                found: Iterator[tuple[str, dict]] = ((key, r) for key, r in pairs if r is not None)
            else:
                found = self._resolved(txn, index.candidates(txn, request, feats, k))
            return missindex.nearest(found, request, feats, exclude, k)

        try:
            return self._read(read)
        finally:
            self._release_pages()

    def _release_pages(self) -> None:
        """Unmap the pages of the store this process touched; they stay in the page cache.

        A miss reads a few random pages of the store (index buckets, candidates). Left mapped, they
        count in the proxy's RSS, which after many misses on a large store would approach the
        store's size; dropped here (``madvise(MADV_DONTNEED)`` on the read-only shared mapping),
        the next read of one costs a minor page fault. Linux only; elsewhere a no-op.
        """
        if _libc is None:
            return
        target = str((self.path / "data.mdb").resolve())
        try:
            with open("/proc/self/maps") as f:
                spans = [line.split(None, 1)[0] for line in f if line.rstrip("\n").endswith(target)]
        except OSError:
            return
        for span in spans:
            start, end = (int(x, 16) for x in span.split("-"))
            _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)

    def _resolved(self, txn: lmdb.Transaction[bytes], kids: list[bytes]) -> Iterator[tuple[str, dict]]:
        """(request key, request) of the newest entry for each key id of the miss index that still resolves."""
        cur = txn.cursor(db=self._latest)
        for kid in kids:
            prefix = kid.hex().encode()
            if not cur.set_range(prefix) or not cur.key().startswith(prefix):
                continue  # gone (deleted by a writer that predates the index's maintenance)
            key = bytes(cur.key())
            raw = txn.get(key + b"\0" + orjson.loads(cur.value())["fingerprint"].encode(), db=self._entries)
            request = self._request_of(raw) if raw is not None else None
            if request is not None:
                yield key.decode(), request

    @staticmethod
    def _request_of(raw: bytes) -> dict | None:
        try:
            request = TapeEntry.decode_header(raw)["request"]
        except (CorruptEntry, KeyError, TypeError):
            return None
        return request if isinstance(request, dict) else None

    def stats(self) -> dict:
        def read(txn: lmdb.Transaction[bytes]) -> dict:
            fps = {k.split(b"\0", 1)[1] for k in txn.cursor(db=self._entries).iternext(values=False)}
            return {
                "entries": txn.stat(self._entries)["entries"],
                "request_keys": txn.stat(self._latest)["entries"],
                "events": txn.stat(self._events)["entries"] if self._events is not None else 0,
                "queued": txn.stat(self._outbox)["entries"] if self._outbox is not None else 0,
                "fingerprints": len(fps),
            }

        out = self._read(read)
        files = [self.path / "data.mdb", self.path / "lock.mdb"]
        out["size_bytes"] = sum(f.stat().st_size for f in files if f.exists())
        out["map_size"] = self.env.info()["map_size"]
        out["schema_version"] = SCHEMA_VERSION
        out["path"] = str(self.path)
        return out

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
