"""The persistent miss index: recorded requests by similarity, to find the nearest ones to a miss.

A canonical request is reduced to a set of leaf features (``body.messages[2].content=str:...``,
``body.temperature=float:0.7``, a word of a text, ``namespace='a'`` ...), each hashed to a stable
64-bit number (blake2b: the same in every process and on every machine, since the index is
stored). A MinHash signature of that set (SIGNATURE multiply-shift hashes, numpy) is cut into
BANDS bands of ROWS rows; two requests share a band with probability ``1 - (1 - J**ROWS)**BANDS``
for a Jaccard similarity J (0.9998 at J = 0.9, 0.89 at J = 0.7, 0.40 at J = 0.5, 0.06 at J = 0.3):
a request one or two fields away from a recording finds it. Eight bands keep the index at about
300 bytes per request key (sixteen found a little more at J = 0.5, at twice the size; three rows
instead of four let short requests crowd into buckets of their shared boilerplate fields).

Two dupsort sub-databases of the store's LMDB environment hold it, written in the same
transactions as the entries (see store.py), so it is always current, shared by every process on
the store, and never built at start-up:

- ``near``:  band value (8 bytes: band number, then 7 bytes of blake2b over the endpoint path and
             the band's rows) -> key id, for every indexed request key.
- ``paths``: endpoint path -> key id: the fallback sample when no band matches.

A key id is the first 8 bytes of the request key (a sha256 in hex); it is resolved to the full
key through the store's ``latest`` database. Values are fixed-size (dupfixed), so a bucket of n
requests costs about 8n bytes.

A miss reads at most BUCKET_LIMIT ids per band, ranks candidates by the number of bands they
share, decodes only the headers of the best CANDIDATES (and of at most PATH_SAMPLE recordings of
the same path when the bands find fewer than asked for), and scores those by exact Jaccard
similarity of their features. Every step is bounded: nothing grows with the store.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable

import lmdb
import numpy as np

BANDS, ROWS = 8, 4
SIGNATURE = BANDS * ROWS  # MinHash hashes per request
BUCKET_LIMIT = 2000  # ids read from one band bucket at most
CANDIDATES = 30  # band candidates whose requests are decoded and scored at most
PATH_SAMPLE = 64  # recordings of the same path scored when the bands find too few
MAX_WORDS = 200  # words of one text that count as features
MAX_PATH = 400  # bytes of an endpoint path in a key of the index (LMDB keys hold at most 511)
_WORDS = re.compile(r"\w+")
_HEX_KEY = re.compile(r"[0-9a-f]{64}")

# The MinHash functions: h_i(x) = (A_i * x + B_i) mod 2**64, top 32 bits. Part of the stored
# format (schema 3): never change them without a new schema version.
_rng = np.random.Generator(np.random.PCG64(0x5EED7A9E))
_A = (_rng.integers(0, 2**63, SIGNATURE, dtype=np.uint64) * np.uint64(2) + np.uint64(1)).reshape(SIGNATURE, 1)  # odd
_B = _rng.integers(0, 2**63, SIGNATURE, dtype=np.uint64).reshape(SIGNATURE, 1)
_SHIFT = np.uint64(32)


def _h(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def features(request: dict) -> set[int]:
    """Stable 64-bit hashes of the leaves of a canonical request (method, namespace, query, credential too)."""
    out: set[int] = set()
    add = out.add

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            add(_h(f"{path}#len={len(node)}"))
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
        else:
            add(_h(f"{path}={type(node).__name__}:{node}"))
            if isinstance(node, str):  # words too, so a small edit of a long text stays near
                for w in set(_WORDS.findall(node.lower())[:MAX_WORDS]):
                    add(_h(f"{path}~{w}"))

    for k in ("method", "namespace", "query", "credential"):
        add(_h(f"{k}={request.get(k)!r}"))
    walk(request.get("body"), "body")
    return out


def jaccard(a: set[int], b: set[int]) -> float:
    both = len(a & b)
    return both / (len(a) + len(b) - both) if a or b else 0.0


def signature(feats: Iterable[int]) -> np.ndarray:
    """The MinHash signature of a feature set: SIGNATURE uint64 values (each below 2**32)."""
    x = np.fromiter(feats, dtype=np.uint64).reshape(1, -1)
    if x.size == 0:
        return np.zeros(SIGNATURE, dtype=np.uint64)
    return ((_A * x + _B) >> _SHIFT).min(axis=1)


def _path(request: dict) -> bytes:
    return str(request.get("path", "")).encode("utf-8", "surrogatepass")[:MAX_PATH] or b"/"


def bands(request: dict, feats: set[int] | None = None) -> list[bytes]:
    """The band values of a request: 8 bytes each, band number first; the path enters every one."""
    sig = signature(features(request) if feats is None else feats).astype("<u4")
    path = _path(request)
    out = []
    for b in range(BANDS):
        rows = sig[b * ROWS : (b + 1) * ROWS].tobytes()
        out.append(bytes([b]) + hashlib.blake2b(path + b"\0" + rows, digest_size=7).digest())
    return out


def key_id(key: str) -> bytes | None:
    """The 8-byte id of a request key in the index (None: not a sha256 key, never indexed)."""
    return bytes.fromhex(key[:16]) if _HEX_KEY.fullmatch(key) else None


class MissIndex:
    """The index's two databases; every method works inside a transaction the store runs."""

    def __init__(self, near: lmdb._Database, paths: lmdb._Database):
        self.near = near
        self.paths = paths

    def add(self, txn: lmdb.Transaction[bytes], key: str, request: dict) -> None:
        kid = key_id(key)
        if kid is None:
            return
        for band in bands(request):
            txn.put(band, kid, db=self.near, dupdata=True)
        txn.put(_path(request), kid, db=self.paths, dupdata=True)

    def remove(self, txn: lmdb.Transaction[bytes], key: str, request: dict) -> None:
        kid = key_id(key)
        if kid is None:
            return
        for band in bands(request):
            txn.delete(band, kid, db=self.near)
        txn.delete(_path(request), kid, db=self.paths)

    def candidates(self, txn: lmdb.Transaction[bytes], request: dict, feats: set[int], want: int) -> list[bytes]:
        """Key ids worth scoring, most promising first: by shared bands, then a sample of the path."""
        counts: Counter[bytes] = Counter()
        cur = txn.cursor(db=self.near)
        for band in bands(request, feats):
            if cur.set_key(band):
                for n, kid in enumerate(cur.iternext_dup()):
                    if n >= BUCKET_LIMIT:
                        break
                    counts[bytes(kid)] += 1
        out = [kid for kid, _ in counts.most_common(CANDIDATES)]
        if len(out) < want:
            seen = set(out)
            cur = txn.cursor(db=self.paths)
            if cur.set_key(_path(request)):
                for n, kid in enumerate(cur.iternext_dup()):
                    if n >= PATH_SAMPLE:
                        break
                    if bytes(kid) not in seen:
                        out.append(bytes(kid))
        return out


def nearest(
    candidates: Iterable[tuple[str, dict]], request: dict, feats: set[int], exclude: Iterable[str], k: int
) -> list[tuple[str, float, dict]]:
    """The ``k`` candidates (key, request) of the same path most similar to ``request``, best first."""
    path, skip = request.get("path", ""), set(exclude)
    scored = []
    for n, (key, other) in enumerate(candidates):
        if key in skip or other.get("path", "") != path:
            continue
        score = jaccard(feats, features(other))
        if score > 0:
            scored.append((-score, n, key, other))
    scored.sort(key=lambda t: (t[0], t[1]))
    return [(key, -neg, other) for neg, _, key, other in scored[:k]]
