"""Hostile input ("Hardening" item 5): seedtape refuses clearly or passes through, never breaks.

Two layers:

1. Properties (hypothesis) of the pure request path: normalize_path, canonicalize,
   routing.split and Tapedeck.begin with a real Store. Whatever method, path, headers
   and body bytes arrive, begin returns an Exchange that either carries a request key,
   or a refusal in OpenAI's error shape with a 4xx status, or is a passthrough; it never
   raises. (test_canonical.py already has the key-spelling properties; not repeated.)
2. End to end: ONE real `seedtape serve` (auto mode) in front of the fake upstream,
   module-scoped, plus one with a small --max-body sharing its store. Every hostile
   request must get a clear error (OpenAI-shaped JSON with error.message, a 4xx the SDKs
   do not retry) or be passed through / keyed; never a 500 or a traceback in the log;
   the proxy keeps serving (a good SDK request succeeds after each case); and at the end
   the store holds nothing but JSON completions and SSE streams.

Decisions documented here:

- A JSON body is keyed whatever its content-type (text/plain, none, a form type): the
  content-type is a header and no header but seedtape-namespace enters the key, so a
  curl user who forgot ``-H content-type`` gets the same recording as the SDK.
- Content-encoded request bodies (gzip, deflate, br, zstd) are decoded before keying:
  the same JSON gets the same key however it was compressed; a body that does not
  decode gets a 400.
- Duplicate object keys: the last one wins (Python's json), for the key and for the
  forwarded body.
- Methods and paths seedtape does not record (PUT, DELETE, PATCH, TRACE, HEAD, OPTIONS,
  unknown paths) are passed through untouched in auto mode (the upstream answers), and
  refused with a 400 in replay mode.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import brotli
import httpx
import pytest
from conftest import chat, client
from fake_upstream import FakeUpstream
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from proxyproc import ProxyProcess
from support import ClosedEarly, assert_openai_error, entries, http_request, run_cli

from seedtape.proxy import dialects
from seedtape.proxy.deck import Tapedeck
from seedtape.proxy.exchange import Exchange
from seedtape.proxy.headers import is_safe
from seedtape.proxy.key import routing
from seedtape.proxy.key.canonical import canonicalize, dumps_canonical, normalize_path
from seedtape.proxy.key.routing import RoutingError
from seedtape.proxy.key.seed import SeedPolicy
from seedtape.proxy.modes import Mode
from seedtape.proxy.options import Settings
from seedtape.proxy.streams.sse import DONE, SSEParser
from seedtape.proxy.tapes.store import Store

CHAT = "/v1/chat/completions"
GOOD_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a good request"}]}
GOOD = json.dumps(GOOD_BODY).encode()
HEX64 = re.compile(r"[0-9a-f]{64}")
SUFFIX = {d.name: d.suffix for d in dialects.ALL}
NOT_RETRIED = (408, 409, 429)  # the SDKs retry these (and >= 500)


# =========================================================================================
# helpers shared by both layers
# =========================================================================================


def assert_clear_error(status: int, headers: dict[str, str], body: bytes, *, code: str | None = None,
                       upstream_ok: bool = False) -> dict:
    """seedtape's own refusal: a 4xx the SDKs do not retry, OpenAI's error shape, a readable message.

    ``upstream_ok``: a 502 about the upstream is clear too (with x-should-retry: false).
    """
    assert (400 <= status < 500 and status not in NOT_RETRIED) or (upstream_ok and status == 502), (status, body[:300])
    err = assert_openai_error((status, headers, body), status, code)
    assert "Traceback" not in err["message"]
    return err


# =========================================================================================
# 1. properties of the pure request path
# =========================================================================================

any_char = st.characters(exclude_categories=())  # includes lone surrogates (mitmproxy's surrogateescape)
any_text = st.text(any_char, max_size=40)
header_value = st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b).map(
    lambda b: b.decode("utf-8", "surrogateescape")  # what mitmproxy hands over for a raw header value
)
SEGMENTS = ["v1", "chat", "completions", "embeddings", "", "..", ".", "%ff", "%00", "_seedtape", "mode=replay",
            "mode=passthrough", "ns=a%2Fb", "mode=bogus", "x=1", "openai", "deployments", "\udcff", "é", "?", "?a=1&b"]
endpoint_paths = st.builds(
    lambda pre, ep, q: pre + ep + q,
    st.sampled_from(["", "/", "//", "/_seedtape/mode=replay", "/_seedtape/ns=x", "/_seedtape/mode=audit,ns=%ff",
                     "/_seedtape/mode=passthrough", "/openai", "/\udcff"]),
    st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1//chat//completions/"]),
    st.sampled_from(["", "/", "?api-version=1", "?b=2&a=1", "?%ff=%fe", "?a", "?&&=", "#x"]),
)
paths = st.one_of(
    endpoint_paths,
    endpoint_paths,  # twice: most requests should reach an endpoint, where the work is
    st.lists(st.sampled_from(SEGMENTS) | any_text, max_size=6).map(lambda parts: "/" + "/".join(parts)),
    any_text,
)
methods = st.one_of(
    st.just("POST"),
    st.sampled_from(["POST", "post", "Post", "GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT"]),
    st.text(any_char, max_size=8),
)
json_scalar = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
)
json_value = st.recursive(
    json_scalar,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(any_text, kids, max_size=4),
    max_leaves=20,
)
request_like = st.fixed_dictionaries(
    {"model": json_value, "messages": json_value},
    optional={"seed": json_value, "stream": json_value, "stream_options": json_value, "user": json_value,
              "metadata": json_value, "n": json_value, "temperature": json_value},
)
TOKENS = [b"{", b"}", b"[", b"]", b",", b":", b" ", b'"model"', b'"messages"', b'"seed"', b'"stream"', b'"a"',
          b'"\\ud800"', b'"\\u0000"', b"null", b"true", b"1", b"-0", b"1.0", b"1e308", b"1e-400", b"9" * 30,
          b"NaN", b"Infinity", b"-Infinity", b"\xff", b"\x00", b"\xef\xbb\xbf", b'"\xc3\xa9"']
bodies = st.one_of(
    st.binary(max_size=200),
    json_value.map(lambda v: json.dumps(v).encode()),
    request_like.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    request_like.map(lambda v: json.dumps(v).encode()),
    st.lists(st.sampled_from(TOKENS), max_size=30).map(b"".join),
    st.just(GOOD),
)
headers_st = st.dictionaries(
    st.sampled_from(["authorization", "api-key", "x-api-key", "seedtape-namespace", "content-type",
                     "content-encoding", "user-agent", "x-stainless-retry-count"]) | st.text(max_size=10),
    header_value,
    max_size=5,
)

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def unit_store(tmp_path_factory):
    with Store(tmp_path_factory.mktemp("hostile-unit") / "store") as st_:
        # one recording, so that begin can also take the "hit" branch
        deck = Tapedeck(st_, Settings())
        ex = deck.begin("POST", CHAT, {}, GOOD)
        answer = {"id": "c1", "object": "chat.completion", "model": "m", "system_fingerprint": "fp_u",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
        deck.finish(ex, 200, [("content-type", "application/json")], json.dumps(answer).encode())
        assert ex.status == "recorded"
        yield st_


@pytest.fixture(scope="module")
def decks(unit_store):
    out = {mode: Tapedeck(unit_store, Settings(mode=mode)) for mode in Mode}
    out["credential"] = Tapedeck(unit_store, Settings(key_by_credential=True, credential_salt="s"))
    out["no-seed"] = Tapedeck(unit_store, Settings(seed=SeedPolicy(inject=False)))
    return out


def check_exchange(ex: Exchange) -> str:
    """The three outcomes begin may have; returns which one it was."""
    assert isinstance(ex, Exchange)
    if ex.reply is not None:
        hdrs = {k.lower(): v for k, v in ex.reply.headers}
        if ex.status.startswith("hit"):
            assert 200 <= ex.reply.status < 300 and HEX64.fullmatch(ex.key)
            return "hit"
        assert ex.status in ("error", "miss"), ex.status
        assert_clear_error(ex.reply.status, hdrs, ex.reply.body)
        assert ex.forward_body is None or ex.status == "miss"
        return "refused"
    if ex.canonical is not None:
        assert ex.status == "live" and ex.dialect is not None
        assert HEX64.fullmatch(ex.key)
        assert ex.key == hashlib.sha256(ex.canonical.canonical_bytes()).hexdigest()
        json.loads(ex.canonical.canonical_bytes().decode("utf-8", "surrogatepass"))  # the canonical form is JSON
        if ex.forward_body is not None:  # rewritten only to inject a seed, or (injection off) to drop seed: null
            forwarded = json.loads(ex.forward_body)
            assert isinstance(forwarded, dict)
            if ex.seed.endswith("injected"):
                assert forwarded.get("seed") is not None
            else:
                assert ex.seed == "none" and "seed" not in forwarded
        return "keyed"
    assert ex.status == "passthrough" and ex.forward_body is None
    assert ex.dialect is None or ex.mode is Mode.PASSTHROUGH
    return "passthrough"


targets = st.one_of(
    st.tuples(st.sampled_from(["POST", "post"]), endpoint_paths),  # where the work is: about half of the cases
    st.tuples(methods, paths),
)


@PROPS
@given(target=targets, headers=headers_st, content=bodies, which=st.sampled_from([*Mode, "credential", "no-seed"]))
@example(target=("POST", CHAT), headers={}, content=GOOD, which=Mode.AUTO)
@example(target=("POST", CHAT), headers={}, content=b'{"model": "m", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
         which=Mode.AUTO)
@example(target=("POST", CHAT), headers={}, content=b'{"model": "m", "seed": ' + b"[" * 990 + b"]" * 990 + b"}",
         which=Mode.AUTO)
@example(target=("POST", "/_seedtape/mode=replay/v1/embeddings"), headers={}, content=b"\xff", which=Mode.AUTO)
@example(target=("POST", CHAT), headers={}, content=b'{"model": "m", "messages": [], "temperature": 1e400}',
         which=Mode.AUTO)  # a float overflow: refused, never raised
@example(target=("POST", CHAT), headers={"authorization": "Bearer \udcff\udcfe"}, content=GOOD,
         which="credential")  # a credential that is not UTF-8 (as mitmproxy hands it over)
def test_begin_never_raises(decks, target, headers, content, which):
    method, path = target
    deck = decks[which]
    ex = deck.begin(method, path, headers, content)
    outcome = check_exchange(ex)
    event(outcome)
    if outcome == "keyed":
        # a request with a key always had a JSON object body and a recordable endpoint
        body = json.loads(content.decode("utf-8"))
        assert isinstance(body, dict)


@PROPS
@given(content=bodies)
def test_begin_on_the_chat_endpoint_keys_or_refuses(decks, content):
    """On the endpoint itself there is no passthrough: a body gets a key (or a hit) or a 400."""
    ex = decks[Mode.AUTO].begin("POST", CHAT, {}, content)
    outcome = check_exchange(ex)
    event(outcome)
    assert outcome in ("keyed", "hit", "refused")
    if outcome == "refused":
        assert ex.reply.status == 400
    try:
        parsed = json.loads(content.decode("utf-8"), parse_constant=lambda c: 1 / 0)
    except (ValueError, RecursionError, ZeroDivisionError):
        parsed = None
    if not isinstance(parsed, dict):
        assert outcome == "refused"  # only a JSON object is ever keyed


@PROPS
@given(content=bodies, mode=st.sampled_from([Mode.REPLAY]))
def test_replay_never_goes_live(decks, content, mode):
    ex = decks[mode].begin("POST", CHAT, {}, content)
    assert check_exchange(ex) in ("hit", "refused")  # never "keyed": that would be a live call


@PROPS
@given(path=st.text(any_char, max_size=60))
def test_normalize_path_properties(path):
    out = normalize_path(path)
    assert "?" not in out and "//" not in out
    assert out == "/" or not out.endswith("/")
    assert normalize_path(out) == out  # idempotent
    if path.startswith("/"):
        assert out.startswith("/")


@PROPS
@given(method=st.text(any_char, max_size=8), path=st.text(any_char, max_size=40), query=st.text(any_char, max_size=40),
       body=json_value | st.binary(max_size=50), namespace=any_text, credential=st.text(max_size=10))
def test_canonicalize_never_raises_and_is_deterministic(method, path, query, body, namespace, credential):
    a = canonicalize(method, path, query, body, namespace=namespace, credential=credential)
    b = canonicalize(method, path, query, body, namespace=namespace, credential=credential)
    assert HEX64.fullmatch(a.key) and a.key == b.key
    again = json.loads(a.canonical_bytes().decode("utf-8", "surrogatepass"))
    assert again["method"] == method.upper() and again["namespace"] == namespace
    # the rules that make spellings equal, as properties of any input
    assert canonicalize(method.lower(), path, query, body, namespace=namespace, credential=credential).method == a.method
    if "?" not in path:  # a trailing slash never counts
        assert canonicalize(method, path + "/", query, body, namespace=namespace, credential=credential).key == a.key


@PROPS
@given(path=st.text(any_char, max_size=60) | st.builds(lambda s: "/_seedtape/" + s, st.text(any_char, max_size=60)))
def test_routing_split_never_raises_anything_but_routing_error(path):
    try:
        over, rest = routing.split(path)
    except RoutingError as e:
        assert str(e)  # says what is wrong
        return
    if path.startswith(routing.PREFIX):
        assert rest.startswith("/") and (rest == "/" or path.endswith(rest))
        assert over.mode is None or isinstance(over.mode, Mode)
        assert over.namespace is None or isinstance(over.namespace, str)
    else:
        assert rest == path and over == routing.Overrides()


@PROPS
@given(mode=st.sampled_from(list(Mode)) | st.none(), ns=st.text(min_size=1, max_size=30) | st.none(),
       tail=st.sampled_from(["/v1/chat/completions", "/v1/embeddings?x=1", "/"]))
def test_routing_prefix_round_trips_any_namespace(mode, ns, tail):
    over, rest = routing.split(routing.prefix(mode.value if mode else None, ns) + tail)
    assert rest == tail
    assert over.mode == mode and over.namespace == ns


# -- inputs that once broke the pure layer -------------------------------------------------


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1E+999", b"123456789e999"])
def test_begin_refuses_float_overflow(decks, number):
    content = b'{"model": "m", "messages": [], "temperature": ' + number + b"}"
    ex = decks[Mode.AUTO].begin("POST", CHAT, {}, content)
    assert check_exchange(ex) == "refused" and ex.reply.status == 400


def test_begin_with_a_non_utf8_credential(decks):
    ex = decks["credential"].begin("POST", CHAT, {"authorization": b"Bearer \xff\xfe".decode("utf-8", "surrogateescape")},
                                   GOOD)
    assert check_exchange(ex) in ("keyed", "hit", "refused")


# =========================================================================================
# 2. end to end: one real `seedtape serve` in auto mode
# =========================================================================================


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes = b""

    @property
    def st(self) -> str:
        return self.headers.get("seedtape-status", "")

    def json(self):
        return json.loads(self.body)


def from_httpx(r: httpx.Response) -> Resp:
    return Resp(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)


@dataclass
class Served:
    """A running proxy and what it has logged; `settle` syncs with its log through a good request."""

    proxy: ProxyProcess
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=60))

    def post(self, content: bytes, path: str = CHAT, headers: dict | None = None, method: str = "POST") -> Resp:
        h = {"content-type": "application/json", **(headers or {})}
        return from_httpx(self.http.request(method, self.proxy.origin + path, content=content, headers=h))

    def raw(self, data: bytes, *, timeout: float = 30) -> Resp:
        """Send bytes as they are (an HTTP client would refuse or fix most hostile request lines)."""
        return Resp(*http_request(self.proxy.port, data, timeout=timeout))

    def settle(self) -> None:
        """A good SDK request succeeds, and everything logged before it is in proxy.output."""
        pos = len(self.proxy.output)
        raw = chat(client(self.proxy), "still serving after a hostile request")
        assert raw.headers["seedtape-status"] in ("recorded", "hit"), raw.headers
        assert raw.parse().choices[0].message.content
        marker = f"key={raw.headers['seedtape-key'][:12]}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if marker in self.proxy.output[pos:]:
                return
            time.sleep(0.01)
        raise AssertionError(f"the proxy did not log the good request:\n{self.proxy.output[-2000:]}")

    @contextmanager
    def case(self):
        """Around one hostile request: afterwards the proxy still serves, and logged no traceback."""
        start = len(self.proxy.output)
        yield self
        self.settle()
        new = self.proxy.output[start:]
        assert "Traceback" not in new, new[-3000:]
        assert "internal error" not in new, new[-3000:]
        assert "body_size_limit" not in new, new[-3000:]  # seedtape's --max-body, not mitmproxy's option name


def raw_request(method: bytes, target: bytes, body: bytes = b"", headers: tuple[bytes, ...] = (),
                length: bool = True) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close", *headers]
    if length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.fixture(scope="module")
def up():
    with FakeUpstream() as u:
        yield u


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hostile-e2e") / "store")


@pytest.fixture(scope="module")
def served(up, hostile_store):
    p = ProxyProcess("--upstream", up.url, "--store", hostile_store)
    s = Served(p)
    yield s
    s.http.close()
    p.stop()


SMALL = 1000  # --max-body of the second proxy


@pytest.fixture(scope="module")
def small(up, hostile_store):
    """A second proxy with --max-body 1000, on the same store (the final store check covers it too)."""
    p = ProxyProcess("--upstream", up.url, "--store", hostile_store, "--max-body", str(SMALL))
    s = Served(p)
    yield s
    s.http.close()
    p.stop()


def assert_keyed(r: Resp) -> str:
    """Forwarded or served under a request key, with a real completion."""
    assert r.status == 200, (r.status, r.body[:300])
    assert r.st in ("recorded", "hit"), r.headers
    assert HEX64.fullmatch(r.headers["seedtape-key"])
    assert r.json()["object"] == "chat.completion"
    return r.headers["seedtape-key"]


def assert_refused(r: Resp, status: int = 400, code: str = "invalid_request", *, says: str = "") -> dict:
    assert r.status == status, (r.status, r.body[:300])
    assert r.st == "error", r.headers
    err = assert_clear_error(r.status, r.headers, r.body, code=code)
    assert says.lower() in err["message"].lower(), err["message"]
    assert "sys." not in err["message"] and "python" not in err["message"].lower()  # no interpreter advice
    return err


def assert_passed_through(r: Resp) -> None:
    """The upstream's own answer, untouched and unrecorded (never a seedtape 5xx)."""
    assert r.st == "passthrough", (r.status, r.headers, r.body[:200])
    assert "seedtape-error" not in r.headers


