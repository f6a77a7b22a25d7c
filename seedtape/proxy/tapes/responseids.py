"""Which recording holds the Responses API response with a given id.

Built once per process from the store (imported tapes included), on the first
request that names an id, and kept current as responses are recorded. A later
recording of the same id in a final state (a background call polled to its end)
wins over an earlier one that was still queued.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from seedtape.proxy import dialects
from seedtape.proxy.dialects.responsestate import TERMINAL_STATUS
from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.store import Store


@dataclass(frozen=True)
class Holder:
    key: str
    fingerprint: str
    final: bool  # the recorded response had reached a final status


class ResponseIds:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._ids: dict[str, Holder] | None = None
        self._scanned_at = -1  # the store's last transaction id when the index was read

    def add(self, entry: TapeEntry) -> None:
        """Note a responses recording (a no-op until the index is first used: it reads the store then)."""
        if self._ids is not None:
            self._note(self._ids, entry)

    def find(self, response_id: str) -> tuple[TapeEntry, dict] | None:
        """(entry, response) of the recording of ``response_id``; a stream is folded into its response."""
        if self._ids is None or (response_id not in self._ids and self._changed()):
            self._ids = self._scan()  # another process may have recorded it meanwhile
        holder = self._ids.get(response_id)
        entry = self.store.get(holder.key, holder.fingerprint) if holder else None
        doc = response_of(entry) if entry is not None else None
        return (entry, doc) if entry is not None and doc is not None else None

    def _changed(self) -> bool:
        """Whether anything was committed since the last scan (an unknown id re-reads the store only then)."""
        return self.store.env.info()["last_txnid"] != self._scanned_at

    def _scan(self) -> dict[str, Holder]:
        self._scanned_at = self.store.env.info()["last_txnid"]
        ids: dict[str, Holder] = {}
        for entry in self.store.entries():
            self._note(ids, entry)
        return ids

    @staticmethod
    def _note(ids: dict[str, Holder], entry: TapeEntry) -> None:
        doc = response_of(entry) if entry.endpoint == dialects.RESPONSES.name else None
        rid = doc.get("id") if doc else None
        if not isinstance(rid, str) or not doc:
            return
        final = doc.get("status") in TERMINAL_STATUS
        if rid not in ids or final or not ids[rid].final:
            ids[rid] = Holder(entry.key, entry.fingerprint, final)


def response_of(entry: TapeEntry) -> dict | None:
    """The response object a responses recording holds, or None when it cannot be read."""
    try:
        d = dialects.RESPONSES
        doc = d.fold(d.chunks(entry.body)) if entry.format == "sse" else json.loads(entry.body)
    except (ValueError, KeyError, TypeError):
        return None
    return doc if isinstance(doc, dict) else None
