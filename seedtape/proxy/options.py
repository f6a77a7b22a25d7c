"""Every proxy option, declared once: name, type, default, help, allowed values, check, environment variable.

From this table the adapter makes its mitmproxy options (``seedtape_NAME``, for
``mitmdump -s``), the CLI makes ``seedtape serve``'s click options (``--name``),
and :func:`settings` makes the core's :class:`Settings`. A test holds
docs/options.md against it. A check raises ValueError with one sentence that
says what is allowed; both front ends turn it into their own one-line error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from seedtape.proxy.key import keyrules
from seedtape.proxy.key.canonical import DEFAULT_IGNORED_FIELDS
from seedtape.proxy.key.seed import DEFAULT_SEED, SeedPolicy
from seedtape.proxy.modes import MODE_NAMES, Mode
from seedtape.proxy.tapes import scrub

DEFAULT_UPSTREAM = "https://api.openai.com"
DEFAULT_UPSTREAM_TIMEOUT = 600.0
DEFAULT_MAX_BODY = 64 * 1024 * 1024
DEFAULT_MAP_SIZE = 256 * 1024 * 1024


@dataclass(frozen=True)
class Option:
    name: str  # seedtape_NAME under mitmproxy, --NAME (dashes) on the command line
    kind: type  # str, int, float, bool, or list (repeatable strings)
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    env: str | None = None
    metavar: str | None = None
    optional: bool = False  # None (unset) is a value of its own
    minimum: float | None = None
    maximum: float | None = None
    check: Callable[[Any], None] | None = None  # raises ValueError saying what is allowed
    flag: str | None = None  # the command-line flag when it is not --NAME (a bool that defaults to True)
    short: str | None = None  # a one-letter command-line alias
    where: frozenset[str] = frozenset({"serve", "mitmproxy"})  # which front ends offer it

    @property
    def mitmproxy_name(self) -> str:
        return f"seedtape_{self.name}"

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def to_text(self, value: Any) -> Any:
        """A value as mitmproxy holds it: numbers as text (mitmproxy cannot parse floats, and a bad number
        it parses itself is dropped without a word), the rest as they are."""
        return str(value) if self.kind in (int, float) else value

    def from_text(self, value: Any) -> Any:
        """The inverse of to_text; ValueError says what is allowed."""
        if self.kind not in (int, float) or not isinstance(value, str):
            return value
        try:
            return self.kind(value)
        except ValueError:
            what = "a whole number" if self.kind is int else "a number"
            raise ValueError(f"{value!r} is not {what}") from None

    def validate(self, value: Any) -> None:
        """ValueError naming what is allowed, for a value of the right type that is still wrong."""
        if value is None and self.optional:
            return
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{value!r} is not one of {', '.join(self.choices)}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{value!r} is below the smallest allowed value, {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"{value!r} is above the largest allowed value, {self.maximum:g}")
        if self.check is not None:
            self.check(value)


def _upstream(url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} must start with http:// or https://")


def _field_paths(paths: list[str]) -> None:
    for p in paths:
        scrub.parse_field(p)  # its ValueError says what a path looks like


def _body_paths(paths: list[str]) -> None:
    for p in paths:
        keyrules.parse_path(p)


def _masks(patterns: list[str]) -> None:
    for p in patterns:
        keyrules.compile_mask(p)


def _remote_url(url: str) -> None:
    if url:  # the remote tier's own check (its ValueError never quotes a password); Redis is imported only then
        from seedtape.proxy.tapes.remote import parse_url

        parse_url(url)


def _remote_prefix(prefix: str) -> None:
    from seedtape.proxy.tapes.remote import check_prefix

    check_prefix(prefix)


SERVE, MITMPROXY = frozenset({"serve"}), frozenset({"mitmproxy"})

OPTIONS: tuple[Option, ...] = (
    Option(
        "upstream",
        str,
        DEFAULT_UPSTREAM,
        "The OpenAI-compatible API to forward to (env SEEDTAPE_UPSTREAM).",
        env="SEEDTAPE_UPSTREAM",
        metavar="URL",
        check=_upstream,
        where=SERVE,
    ),
    Option("host", str, "127.0.0.1", "Address to listen on; one other machines can reach needs --auth-token.", where=SERVE),
    Option(
        "port",
        int,
        8787,
        "Port to listen on (0 picks a free one; the printed line names it).",
        minimum=0,
        maximum=65535,
        where=SERVE,
    ),
    Option("store", str, ".seedtape", "LMDB store directory (env SEEDTAPE_STORE).", env="SEEDTAPE_STORE"),
    Option(
        "mode",
        str,
        Mode.AUTO.value,
        "auto: replay hits, record misses. replay: offline, a miss is an error. record: always live, store. "
        "audit: always live, compare with the recording, store nothing. passthrough: forward untouched "
        "(env SEEDTAPE_MODE).",
        choices=MODE_NAMES,
        env="SEEDTAPE_MODE",
    ),
    Option("seed", int, DEFAULT_SEED, "Seed injected into chat/completions requests that carry none."),
    Option("seed_injection", bool, True, "Forward requests without a seed as they are.", flag="--no-seed-injection"),
    Option(
        "fingerprint",
        str,
        None,
        "Pin replay to this system_fingerprint (default: the newest recorded per request).",
        optional=True,
        metavar="FP",
    ),
    Option(
        "ignore_field",
        list,
        list(DEFAULT_IGNORED_FIELDS),
        f"Top-level body field kept out of the request key; repeatable. Replaces the default list "
        f"({', '.join(DEFAULT_IGNORED_FIELDS)}).",
        metavar="FIELD",
    ),
    Option(
        "ignore_query",
        list,
        [],
        "Query parameter kept out of the request key, by name (e.g. api-version, so one recording answers every "
        "Azure API version); repeatable.",
        metavar="NAME",
    ),
    Option(
        "ignore_path",
        list,
        [],
        "Body field kept out of the request key wherever PATH reaches it: steps separated by dots, * for every "
        "item (e.g. messages.*.tool_call_id, or messages[*].tool_call_id as a miss prints it); repeatable.",
        metavar="PATH",
        check=_body_paths,
    ),
    Option(
        "mask",
        list,
        [],
        "Before keying, replace every match of this Python regex in the body's string values with <masked> "
        "(e.g. timestamps or UUIDs in a tool's output); repeatable.",
        metavar="REGEX",
        check=_masks,
    ),
    Option(
        "repeats",
        str,
        "same",
        "same: identical requests share one recording. sequence: the Nth identical request of a scope (a run and "
        "namespace, or a test under the pytest plugin) is its own recording, replayed in order, with seed+N-1 "
        "injected (best-of-n, votes).",
        choices=("same", "sequence"),
    ),
    Option(
        "embedding_model",
        str,
        None,
        "In audit, record and auto mode, also measure the cosine distance of live and recorded outputs with this "
        "embedding model, fetched through the upstream's /v1/embeddings.",
        optional=True,
        metavar="NAME",
    ),
    Option(
        "replay_pace",
        float,
        0.0,
        "Replay recorded streams with their recorded gaps between events times FACTOR (0: at once).",
        minimum=0,
        metavar="FACTOR",
    ),
    Option(
        "miss_hint",
        str,
        "",
        "Replace the advice on how to record that a replay miss error gives (used by the pytest plugin).",
        metavar="TEXT",
    ),
    Option(
        "upstream_timeout",
        float,
        DEFAULT_UPSTREAM_TIMEOUT,
        "Give up on an upstream that sends no headers, or no next streamed event, for this long (0: never).",
        minimum=0,
        metavar="SECONDS",
    ),
    Option(
        "max_body",
        int,
        DEFAULT_MAX_BODY,
        "Refuse request bodies larger than this with a 413; a larger non-streamed answer gets a 502.",
        minimum=1,
        metavar="BYTES",
    ),
    Option(
        "auth_token",
        str,
        "",
        "Clients must send this in the seedtape-token header (required with a non-loopback --host; env SEEDTAPE_AUTH_TOKEN).",
        env="SEEDTAPE_AUTH_TOKEN",
        metavar="TOKEN",
    ),
    Option("redact_header", list, [], "Never store this response header; repeatable.", metavar="NAME"),
    Option(
        "redact_field",
        list,
        [],
        "Store this field as [scrubbed]: request.STEPS or response.STEPS, steps separated by dots, * for every "
        "item (e.g. request.body.messages.*.content, response.id); repeatable.",
        metavar="PATH",
        check=_field_paths,
    ),
    Option(
        "key_by_credential",
        bool,
        False,
        "Keep recordings of different API keys apart: a salted hash of the key enters the request key.",
    ),
    Option(
        "credential_salt",
        str,
        "",
        "Salt for --key-by-credential, the same on every machine that shares tapes (default: a random salt kept "
        "in the store; env SEEDTAPE_CREDENTIAL_SALT).",
        env="SEEDTAPE_CREDENTIAL_SALT",
        metavar="SALT",
    ),
    Option(
        "remote",
        str,
        "",
        "A shared store on Redis behind the local one: redis://[USER:PASSWORD@]HOST:PORT/DB, rediss:// for TLS, "
        "redis+cluster:// (or rediss+cluster://) and any node for a Redis Cluster (env SEEDTAPE_REMOTE; "
        "its password is never logged).",
        env="SEEDTAPE_REMOTE",
        metavar="URL",
        check=_remote_url,
    ),
    Option(
        "remote_prefix",
        str,
        "seedtape",
        "Prefix of every key seedtape writes to the remote: one per project sharing a Redis.",
        metavar="NAME",
        check=_remote_prefix,
    ),
    Option("remote_readonly", bool, False, "Read the remote, never write it (untrusted branches record locally only)."),
    Option(
        "remote_required",
        bool,
        False,
        "Refuse to start when the remote does not answer (default: warn and serve from the local store).",
    ),
    Option(
        "report_unused",
        str,
        "",
        "When the proxy stops, write the recordings that no request used in this run to FILE (JSON).",
        metavar="FILE",
    ),
    Option(
        "map_size",
        int,
        DEFAULT_MAP_SIZE,
        "Initial LMDB map size in bytes; it grows as needed.",
        minimum=4096,
        metavar="BYTES",
        where=MITMPROXY,
    ),
    Option(
        "grace",
        float,
        5.0,
        "On Ctrl-C or SIGTERM, stop listening and give the exchanges in flight this long to finish (and be "
        "recorded); a second Ctrl-C stops at once.",
        minimum=0,
        metavar="SECONDS",
        where=SERVE,
    ),
    Option(
        "workers",
        int,
        1,
        "Run N proxy processes on the same port and store (several cores for replay); --repeats sequence, "
        "--report-unused and the stop cover them all.",
        minimum=1,
        maximum=64,
        metavar="N",
        where=SERVE,
    ),
    Option("quiet", bool, False, "Log warnings only, not one line per request.", short="-q", where=SERVE),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


def offered(where: str) -> tuple[Option, ...]:
    """The options one front end offers ("serve" or "mitmproxy")."""
    return tuple(o for o in OPTIONS if where in o.where)


@dataclass(frozen=True)
class Settings:
    """The core's typed view of the option values (what Tapedeck needs)."""

    mode: Mode = Mode.AUTO
    seed: SeedPolicy = field(default_factory=SeedPolicy)
    ignored_fields: frozenset[str] = frozenset(DEFAULT_IGNORED_FIELDS)
    ignored_query: frozenset[str] = frozenset()  # query parameters kept out of the key, by name
    ignored_paths: tuple[keyrules.IgnorePath, ...] = ()  # --ignore-path: body fields kept out of the key
    masks: tuple[keyrules.Mask, ...] = ()  # --mask: regexes whose matches in body strings are keyed as <masked>
    fingerprint: str | None = None  # pin replay to one fingerprint
    upstream: str = DEFAULT_UPSTREAM
    embedding_model: str | None = None  # also compare live and recorded outputs by embedding distance
    redact_headers: frozenset[str] = frozenset()  # response headers never stored, beyond the built-in rules
    redact_fields: tuple[scrub.FieldPath, ...] = ()  # request./response. paths stored as "[scrubbed]"
    key_by_credential: bool = False  # a salted hash of the API key enters the request key
    credential_salt: str = ""  # shared salt (so keys match across stores); default: the store's own
    miss_hint: str = ""  # how to record a replay miss, when the default advice does not fit (pytest)
    replay_pace: float = 0.0  # replay streams with their recorded gaps times this factor (0: at once)
    sequence: bool = False  # --repeats sequence: the Nth identical request of a scope is its own recording


def settings(values: Mapping[str, Any], upstream: str) -> Settings:
    """Settings from option values by name (missing ones take their defaults); values must be valid."""

    def v(name: str) -> Any:
        return values.get(name, BY_NAME[name].default)

    return Settings(
        mode=Mode(v("mode")),
        seed=SeedPolicy(v("seed"), v("seed_injection")),
        ignored_fields=frozenset(v("ignore_field")),
        ignored_query=frozenset(v("ignore_query")),
        ignored_paths=tuple(keyrules.parse_path(p) for p in v("ignore_path")),
        masks=tuple(keyrules.compile_mask(m) for m in v("mask")),
        fingerprint=v("fingerprint") or None,
        upstream=upstream,
        embedding_model=v("embedding_model") or None,
        redact_headers=frozenset(h.lower() for h in v("redact_header")),
        redact_fields=tuple(scrub.parse_field(f) for f in v("redact_field")),
        key_by_credential=v("key_by_credential"),
        credential_salt=v("credential_salt"),
        miss_hint=v("miss_hint"),
        replay_pace=v("replay_pace"),
        sequence=v("repeats") == "sequence",
    )