def key_of_plain(served: Served, body: dict) -> str:
    return assert_keyed(served.post(json.dumps(body).encode()))


# -- bodies seedtape cannot read: 400, nothing forwarded ------------------------------------

UNREADABLE = {
    "malformed": (b"{not json", "not valid JSON"),
    "trailing-comma": (b'{"model": "m",}', "not valid JSON"),
    "truncated": (b'{"model": "m", "messages": [', "not valid JSON"),
    "empty": (b"", "not valid JSON"),
    "whitespace": (b" \r\n\t", "not valid JSON"),
    "two-objects": (b'{"model": "m"}{"model": "n"}', "not valid JSON"),
    "null": (b"null", "must be an object"),
    "array": (b"[1, 2]", "must be an object"),
    "empty-array": (b"[]", "must be an object"),
    "string": (b'"chat"', "must be an object"),
    "number": (b"42", "must be an object"),
    "true": (b"true", "must be an object"),
    "latin-1": ('{"model": "m", "messages": [{"role": "user", "content": "café"}]}'.encode("latin-1"), "not UTF-8"),
    "invalid-utf8": (b'{"model": "\xff\xfe"}', "not UTF-8"),
    "overlong-utf8": (b'{"model": "\xc0\xaf"}', "not UTF-8"),
    "cesu-surrogate": (b'{"model": "\xed\xa0\x80"}', "not UTF-8"),
    "utf-16": (json.dumps(GOOD_BODY).encode("utf-16"), "not UTF-8"),
    "utf-8-bom": (b"\xef\xbb\xbf" + GOOD, "not valid JSON"),
    "nul-byte": (b'{"model": "m"}\x00', "not valid JSON"),
    "NaN": (b'{"model": "m", "messages": [], "temperature": NaN}', "NaN"),
    "Infinity": (b'{"model": "m", "messages": [], "temperature": Infinity}', "Infinity"),
    "-Infinity": (b'{"model": "m", "messages": [], "temperature": -Infinity}', "-Infinity"),
    "int-5000-digits": (b'{"model": "m", "messages": [], "n": ' + b"9" * 5000 + b"}", "5000-digit integer is too large"),
    "int-100000-digits": (b'{"model": "m", "messages": [], "n": ' + b"9" * 100_000 + b"}", "100000-digit integer is too large"),
    "nested-10000": (b'{"model": "m", "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "nested too deeply"),
    "nested-100000": (b'{"model": "m", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    "nested-objects-100000": (b'{"model": "m", "x": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"}",
                              "nested too deeply"),
}


@pytest.mark.parametrize("name", list(UNREADABLE))
def test_unreadable_body_gets_a_clear_400(served, up, name):
    body, says = UNREADABLE[name]
    with served.case():
        n = len(up.log)
        assert_refused(served.post(body), 400, "invalid_request", says=says)
        assert len(up.log) == n  # never forwarded


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1E+999"])
def test_float_overflow_gets_a_clear_400(served, up, number):
    with served.case():
        assert_refused(served.post(b'{"model": "m", "messages": [], "temperature": ' + number + b"}"), 400,
                       says="not valid JSON")


# -- bodies seedtape can read: keyed like the SDK's spelling -------------------------------


def test_huge_integer_is_keyed_exactly(served, up):
    """10**400 is valid JSON with an exact value: it is keyed (and recorded) as that integer."""
    with served.case():
        body = b'{"model": "m", "messages": [{"role": "user", "content": "big"}], "max_tokens": 1' + b"0" * 400 + b"}"
        k = assert_keyed(served.post(body))
        assert served.post(body).st == "hit"
        other = body.replace(b"1" + b"0" * 400, b"2" + b"0" * 400)
        assert assert_keyed(served.post(other)) != k  # all 401 digits count


def test_tiny_and_largest_floats(served):
    with served.case():
        # 1e-400 underflows to 0.0, an integral float: it counts as 0 (the README's 1.0 == 1 rule)
        base = {"model": "m", "messages": [{"role": "user", "content": "floats"}]}
        tiny = b'{"model": "m", "messages": [{"role": "user", "content": "floats"}], "temperature": 1e-400}'
        assert assert_keyed(served.post(tiny)) == key_of_plain(served, {**base, "temperature": 0})
        assert_keyed(served.post(json.dumps({**base, "top_p": 1.7976931348623157e308}).encode()))


def test_duplicate_keys_last_one_wins(served, up):
    with served.case():
        dup = b'{"model": "first", "model": "second", "messages": [{"role": "user", "content": "dup"}]}'
        k = assert_keyed(served.post(dup))
        assert up.log[-1]["body"]["model"] == "second"  # the forwarded (re-encoded, seeded) body agrees
        assert key_of_plain(served, {"model": "second", "messages": [{"role": "user", "content": "dup"}]}) == k
        assert key_of_plain(served, {"model": "first", "messages": [{"role": "user", "content": "dup"}]}) != k


def test_nested_100_levels_is_recorded_and_replayed(served):
    with served.case():
        body = b'{"model": "m", "messages": [{"role": "user", "content": "deep"}], "x": ' + b"[" * 100 + b"]" * 100 + b"}"
        assert served.post(body).st in ("recorded", "hit")
        assert served.post(body).st == "hit"


def test_nested_600_levels_is_refused_or_recorded(served):
    body = b'{"model": "m", "messages": [{"role": "user", "content": "deep600"}], "x": ' + b"[" * 600 + b"]" * 600 + b"}"
    with served.case():
        first = served.post(body)
        if first.status == 400:
            assert_refused(first, says="nested too deeply")
        else:
            assert first.st in ("recorded", "hit"), first.headers
            assert served.post(body).st == "hit"


def test_surrogate_escapes_in_json_are_keyed(served):
    """"\\ud800" is valid JSON (not valid UTF-8 once decoded): keyed and recorded, not refused."""
    with served.case():
        body = b'{"model": "m", "messages": [{"role": "user", "content": "lone \\ud800 surrogate"}]}'
        assert_keyed(served.post(body))
        assert served.post(body).st == "hit"


@pytest.mark.parametrize("ctype", ["text/plain", "text/plain; charset=latin-1", None, "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", "application/json; charset=utf-16"])
def test_json_with_any_content_type_is_keyed_like_json(served, up, ctype):
    """Decision: the content-type does not matter (it is a header); the JSON body is keyed as JSON."""
    body = {"model": "m", "messages": [{"role": "user", "content": "content-type does not matter"}]}
    with served.case():
        k = key_of_plain(served, body)
        h = {"content-type": ctype} if ctype else {}
        req = httpx.Request("POST", served.proxy.origin + CHAT, content=json.dumps(body).encode(), headers=h)
        if ctype is None:
            req.headers.pop("content-type", None)
        r = from_httpx(served.http.send(req))
        assert assert_keyed(r) == k and r.st == "hit"


ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
}
try:
    from mitmproxy.net import encoding as _mitm_encoding

    _mitm_encoding.encode(b"x", "zstd")
    ENCODERS["zstd"] = lambda b: _mitm_encoding.encode(b, "zstd")
except Exception:  # pragma: no cover - zstd support depends on the installed extras
    pass


@pytest.mark.parametrize("enc", list(ENCODERS))
def test_encoded_bodies_are_keyed_like_plain_json(served, up, enc):
    body = {"model": "m", "messages": [{"role": "user", "content": f"compressed with {enc}"}], "temperature": 1.0}
    with served.case():
        r = served.post(ENCODERS[enc](json.dumps(body).encode()), headers={"content-encoding": enc})
        k = assert_keyed(r)
        assert r.st == "recorded"
        assert up.log[-1]["body"]["temperature"] == 1.0  # the upstream got the decoded JSON
        assert key_of_plain(served, {**body, "temperature": 1}) == k


@pytest.mark.parametrize("enc, content", [("gzip", b"not gzip at all"), ("br", b"not brotli"), ("deflate", b"\x00\x01"),
                                          ("zstd", b"not zstd"), ("x-unknown", GOOD), ("gzip, br", GOOD),
                                          ("gzip", gzip.compress(b"\xff\xfe not utf-8"))])
def test_bodies_that_do_not_decode_get_a_clear_400(served, up, enc, content):
    with served.case():
        n = len(up.log)
        assert_refused(served.post(content, headers={"content-encoding": enc}), 400)
        assert len(up.log) == n


# -- --max-body ---------------------------------------------------------------------------


def padded(size: int) -> bytes:
    """A valid request of exactly ``size`` bytes."""
    head = b'{"model": "m", "messages": [{"role": "user", "content": "pad'
    tail = b'"}]}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def test_body_at_the_limit_is_accepted(small):
    with small.case():
        assert_keyed(small.post(padded(SMALL)))


@pytest.mark.parametrize("how", ["content-length", "chunked", "gzip-expands-over-it"])
def test_body_over_max_body_gets_a_clear_413(small, up, how):
    body = padded(SMALL + 1)
    with small.case():
        n = len(up.log)
        if how == "content-length":
            r = small.post(body)
        elif how == "chunked":
            r = from_httpx(small.http.post(small.proxy.origin + CHAT, content=iter([body[:500], body[500:]]),
                                           headers={"content-type": "application/json"}))
        else:
            big = padded(50_000)
            r = small.post(gzip.compress(big), headers={"content-encoding": "gzip"})
            assert len(gzip.compress(big)) < SMALL  # the wire size was under the limit
        err = assert_refused(r, 413, "request_too_large", says="--max-body")
        assert str(SMALL) in err["message"]
        assert len(up.log) == n


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_body_over_max_body_is_refused_before_it_is_read(small, framing):
    if framing == "content-length":
        head = raw_request(b"POST", CHAT.encode(), headers=(b"Content-Type: application/json",), length=False)
        data = head.replace(b"\r\n\r\n", b"\r\nContent-Length: 100000000\r\n\r\n") + b'{"model": "m", "x": "' + b"a" * 100
    else:
        head = raw_request(b"POST", CHAT.encode(), headers=(b"Transfer-Encoding: chunked",), length=False)
        data = head + b"%x\r\n%s\r\n" % (SMALL * 3, b"a" * (SMALL * 3))  # more than the limit, and the body goes on
    try:
        r = http_request(small.proxy.port, data, timeout=5)  # the rest of the body never comes: only an early answer
    except TimeoutError:
        pytest.fail("no 413 within 5 s: the proxy waits for (and buffers) the whole oversized body")
    assert r.status == 413
    assert_clear_error(*r)


def peak_rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_decompression_bomb_is_refused_without_inflating_it(up, tmp_path):
    p = ProxyProcess("--upstream", up.url, "--store", str(tmp_path / "store"), "--max-body", "100000", "--quiet")
    try:
        bomb = brotli.compress(b'{"model": "m", "x": "' + b"a" * (192 * 1024 * 1024) + b'"}')
        assert len(bomb) < 100_000
        before = peak_rss_mib(p.proc.pid)
        r = httpx.post(p.base_url + "/chat/completions", content=bomb, headers={"content-encoding": "br"}, timeout=120)
        assert_openai_error(r, 413, "request_too_large")
        grown = peak_rss_mib(p.proc.pid) - before
        assert grown < 64, f"the proxy's peak memory grew by {grown} MiB for a {len(bomb)}-byte request"
    finally:
        p.stop()


# -- methods and paths ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "TRACE", "HEAD", "OPTIONS", "GET", "FOO", "post"])
def test_other_methods_are_passed_through_in_auto_and_refused_in_replay(served, up, method):
    with served.case():
        r = served.raw(raw_request(method.encode(), CHAT.encode(), GOOD if method not in ("HEAD", "GET", "TRACE") else b""))
        if method == "post":  # keyed as POST (rule 1: the method is upper-cased): a hit, or forwarded as it came
            assert r.st == "hit" or (r.st == "unrecorded" and r.status == 501), (r.status, r.headers)
        else:
            assert_passed_through(r)
        replay = served.raw(raw_request(method.encode(), b"/_seedtape/mode=replay" + CHAT.encode()))  # HEAD: no body read
        assert replay.status in (400, 404) and replay.st in ("error", "miss")
        if method != "HEAD":  # a HEAD answer has no body
            assert_clear_error(replay.status, replay.headers, replay.body)


def test_cleartext_http2_preface_is_refused_not_forwarded(served, up):
    """curl --http2-prior-knowledge: mitmproxy reads the preface as an HTTP/1 "PRI *" request."""
    with served.case():
        n = len(up.log)
        r = served.raw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", timeout=10)  # answered in HTTP/1 (h11 reads nothing else)
        assert r.status == 505, r
        assert_openai_error(r, 505, "http_version_not_supported")
        assert len(up.log) == n  # never forwarded


LONG = "/v1/" + "a" * 8000
PATHS = {
    "unknown": ("/v1/nope", "passthrough"),
    "root": ("/", "passthrough"),
    "star": ("*", "passthrough"),
    "dot-dot": ("/v1/chat/completions/../../etc/passwd", "passthrough"),
    "long-8k": (LONG, "passthrough"),
    # the fake upstream answers 414 and hangs up while the line is still coming: its 414 or a clear 502
    "long-100k": ("/v1/" + "b" * 100_000, "any"),
    "long-query": (CHAT + "?" + "a=1&" * 20_000, "any"),
    "pct-ff-00": ("/v1/%ff%00/chat/completions", "keyed"),
    "raw-nul": ("/v1/\x00/chat/completions", "keyed"),
    "raw-tab": ("/v1/chat/completions\t", "any"),
    "absolute-form": ("http://evil.example/v1/chat/completions", "keyed"),
    "no-slash": ("v1/chat/completions", "refused"),
    "prefix-bad": ("/_seedtape/bogus/v1/chat/completions", "refused"),
    "prefix-bad-mode": ("/_seedtape/mode=nope/v1/chat/completions", "refused"),
    "prefix-only": ("/_seedtape/", "passthrough"),
    "prefix-ns-pct": ("/_seedtape/ns=%ff%fe/v1/chat/completions", "keyed"),
}


@pytest.mark.parametrize("name", list(PATHS))
def test_weird_paths(served, up, name):
    path, expect = PATHS[name]
    with served.case():
        n = len(up.log)
        r = served.raw(raw_request(b"POST", path.encode(), GOOD))
        assert r.status != 500 and "Traceback" not in r.body.decode("utf-8", "replace")
        if expect == "passthrough":
            assert_passed_through(r)
        elif expect == "keyed":
            assert_keyed(r)
        elif expect == "refused":
            assert 400 <= r.status < 500 and r.st == "error"
            assert_clear_error(r.status, r.headers, r.body)
            assert len(up.log) == n
        else:
            assert r.st in ("passthrough", "recorded", "hit", "unrecorded", "error"), r.headers
            if r.st == "error":
                assert_clear_error(r.status, r.headers, r.body, upstream_ok=True)
        if name == "absolute-form":  # reverse mode: the request went to --upstream, never to the named host
            assert up.log[-1]["path"] == CHAT


@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 64\r\n\r\n" + GOOD,
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 64\r\nTransfer-Encoding: chunked\r\n\r\n" + GOOD,
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/chat/completions HTTP/9.9\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
], ids=["garbage", "two-lengths", "length-and-chunked", "negative-length", "http-9.9"])
def test_malformed_http_gets_an_openai_shaped_error(served, up, data):
    with served.case():
        n = len(up.log)
        r = served.raw(data)
        assert r.st == "error", (r.status, r.headers, r.body[:200])
        if b"HTTP/9.9" in data:
            # mitmproxy forwards the odd version; the upstream's answer is no HTTP/1 mitmproxy reads: a clear 502
            assert_clear_error(r.status, r.headers, r.body, upstream_ok=True)
        else:
            assert_clear_error(r.status, r.headers, r.body)
            assert len(up.log) == n


