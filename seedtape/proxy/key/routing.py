"""Per-request settings carried in the base URL, so any client can use them.

An SDK cannot add headers through ``OPENAI_BASE_URL``, but it keeps the URL's
path: ``http://127.0.0.1:8787/_seedtape/mode=replay,ns=test_login/v1`` asks this
proxy to handle those requests in replay mode under the namespace
``test_login``. ``scope=NAME`` names the scope whose repeated requests
``--repeats sequence`` counts (the pytest plugin: one per test); unlike the
namespace it never enters a key. The prefix is stripped before anything is
forwarded or keyed.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from seedtape.proxy.modes import Mode

PREFIX = "/_seedtape/"
_KNOWN = ("mode", "ns", "scope")


class RoutingError(ValueError):
    """A malformed /_seedtape/ prefix."""


@dataclass(frozen=True)
class Overrides:
    mode: Mode | None = None
    namespace: str | None = None
    scope: str | None = None


def split(path: str) -> tuple[Overrides, str]:
    """(overrides, path without the prefix); paths without a prefix come back unchanged."""
    if not path.startswith(PREFIX):
        return Overrides(), path
    params, _, rest = path[len(PREFIX) :].partition("/")
    found: dict[str, str] = {}
    for part in filter(None, params.split(",")):
        name, sep, value = part.partition("=")
        if not sep or name not in _KNOWN:
            raise RoutingError(
                f"{part!r} in the /_seedtape/ prefix: use mode=MODE, ns=NAMESPACE and/or scope=NAME, comma-separated"
            )
        found[name] = unquote(value)
    mode = None
    if "mode" in found:
        try:
            mode = Mode(found["mode"])
        except ValueError:
            raise RoutingError(f"mode={found['mode']!r}: choose one of {', '.join(m.value for m in Mode)}") from None
    return Overrides(mode, found.get("ns"), found.get("scope")), "/" + rest


def prefix(mode: str | None = None, namespace: str | None = None, scope: str | None = None) -> str:
    """The path prefix that selects ``mode``, ``namespace`` and ``scope`` (empty when none is given)."""
    parts = ([f"mode={mode}"] if mode else []) + ([f"ns={quote(namespace, safe='')}"] if namespace else [])
    parts += [f"scope={quote(scope, safe='')}"] if scope else []
    return f"/_seedtape/{','.join(parts)}" if parts else ""
