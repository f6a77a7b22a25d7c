"""Strict tapes: which recordings did no request use in a run?

A proxy remembers every (key, fingerprint) it replayed or recorded; when it stops
it can list the rest (`serve --report-unused FILE`). `seedtape prune --unused-in FILE`
removes exactly those, and the pytest plugin's --seedtape-strict fails a session
that leaves any. An entry recorded in the run was needed by a request of the run,
so it counts as used; an entry for an older fingerprint that replay no longer
serves shows up as unused.
"""

from __future__ import annotations

import json
import os
import time

from seedtape.proxy.tapes.store import Store

FORMAT = "seedtape-unused"


def list_unused(store: Store, served: set[tuple[str, str]]) -> list[dict]:
    out = []
    for key, request in store.requests():
        for fp in store.fingerprints(key):
            if (key, fp) not in served:
                raw_body = request.get("body")
                body = raw_body if isinstance(raw_body, dict) else {}
                out.append(
                    {
                        "key": key,
                        "fingerprint": fp,
                        "path": request.get("path", ""),
                        "model": body.get("model", ""),
                        "namespace": request.get("namespace", ""),
                    }
                )
    return out


def write_report(store: Store, served: set[tuple[str, str]], path: str) -> int:
    entries = list_unused(store, served)
    doc = {
        "format": FORMAT,
        "version": 1,
        "written_at": time.time(),
        "store": str(store.path),
        "served": len(served),
        "unused": entries,
    }
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return len(entries)


def read_report(path: str) -> list[tuple[str, str]]:
    """(key, fingerprint) pairs listed in a report; ValueError names what is wrong."""
    with open(path) as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not a seedtape unused report (write one with serve --report-unused)")
    return [(e["key"], e["fingerprint"]) for e in doc.get("unused", [])]