@pytest.mark.parametrize("chunks", [b"zz\r\nbad\r\n0\r\n\r\n", b"5\r\nabcdefghij\r\n0\r\n\r\n"], ids=["bad-size", "bad-footer"])
def test_malformed_chunked_body_closes_the_connection(served, up, chunks):
    """A framing error inside the body: mitmproxy drops the connection (no response can be framed after it).

    Accepted behaviour, documented here: the client sees a closed connection (the SDK reports a
    connection error), nothing is forwarded, the log says why, and the proxy keeps serving.
    """
    with served.case():
        n = len(up.log)
        try:
            r = served.raw(raw_request(b"POST", CHAT.encode(), chunks, (b"Transfer-Encoding: chunked",), length=False))
        except ClosedEarly:
            pass
        else:  # an answer would have to be seedtape's clear refusal
            assert_clear_error(r.status, r.headers, r.body)
        assert len(up.log) == n


def test_huge_and_odd_headers(served):
    with served.case():
        # a 60 KB header (the fake upstream takes up to 64 KiB), a namespace of control characters, a header that is not UTF-8
        r = served.raw(raw_request(b"POST", CHAT.encode(), GOOD,
                                   (b"X-Big: " + b"a" * 60_000, b"seedtape-namespace: \x01\x7f ns",
                                    b"X-Weird: \xc3\x28")))
        assert_keyed(r)


