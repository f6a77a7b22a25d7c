"""Which headers may be stored and replayed.

An allowlist, not a denylist: a header seedtape does not know (a new auth
scheme, a cookie, an organization id) can never leak into a tape.
"""

from __future__ import annotations

from collections.abc import Iterable

_SAFE_EXACT = frozenset(
    {
        "content-type",
        "x-request-id",
        "request-id",
        "openai-processing-ms",
        "openai-version",
        "openai-model",
        "x-envoy-upstream-service-time",
    }
)
_SAFE_PREFIXES = ("x-ratelimit-",)

# Named so that logs and docs can say exactly what is never written.
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "api-key",
        "x-api-key",
        "openai-organization",
        "openai-project",
        "cookie",
        "set-cookie",
        "proxy-authorization",
    }
)


def is_safe(name: str) -> bool:
    name = name.lower()
    if name in SECRET_HEADERS:
        return False
    return name in _SAFE_EXACT or name.startswith(_SAFE_PREFIXES)


def safe_headers(pairs: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The response headers worth replaying, lower-cased, in their original order."""
    return [[k.lower(), v] for k, v in pairs if is_safe(k)]

# Where clients put their API key (OpenAI, Azure OpenAI, Anthropic-style gateways).
CREDENTIAL_HEADERS = ("authorization", "api-key", "x-api-key")
