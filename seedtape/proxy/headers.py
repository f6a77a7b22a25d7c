"""Which headers may be stored and replayed, and which are secret: every rule about upstream headers.

An allowlist, not a denylist: a header seedtape does not know (a new auth
scheme, a cookie, an organization id) can never leak into a tape. The secret
rules below add a denylist on top for exports and imports (defence in depth).
"""

from __future__ import annotations

import re
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


_SECRET_WORDS = re.compile(r"auth|api-?key|cookie|secret|passw|session")


def is_secret(name: str) -> bool:
    """A header that may carry a credential: the named ones, and any name that mentions auth, api-key,
    cookie, secret, password or session (a header seedtape has never heard of, named like one)."""
    name = name.lower()
    return name in SECRET_HEADERS or bool(_SECRET_WORDS.search(name))


def is_safe(name: str) -> bool:
    name = name.lower()
    if name in SECRET_HEADERS:
        return False
    return name in _SAFE_EXACT or name.startswith(_SAFE_PREFIXES)


MAX_VALUE = 1024  # a rate limit, request id or processing time is a few dozen characters
_VALUE = re.compile(r"[\x20-\x7e]*")


def valid_value(value: str) -> bool:
    """Whether a stored header value can be replayed as it is: visible ASCII and spaces, bounded.

    An upstream can send bytes that are not UTF-8 (mitmproxy hands them over as surrogate
    escapes) or control characters; such a value is never stored, so replay never fails on it.
    """
    return isinstance(value, str) and len(value) <= MAX_VALUE and _VALUE.fullmatch(value) is not None


def safe_headers(pairs: Iterable[tuple[str, str]] | Iterable[list[str]]) -> list[list[str]]:
    """The response headers worth replaying, lower-cased, in their original order.

    Recording stores only these, replay serves only these (also from stores and tapes
    written before a rule tightened), and import refuses a tape holding any other.
    """
    return [[k.lower(), v] for k, v in pairs if is_safe(k) and valid_value(v)]


def refusal(name: str, value: str) -> str | None:
    """Why recording would never have stored this header (None: it would)."""
    if not is_safe(name):
        return f"header {name!r} is not one seedtape records (only content-type, request ids, openai-* and x-ratelimit-*)"
    if not valid_value(value):
        return (
            f"header {name!r} has a value seedtape never records (control characters, non-ASCII, or over {MAX_VALUE} characters)"
        )
    return None


# Where clients put their API key (OpenAI, Azure OpenAI, Anthropic-style gateways).
CREDENTIAL_HEADERS = ("authorization", "api-key", "x-api-key")