# -- a hypothesis fuzz of bodies over HTTP ----------------------------------------------------

fuzz_json_objects = st.fixed_dictionaries(
    {"model": st.text(max_size=10), "messages": st.just([{"role": "user", "content": "fuzz"}])},
    optional={"stream": st.booleans(), "temperature": st.floats(0, 2),
              "x_extra": st.recursive(json_scalar, lambda k: st.lists(k, max_size=3) | st.dictionaries(any_text, k, max_size=3),
                                      max_leaves=10)},
).map(lambda d: json.dumps(d).encode())
fuzz_bodies = st.one_of(
    st.binary(max_size=300),
    fuzz_json_objects,
    json_value.map(lambda v: json.dumps(v).encode()).filter(lambda b: not b.startswith(b"{")),
    st.binary(max_size=40).map(lambda b: b'{"model": "m", "messages": [{"role": "user", "content": "' + b + b'"}]}'),
    # no "messages" token: the fake upstream itself cannot answer a body whose messages are not a list
    st.lists(st.sampled_from([t for t in TOKENS if t != b'"messages"']), max_size=30).map(b"".join),
)


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(content=fuzz_bodies, ctype=st.sampled_from(["application/json", "text/plain", ""]))
@example(content=b'{"model": "m", "messages": [{"role": "user", "content": "fuzz"}], "temperature": 1e400}',
         ctype="application/json")
