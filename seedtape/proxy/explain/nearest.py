"""The nearest recorded requests to one that missed, and what differs: the explanation of a miss.

Every recorded canonical request is reduced to a set of leaf features
(``messages[2].content=<hash>``, ``temperature=0.7``, ``namespace=a`` ...) in an
inverted index built once per process and kept current. A miss looks up its
own features, scores candidates of the same endpoint by Jaccard overlap with
numpy, and diffs the best three with the JSON diff engine. Replay hits never
touch the index.
"""

from __future__ import annotations

import gc
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from seedtape.proxy.explain import jsondiff
from seedtape.proxy.key.canonical import CanonicalRequest
from seedtape.proxy.printable import escape
from seedtape.proxy.tapes.store import Store

MAX_NEAREST = 3
_WORDS = re.compile(r"\w+")


def features(request: dict) -> set[int]:
    """Hashed leaves of a canonical request (method, namespace, query count as leaves too).

    Python's own str hash is enough: the index lives in one process and is never stored.
    """
    out: set[int] = set()

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            out.add(hash(f"{path}#len={len(node)}"))
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
        else:
            out.add(hash(f"{path}={type(node).__name__}:{node}"))
            if isinstance(node, str):  # words too, so a small edit of a long text stays near
                out.update(hash(f"{path}~{w}") for w in _WORDS.findall(node.lower())[:200])

    for k in ("method", "namespace", "query", "credential"):
        out.add(hash(f"{k}={request.get(k)!r}"))
    walk(request.get("body"), "body")
    return out


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

    def lines(self, max_changes: int = 6) -> list[str]:
        if self.note:
            return [escape(self.note)]
        if not self.nearest:
            return [f"Nothing recorded for {self.path} is near this request."]
        out = ["Nearest recordings (recorded != this request):"]
        for n, near in enumerate(self.nearest, 1):
            shown = [str(c) for c in near.changes[:max_changes]]
            more = f"; and {len(near.changes) - max_changes} more" if len(near.changes) > max_changes else ""
            out.append(f"#{n} {near.key[:12]}: {'; '.join(shown) or 'no field differs'}{more}.")
        return [escape(line) for line in out]  # it quotes recorded values: shown in terminals and test reports

    def text(self) -> str:
        return " ".join(self.lines())

    def summary(self, limit: int = 600) -> str:
        """One header-safe line."""
        s = " ".join(self.lines(max_changes=3))
        s = s.encode("ascii", "backslashreplace").decode().replace("\r", " ").replace("\n", " ")
        return s if len(s) <= limit else s[: limit - 3] + "..."

    def to_json(self) -> dict:
        return {"key": self.key, "path": self.path, "note": self.note, "nearest": [n.to_json() for n in self.nearest]}


class NearestIndex:
    """An inverted index of recorded requests, per endpoint path; safe to refresh from any thread."""

    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {}
        self._keys: list[str] = []
        self._paths: list[str] = []
        self._sizes: list[int] = []
        self._requests: list[dict] = []
        self._postings: dict[int, list[int]] = {}
        self._arrays: dict[int, np.ndarray] = {}  # numpy copies of postings, rebuilt when they grow
        self._path_ids: dict[str, int] = {}
        self._path_of: list[int] = []
        self._known = -1  # request keys in the store when last refreshed

    def add(self, key: str, request: dict) -> None:
        """Take in a new recording, if the index is in use (refresh picks it up otherwise)."""
        with self._lock:
            if self._known >= 0:
                self._add(key, request)

    def _add(self, key: str, request: dict) -> None:
        if key in self._ids:
            return
        i = len(self._keys)
        self._ids[key] = i
        self._keys.append(key)
        self._paths.append(request.get("path", ""))
        self._path_of.append(self._path_ids.setdefault(request.get("path", ""), len(self._path_ids)))
        self._requests.append(request)
        feats = features(request)
        self._sizes.append(len(feats))
        for f in feats:
            self._postings.setdefault(f, []).append(i)

    def refresh(self) -> None:
        """Take in requests that any process recorded since the last look."""
        count = self.store.stats_counts()["request_keys"]
        if count == self._known:
            return
        with self._lock:
            # Millions of small objects: collecting while building them only costs time. After the
            # first build they live as long as the process, so the collector skips them from then on
            # (frozen once: freezing again would also pin whatever else is alive at that moment).
            first = self._known < 0
            enabled = gc.isenabled()
            gc.disable()
            try:
                for key, request in self.store.requests(skip=set(self._ids)):
                    self._add(key, request)
            finally:
                if enabled:
                    gc.enable()
            if first:
                gc.freeze()
            self._known = count

    def _array(self, f: int) -> np.ndarray:
        plist = self._postings[f]
        arr = self._arrays.get(f)
        if arr is None or len(arr) != len(plist):
            arr = self._arrays[f] = np.asarray(plist, dtype=np.int64)
        return arr

    def __len__(self) -> int:
        return len(self._keys)

    def nearest(self, request: dict, exclude: Iterable[str] = (), k: int = MAX_NEAREST) -> list[tuple[str, float, dict]]:
        self.refresh()
        with self._lock:
            if not self._keys:
                return []
            q = features(request)
            hits = [self._array(f) for f in q if f in self._postings]
            if not hits:
                return []
            n = len(self._keys)
            overlap = np.bincount(np.concatenate(hits), minlength=n).astype(float)
            sizes = np.asarray(self._sizes, dtype=float)
            score = overlap / (len(q) + sizes - overlap)
            path_id = self._path_ids.get(request.get("path", ""), -1)
            score[np.asarray(self._path_of) != path_id] = -1.0
            for key in exclude:
                if key in self._ids:
                    score[self._ids[key]] = -1.0
            top = np.argsort(-score, kind="stable")[:k]
            return [(self._keys[i], float(score[i]), self._requests[i]) for i in top if score[i] > 0]


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
    return ex
