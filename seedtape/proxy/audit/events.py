"""Audit events: what is stored when a live answer was compared with its recording.

Built here alone, for the proxy (audit, record and auto modes) and for
`seedtape audit`, so both write the same fields that `seedtape events` reads.
"""

from __future__ import annotations

import time

from seedtape.proxy.tapes.entry import TapeEntry


def divergence_event(
    *,
    source: str,
    mode: str,
    recorded: TapeEntry,
    verdict: str,
    similarity: float,
    live_fingerprint: str,
    first_difference: dict | None,
    recorded_output: list,
    live_output: list,
    embedding_distance: float | None = None,
    at: float | None = None,
) -> dict:
    return {
        "time": time.time() if at is None else at,
        "source": source,
        "mode": mode,
        "key": recorded.key,
        "endpoint": recorded.endpoint,
        "model": recorded.model,
        "namespace": recorded.namespace,
        "recorded_fingerprint": recorded.fingerprint,
        "live_fingerprint": live_fingerprint,
        "verdict": verdict,
        "similarity": similarity,
        "embedding_distance": embedding_distance,
        "first_difference": first_difference,
        "recorded_output": recorded_output,
        "live_output": live_output,
    }