def test_fuzz_bodies_over_http(served, up, content, ctype):
    with served.case():
        r = served.post(content, headers={"content-type": ctype} if ctype else {})
        if r.status == 200:
            assert r.st in ("recorded", "recording", "hit", "hit; converted-from=json", "hit; converted-from=sse"), r.headers
            assert HEX64.fullmatch(r.headers["seedtape-key"])
        else:
            assert_refused(r, 400)


# -- one proxy process stays the same, independent checks -------------------------------------


def test_non_utf8_path_bytes_are_served(up, tmp_path):
    """Raw non-UTF-8 bytes in the request target: keyed and answered (a proxy of its own, see the next test)."""
    p = ProxyProcess("--upstream", up.url, "--store", str(tmp_path / "store"))
    try:
        s = Served(p)
        r = s.raw(raw_request(b"POST", b"/v1/\xff\xfe/chat/completions", GOOD))
        assert_keyed(r)
        assert s.raw(raw_request(b"POST", b"/v1/\xff\xfe/chat/completions", GOOD)).st == "hit"
        assert_keyed(s.raw(raw_request(b"POST", CHAT.encode() + b"?\xff=\xfe", GOOD)))
    finally:
        p.stop()


def test_non_utf8_path_bytes_do_not_wedge_the_python_api_proxy(up, tmp_path):
    p = ProxyProcess("--upstream", up.url, "--store", str(tmp_path / "store"), "--upstream-timeout", "0")
    try:
        s = Served(p)
        s.raw(raw_request(b"POST", b"/v1/\xff/chat/completions", GOOD))
        # ~160 KiB of log lines: more than a pipe holds if nobody reads it
        for i in range(40):
            r = s.raw(raw_request(b"POST", b"/v1/" + b"q" * 4000 + b"/%d" % i, GOOD), timeout=3)
            assert r.st == "passthrough"
        s.settle()
    finally:
        p.stop(timeout=3)


