"""API dialects: what each API surface means (paths, seeds, streams, outputs, fingerprints).

The registry below is the one place that lists them; the rest of the core asks
``match(method, path)`` or ``named(name)`` for a dialect and then asks it.
"""

from __future__ import annotations

import functools

from seedtape.proxy.dialects.base import NO_FINGERPRINT, Dialect
from seedtape.proxy.dialects.chat import Chat
from seedtape.proxy.dialects.completions import Completions
from seedtape.proxy.dialects.embeddings import Embeddings
from seedtape.proxy.dialects.responses import Responses

CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES = Chat(), Completions(), Embeddings(), Responses()
ALL: tuple[Dialect, ...] = (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES)  # CHAT before COMPLETIONS: its suffix is longer
_BY_NAME = {d.name: d for d in ALL}

__all__ = [
    "ALL",
    "CHAT",
    "COMPLETIONS",
    "EMBEDDINGS",
    "NO_FINGERPRINT",
    "RESPONSES",
    "Dialect",
    "guess_path",
    "match",
    "named",
    "recorded_for",
]


@functools.lru_cache(maxsize=4096)  # every request asks; a process sees few distinct (method, path) pairs
def match(method: str, path: str) -> Dialect | None:
    """The dialect a request speaks, or None (passed through untouched)."""
    return next((d for d in ALL if d.matches(method, path)), None)


def recorded_for(method: str, path: str) -> Dialect | None:
    """The dialect whose recordings a request may have: its API's, or the Responses API's for a
    polled state of a stored response (``GET .../responses/{id}``, recorded in auto mode)."""
    from seedtape.proxy.dialects import responsestate

    found = match(method, path)
    if found is None and (state := responsestate.route(method, path)) is not None and state.action == "retrieve":
        return RESPONSES
    return found


def named(name: str) -> Dialect:
    """The dialect a tape entry names; KeyError for one seedtape does not know."""
    return _BY_NAME[name]


def guess_path(body: dict) -> str:
    """The path a bare request body was most likely sent to (`seedtape explain` without --path)."""
    d = next((d for d in ALL if d.claims(body)), CHAT)
    return "/v1" + d.suffix
