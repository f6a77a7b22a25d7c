"""Names of the headers seedtape reads and writes (docs/headers.md), and where it may listen."""

import ipaddress
import re

STATUS = "seedtape-status"
KEY = "seedtape-key"
FINGERPRINT = "seedtape-fingerprint"
SEED = "seedtape-seed"
NAMESPACE = "seedtape-namespace"  # request: label that enters the key
SCOPE = "seedtape-scope"  # request: where --repeats sequence counts repeats (never enters the key)
OCCURRENCE = "seedtape-occurrence"  # response: the Nth identical request of its scope (--repeats sequence)
AUTH_TOKEN = "seedtape-token"  # request: the proxy's --auth-token
DIVERGENCE = "seedtape-divergence"
MISS = "seedtape-miss"  # replay miss: the nearest recordings and what differs, one line

# The API key the pytest plugin sets when OPENAI_API_KEY is unset: replay needs no key but the
# SDKs insist on one. It never reaches an upstream: a request that would go live with it is refused.
PLACEHOLDER_API_KEY = "sk-seedtape-replay-no-key-needed"

# Request headers meant for seedtape only: never forwarded upstream.
PROXY_ONLY_REQUEST_HEADERS = (NAMESPACE, AUTH_TOKEN, SCOPE)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host``: anywhere else needs --auth-token."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # "" (every interface) and names


MAX_HEADER_VALUE = 4096  # far above any seedtape header; a longer value is cut with "..."
_NOT_VISIBLE_ASCII = re.compile(r"[^\x20-\x7e]")


def header_value(text: str) -> str:
    """Any text as a safe HTTP header value: visible ASCII and spaces only, bounded in length.

    Every value seedtape writes into a response header (fingerprint, key, status notes,
    seed, divergence, miss explanations) goes through here, whatever its source: an
    upstream or a tape can put CR/LF into a ``system_fingerprint`` to forge headers.
    Other characters become backslash escapes (``\\r``, ``\\x1b``, ``\\u2026``).
    """
    text = str(text)
    if _NOT_VISIBLE_ASCII.search(text):
        text = _NOT_VISIBLE_ASCII.sub(_escape_char, text)
    text = text.strip(" ")
    if len(text) > MAX_HEADER_VALUE:
        text = text[: MAX_HEADER_VALUE - 3] + "..."
    return text


def _escape_char(m: re.Match) -> str:
    n = ord(m.group())
    return {10: "\\n", 13: "\\r", 9: "\\t"}.get(n) or (f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}")


def log_path(path: str) -> str:
    """A request path for a log line: without its query, whose values may be tokens or keys."""
    return path.split("?", 1)[0]