@pytest.mark.parametrize("where", ["lone-surrogate-in-message", "non-utf8-namespace"])
def test_inspection_commands_print_any_recorded_text(tmp_path, where):
    path = tmp_path / "store"
    if where == "lone-surrogate-in-message":
        headers, content = {}, b'{"model": "m", "messages": [{"role": "user", "content": "lone \\ud800 surrogate"}]}'
    else:
        headers, content = {"seedtape-namespace": b"ns-\xff".decode("utf-8", "surrogateescape")}, GOOD
    with Store(path) as st_:
        deck = Tapedeck(st_, Settings())
        ex = deck.begin("POST", CHAT, headers, content)
        answer = {"id": "c", "object": "chat.completion", "model": "m",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}]}
        deck.finish(ex, 200, [("content-type", "application/json")], json.dumps(answer).encode())
        assert ex.status == "recorded"  # the proxy layer takes it: only the printing fails
    for args in (["ls"], ["ls", "--json"], ["show", ex.key], ["show", ex.key, "--json"]):
        out = run_cli(*args, store=path, timeout=60)
        assert out.returncode == 0, (args, out.stderr[-500:])
        text = out.stdout.decode("utf-8")  # valid UTF-8
        if "--json" in args:
            json.loads(text)


# =========================================================================================
# after the whole run (keep this test last in the file)
# =========================================================================================


