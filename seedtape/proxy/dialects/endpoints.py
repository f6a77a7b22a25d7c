"""Which endpoints seedtape understands, and what it does with each.

Endpoints are matched on the path's tail so that a base URL with or without
``/v1`` (or a gateway prefix) works the same.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    name: str
    suffix: str
    takes_seed: bool  # the API accepts `seed`, so seedtape may inject one
    can_stream: bool


CHAT = Endpoint("chat.completions", "/chat/completions", takes_seed=True, can_stream=True)
COMPLETIONS = Endpoint("completions", "/completions", takes_seed=True, can_stream=True)
EMBEDDINGS = Endpoint("embeddings", "/embeddings", takes_seed=False, can_stream=False)

RECORDABLE: tuple[Endpoint, ...] = (CHAT, COMPLETIONS, EMBEDDINGS)


def match(method: str, path: str) -> Endpoint | None:
    """The recordable endpoint a request targets, or None (passed through untouched)."""
    if method.upper() != "POST":
        return None
    for ep in RECORDABLE:  # CHAT before COMPLETIONS: its suffix is longer
        if path.endswith(ep.suffix):
            return ep
    return None
