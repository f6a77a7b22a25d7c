"""Divergence: does a live answer say what its recording said, and how far apart are they?

Only the output that matters is compared, per choice: message content (or
text), refusal, tool calls with their arguments, and finish_reason; never id,
created, usage or system_fingerprint. The verdict follows DESIGN.md:

- ``match``: same output (whatever the fingerprints);
- ``nondeterminism``: same fingerprint, different output;
- ``drift``: new fingerprint, different output;
- ``fingerprint-only``: new fingerprint, same output.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
from rapidfuzz.distance import Levenshtein

from seedtape.proxy import dialects
from seedtape.proxy.dialects import NO_FINGERPRINT
from seedtape.proxy.explain import jsondiff

VERDICTS = ("match", "nondeterminism", "drift", "fingerprint-only")
_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def outputs(endpoint: str, fmt: str, body: bytes) -> list[dict]:
    """The comparable output of a recorded or live body of the named API, one dict per choice."""
    return dialects.named(endpoint).outputs_of(fmt, body)


def text_of(out: list[dict]) -> str:
    """All of an output as one text, for similarity measures."""
    parts = []
    for c in out:
        if "embedding" in c:
            parts.append(json.dumps(c["embedding"]))
            continue
        parts += [c.get("content") or "", c.get("refusal") or ""]
        parts += [f"{name}({args})" for name, args in c.get("tool_calls") or []]
        parts.append(f"<{c.get('finish_reason')}>")
    return " ".join(p for p in parts if p)


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def edit_similarity(a: str, b: str) -> float:
    """1 - normalized token-level Levenshtein distance (rapidfuzz compares sequences of tokens, not only strings)."""
    ta, tb = tokens(a), tokens(b)
    if not ta and not tb:
        return 1.0
    return float(Levenshtein.normalized_similarity(ta, tb))


def cosine_distance(u: list[float], v: list[float]) -> float:
    a, b = np.asarray(u, dtype=float), np.asarray(v, dtype=float)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0
    return float(1.0 - a.dot(b) / (na * nb))


def mean_pairwise_similarity(texts: list[str]) -> float | None:
    pairs = [(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts))]
    if not pairs:
        return None
    return float(np.mean([edit_similarity(texts[i], texts[j]) for i, j in pairs]))


@dataclass(frozen=True)
class Divergence:
    verdict: str
    similarity: float  # 1.0 identical .. 0.0 nothing in common (token edit similarity)
    recorded_fingerprint: str
    live_fingerprint: str
    departure: dict | None = None  # where the live output first departs (jsondiff.first_departure)

    def header(self) -> str:
        return f"{self.verdict}; similarity={self.similarity:.4f}"


def classify(same_output: bool, recorded_fp: str, live_fp: str) -> str:
    # fp_none names no fingerprint at all (an entry recorded before models stood in for one): unknown, not changed
    same_fp = recorded_fp == live_fp or NO_FINGERPRINT in (recorded_fp, live_fp)
    if same_output:
        return "match" if same_fp else "fingerprint-only"
    return "nondeterminism" if same_fp else "drift"


def compare(recorded: list[dict], recorded_fp: str, live: list[dict], live_fp: str) -> Divergence:
    same = recorded == live
    sim = 1.0 if same else edit_similarity(text_of(recorded), text_of(live))
    where = None if same else jsondiff.first_departure(recorded, live)
    return Divergence(classify(same, recorded_fp, live_fp), round(sim, 6), recorded_fp, live_fp, where)
