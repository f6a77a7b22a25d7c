"""The nearest recorded requests to one that missed, and what differs: the explanation of a miss.

The store's persistent miss index (tapes/missindex.py, kept current as entries are written)
proposes a bounded number of candidates of the same endpoint; they are scored by the Jaccard
overlap of their leaf features, and the best three are diffed with the JSON diff engine. Nothing
is built in memory and nothing grows with the store; replay hits never touch the index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from seedtape.proxy.explain import jsondiff
from seedtape.proxy.key.canonical import CanonicalRequest
from seedtape.proxy.printable import escape
from seedtape.proxy.tapes.missindex import features
from seedtape.proxy.tapes.store import UNINDEXED_SAMPLE, Store

__all__ = ["MAX_NEAREST", "Explanation", "Near", "NearestIndex", "comparable", "explain", "features"]

MAX_NEAREST = 3


def comparable(request: dict) -> dict:
    """The parts of a canonical request a person compares: body fields at top level, then namespace."""
    body = request.get("body")
    out = dict(body) if isinstance(body, dict) else {"body": body}
    if request.get("namespace") or "namespace" in out:
        out["namespace"] = request.get("namespace", "")
    if request.get("query"):  # by parameter name, so a difference reads query.api-version
        query: dict[str, list[str]] = {}
        for pair in request["query"]:
            if isinstance(pair, (list, tuple)) and len(pair) == 2:
                query.setdefault(str(pair[0]), []).append(pair[1])
        out["query"] = {k: v[0] if len(v) == 1 else v for k, v in query.items()}
    if request.get("credential"):
        out["credential"] = request["credential"]
    return out


@dataclass
class Near:
    key: str
    score: float
    fingerprints: list[str]
    changes: list[jsondiff.Change]

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "score": round(self.score, 4),
            "fingerprints": self.fingerprints,
            "differences": [c.to_json() | {"text": str(c)} for c in self.changes],
        }


@dataclass
class Explanation:
    key: str
    path: str
    nearest: list[Near] = field(default_factory=list)
    note: str = ""  # e.g. the same request under another fingerprint
    caveat: str = ""  # e.g. only part of the store was compared

    def lines(self, max_changes: int = 6) -> list[str]:
        if self.note:
            return [escape(self.note)]
        if not self.nearest:
            out = [f"Nothing recorded for {self.path} is near this request."]
        else:
            out = ["Nearest recordings (recorded != this request):"]
        for n, near in enumerate(self.nearest, 1):
            shown = [str(c) for c in near.changes[:max_changes]]
            more = f"; and {len(near.changes) - max_changes} more" if len(near.changes) > max_changes else ""
            out.append(f"#{n} {near.key[:12]}: {'; '.join(shown) or 'no field differs'}{more}.")
        if self.caveat:
            out.append(self.caveat)
        return [escape(line) for line in out]  # it quotes recorded values: shown in terminals and test reports

    def text(self) -> str:
        return " ".join(self.lines())

    def summary(self, limit: int = 600) -> str:
        """One header-safe line."""
        s = " ".join(self.lines(max_changes=3))
        s = s.encode("ascii", "backslashreplace").decode().replace("\r", " ").replace("\n", " ")
        return s if len(s) <= limit else s[: limit - 3] + "..."

    def to_json(self) -> dict:
        out = {"key": self.key, "path": self.path, "note": self.note, "nearest": [n.to_json() for n in self.nearest]}
        return out | {"caveat": self.caveat} if self.caveat else out


class NearestIndex:
    """The nearest recorded requests, read from the store's persistent miss index (no state of its own)."""

    def __init__(self, store: Store):
        self.store = store

    def add(self, key: str, request: dict) -> None:
        """Nothing to do: the store indexes every recording in the transaction that writes it."""

    def refresh(self) -> None:
        """Nothing to do: the index is the store's, always current, also for other processes' recordings."""

    def nearest(self, request: dict, exclude: Iterable[str] = (), k: int = MAX_NEAREST) -> list[tuple[str, float, dict]]:
        """Up to ``k`` (key, score, request) of the same path, best first: bounded work on any store."""
        return self.store.nearest(request, exclude, k)


def explain(
    store: Store,
    index: NearestIndex,
    canonical: CanonicalRequest,
    pinned: str | None = None,
    redact: Callable[[dict], dict] | None = None,
) -> Explanation:
    """Why ``canonical`` has no recording to replay, and the nearest ones that exist.

    ``redact`` scrubs the request as recordings were scrubbed (--redact-field): a redacted
    value must not reach a miss message, and must not count as a difference.
    """
    key = canonical.key
    ex = Explanation(key=key, path=canonical.path)
    fps = store.fingerprints(key)
    if fps:
        ex.note = (
            f"Same request, recorded only under fingerprint {', '.join(fps)} (pinned {pinned})."
            if pinned
            else f"Same request, recorded under {', '.join(fps)}."
        )
        return ex
    request = redact(canonical.to_json()) if redact else canonical.to_json()
    mine = comparable(request)
    for other_key, score, other in index.nearest(request, exclude=[key]):
        ex.nearest.append(Near(other_key, score, store.fingerprints(other_key), jsondiff.diff(comparable(other), mine)))
    if not store.indexed and store.stats_counts()["request_keys"] > UNINDEXED_SAMPLE:
        ex.caveat = (
            f"Only {UNINDEXED_SAMPLE} of the store's recordings were compared: it has no miss index yet (written by an "
            f"older seedtape); open it once for writing (seedtape serve --store {store.path}) to build one."
        )
    return ex
