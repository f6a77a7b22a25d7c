"""Reading a store from a test, strictly."""

from __future__ import annotations

import os
from pathlib import Path

from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.store import Store


def entries(store_path: str | os.PathLike) -> list[TapeEntry]:
    """Every entry of the store at ``store_path``, read through a read-only Store.

    Strict: a store that exists but cannot be opened or read (no data.mdb, not a seedtape
    store, another schema version, a corrupt entry) raises, so ``assert entries(store) == []``
    cannot pass on a broken store. The one case counted as empty is a store directory that
    does not exist at all: nothing was ever recorded there (a proxy creates its store before
    it starts listening, so a test that polls a running proxy never sees a half-made one).
    """
    path = Path(store_path)
    if not os.path.lexists(path):
        return []
    with Store(path, readonly=True) as st:
        return list(st.entries())


def get_entry(store_path: str | os.PathLike, key: str, fingerprint: str | None = None) -> TapeEntry | None:
    """The entry for ``key`` (its newest fingerprint, or ``fingerprint``), or None; as strict as ``entries``."""
    path = Path(store_path)
    if not os.path.lexists(path):
        return None
    with Store(path, readonly=True) as st:
        return st.get(key, fingerprint)


def plaintext(store_path: str | os.PathLike) -> bytes:
    """Every stored key and entry of a store, decompressed: what a secret scan must search (entries are zstd)."""
    from seedtape.proxy.tapes import entry as tape_entry

    with Store(Path(store_path), readonly=True) as st, st.env.begin() as txn:
        db = st.env.open_db(b"entries", txn=txn, create=False)
        return b"".join(k + tape_entry.plaintext(v) for k, v in txn.cursor(db=db))