def test_zz_store_holds_only_completions_and_streams(served, small, hostile_store, tmp_path):
    """Everything the hostile run recorded is a 2xx JSON completion or a complete SSE stream."""
    served.settle()
    small.settle()
    recorded = entries(hostile_store)
    assert recorded  # at least the good requests: the checks below really ran
    for e in recorded:
        assert e.endpoint in SUFFIX and 200 <= e.status < 300 and e.format in ("json", "sse"), e
        req = e.request
        assert req["method"] == "POST" and req["path"].endswith(SUFFIX[e.endpoint]), req["path"]
        assert isinstance(req["body"], dict) and "sha256" not in req["body"]  # a JSON object, never raw bytes
        assert hashlib.sha256(dumps_canonical(req)).hexdigest() == e.key  # the stored request is the keyed one
        assert all(is_safe(k) for k, _ in e.headers), e.headers
        if e.format == "json":
            body = json.loads(e.body)
            assert isinstance(body, dict) and "error" not in body
            assert body["object"] in ("chat.completion", "text_completion", "list") and ("choices" in body or "data" in body)
        else:
            p = SSEParser()
            events = p.feed(e.body) + p.close()
            assert not p.malformed and events and events[-1].data == DONE
            for ev in events[:-1]:
                chunk = json.loads(ev.data)
                assert isinstance(chunk, dict) and "choices" in chunk and "error" not in chunk
    # the CLI reads it all back: export writes every entry
    run_cli("export", tmp_path / "tapes", store=hostile_store, check=True)
    stats = run_cli("stats", "--json", store=hostile_store, check=True)
    assert json.loads(stats.stdout)["request_keys"] == len({e.key for e in recorded})
    listed = run_cli("ls", "--json", store=hostile_store, check=True)
    json.loads(listed.stdout.decode("utf-8"))  # valid UTF-8 and JSON, whatever the hostile requests held
