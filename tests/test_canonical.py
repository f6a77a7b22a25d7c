"""The request key rules of seedtape/proxy/canonical.py, one test per documented rule.

Most tests go through the raw-bytes path (Tapedeck.begin with a real Store), so the JSON
parsing in front of the canonical form is covered too, not only canonicalize().
"""

from __future__ import annotations

import hashlib
import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seedtape.proxy.deck import Tapedeck
from seedtape.proxy.key import canonical
from seedtape.proxy.key.canonical import (
    ALWAYS_IGNORED_FIELDS,
    DEFAULT_IGNORED_FIELDS,
    KEY_VERSION,
    canonicalize,
    normalize_path,
)
from seedtape.proxy.options import Settings
from seedtape.proxy.tapes.store import Store

CHAT = "/v1/chat/completions"
BASE = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}], "temperature": 0.5}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with Store(tmp_path_factory.mktemp("canonical") / "store") as st_:
        yield st_


@pytest.fixture(scope="module")
def deck(store):
    return Tapedeck(store, Settings())


def key_of(deck: Tapedeck, body: object, *, method: str = "POST", path: str = CHAT, headers: dict | None = None) -> str:
    """The request key Tapedeck.begin computes for these raw bytes (the body is sent as given if bytes)."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    ex = deck.begin(method, path, headers or {}, content)
    assert ex.canonical is not None, f"no key computed: status={ex.status} note={ex.note}"
    assert ex.status == "live", ex.status  # empty store, auto mode: a key was computed and nothing refused
    assert len(ex.key) == 64 and int(ex.key, 16) >= 0
    return ex.key


# -- rule 4: JSON spelling --------------------------------------------------------------


def test_key_order_and_whitespace_do_not_matter(deck):
    compact = json.dumps(BASE, separators=(",", ":"), sort_keys=True).encode()
    pretty = json.dumps(dict(reversed(list(BASE.items()))), indent=4).encode()
    by_hand = (
        b'{ "temperature" :\t0.5 ,\r\n  "messages": [ { "content" : "hello there", "role":"user" } ],\n'
        b'  "model":"gpt-4o-mini"\n}\n'
    )
    assert key_of(deck, compact) == key_of(deck, pretty) == key_of(deck, by_hand)


def test_escaped_and_literal_unicode_are_the_same_text(deck):
    body = {**BASE, "messages": [{"role": "user", "content": "grüße, 東京 🚀"}]}
    assert key_of(deck, json.dumps(body, ensure_ascii=True).encode()) == key_of(
        deck, json.dumps(body, ensure_ascii=False).encode()
    )


@pytest.mark.parametrize(
    "as_float, as_int",
    [
        (b'{"model": "m", "temperature": 1.0}', b'{"model": "m", "temperature": 1}'),
        (b'{"model": "m", "max_tokens": 100.0}', b'{"model": "m", "max_tokens": 100}'),
        (b'{"model": "m", "max_tokens": 1e2}', b'{"model": "m", "max_tokens": 100}'),
        (b'{"model": "m", "temperature": -0.0}', b'{"model": "m", "temperature": 0}'),
        # nested in objects and lists
        (b'{"model": "m", "logit_bias": {"50256": -100.0}}', b'{"model": "m", "logit_bias": {"50256": -100}}'),
        (
            b'{"model": "m", "tools": [{"type": "function", "function": {"name": "f", "parameters": '
            b'{"type": "object", "properties": {"n": {"type": "integer", "minimum": 2.0}}}}}]}',
            b'{"model": "m", "tools": [{"type": "function", "function": {"name": "f", "parameters": '
            b'{"type": "object", "properties": {"n": {"type": "integer", "minimum": 2}}}}}]}',
        ),
        (b'{"model": "m", "x": [[1.0, [2.0]], {"y": [3.0]}]}', b'{"model": "m", "x": [[1, [2]], {"y": [3]}]}'),
    ],
)
def test_integral_floats_count_as_ints(deck, as_float, as_int):
    assert key_of(deck, as_float) == key_of(deck, as_int)


def test_non_integral_floats_still_count(deck):
    assert key_of(deck, {"model": "m", "temperature": 1.5}) != key_of(deck, {"model": "m", "temperature": 1})
    assert key_of(deck, {"model": "m", "top_p": 0.1}) != key_of(deck, {"model": "m", "top_p": 0.10000001})


def test_booleans_are_not_numbers(deck):
    assert key_of(deck, {"model": "m", "logprobs": True}) != key_of(deck, {"model": "m", "logprobs": 1})
    assert key_of(deck, {"model": "m", "logprobs": False}) != key_of(deck, {"model": "m", "logprobs": 0})


@pytest.mark.parametrize("field, value", [("user", "alice"), ("metadata", {"run": "42"}), ("store", True)])
def test_default_ignore_list(deck, field, value):
    assert set(DEFAULT_IGNORED_FIELDS) == {"user", "metadata", "store", "prompt_cache_key", "safety_identifier"}
    assert key_of(deck, {**BASE, field: value}) == key_of(deck, BASE)
    assert key_of(deck, {**BASE, field: value}) == key_of(deck, {**BASE, field: "something else"})


def test_ignore_list_is_top_level_only(deck):
    nested = {**BASE, "messages": [{"role": "user", "content": "hello there", "user": "alice"}]}
    assert key_of(deck, nested) != key_of(deck, BASE)


def test_custom_ignore_list_replaces_the_default(store):
    custom = Tapedeck(store, Settings(ignored_fields=frozenset({"temperature", "user"})))
    # fields on the custom list do not count
    assert key_of(custom, {**BASE, "temperature": 0.1, "user": "a"}) == key_of(custom, {**BASE, "temperature": 0.9})
    # fields only on the default list count again
    assert key_of(custom, {**BASE, "metadata": {"a": "b"}}) != key_of(custom, BASE)
    assert key_of(custom, {**BASE, "store": True}) != key_of(custom, BASE)
    # and fields on neither list still count
    assert key_of(custom, {**BASE, "max_tokens": 5}) != key_of(custom, BASE)


def test_empty_ignore_list_makes_every_field_count(store):
    none_ignored = Tapedeck(store, Settings(ignored_fields=frozenset()))
    assert key_of(none_ignored, {**BASE, "user": "alice"}) != key_of(none_ignored, BASE)


@pytest.mark.parametrize("ignored", [frozenset(DEFAULT_IGNORED_FIELDS), frozenset()])
@pytest.mark.parametrize(
    "extra",
    [
        {"stream": False},
        {"stream": True},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"stream_options": {"include_usage": False}},
    ],
)
def test_stream_and_stream_options_never_count(store, ignored, extra):
    assert {"stream", "stream_options"} == ALWAYS_IGNORED_FIELDS
    d = Tapedeck(store, Settings(ignored_fields=ignored))
    assert key_of(d, {**BASE, **extra}) == key_of(d, BASE)


def test_non_json_body_enters_as_its_sha256():
    a = canonicalize("POST", CHAT, "", b"\x00\x01binary")
    assert a.body == {"sha256": hashlib.sha256(b"\x00\x01binary").hexdigest(), "size": 8}
    assert a.key == canonicalize("POST", CHAT, "", b"\x00\x01binary").key
    assert a.key != canonicalize("POST", CHAT, "", b"\x00\x01binarY").key
    assert canonicalize("POST", CHAT, "", b"").body is None


# -- rule 5: headers ----------------------------------------------------------------------


def test_namespace_enters_the_key(deck):
    plain = key_of(deck, BASE)
    a = key_of(deck, BASE, headers={"seedtape-namespace": "test_a"})
    b = key_of(deck, BASE, headers={"seedtape-namespace": "test_b"})
    assert len({plain, a, b}) == 3
    assert key_of(deck, BASE, headers={"seedtape-namespace": "test_a"}) == a


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer sk-one"},
        {"authorization": "Bearer sk-two"},
        {"api-key": "azure-key"},
        {"x-api-key": "k"},
        {"user-agent": "OpenAI/Python 1.57.0"},
        {"user-agent": "langchain/0.3"},
        {"x-stainless-retry-count": "3", "x-stainless-read-timeout": "600", "x-stainless-async": "async:asyncio"},
        {"x-stainless-os": "Linux", "x-stainless-runtime": "CPython", "x-stainless-lang": "python"},
        {"openai-organization": "org-1", "openai-project": "proj-1"},
        {"accept-encoding": "gzip, br", "accept-language": "de", "sec-fetch-mode": "cors"},
        {"content-type": "application/json; charset=utf-8", "x-request-id": "abc"},
    ],
)
def test_no_other_header_changes_the_key(deck, headers):
    assert key_of(deck, BASE, headers=headers) == key_of(deck, BASE)


def test_headers_never_reach_the_canonical_request(deck):
    secret = "sk-very-secret-123"
    ex = deck.begin("POST", CHAT, {"authorization": f"Bearer {secret}", "api-key": secret}, json.dumps(BASE).encode())
    assert secret not in ex.canonical.canonical_bytes().decode()


# -- rules 1-3: method, path, query -------------------------------------------------------


def test_method_is_upper_cased(deck):
    assert key_of(deck, BASE, method="post") == key_of(deck, BASE, method="POST") == key_of(deck, BASE, method="Post")
    assert canonicalize("get", "/v1/models", "", b"").method == "GET"


def test_repeated_slashes_collapse(deck):
    assert key_of(deck, BASE, path="/v1//chat///completions") == key_of(deck, BASE, path=CHAT)
    assert key_of(deck, BASE, path="//v1/chat/completions") == key_of(deck, BASE, path=CHAT)


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("/v1/chat/completions/", "/v1/chat/completions"),
        ("/v1//chat//completions//", "/v1/chat/completions"),
        ("//", "/"),
        ("/", "/"),
        ("", "/"),
        ("/v1/chat/completions?x=1", "/v1/chat/completions"),
    ],
)
def test_normalize_path(raw, normal):
    assert normalize_path(raw) == normal


def test_trailing_slash_is_dropped_in_the_canonical_request():
    assert canonicalize("POST", CHAT + "/", "", BASE).key == canonicalize("POST", CHAT, "", BASE).key


def test_trailing_slash_gets_the_same_key_through_the_deck(deck):
    assert key_of(deck, BASE, path=CHAT + "/") == key_of(deck, BASE, path=CHAT)


def test_query_order_does_not_matter(deck):
    k = key_of(deck, BASE, path=CHAT + "?api-version=2024-06-01&b=2")
    assert key_of(deck, BASE, path=CHAT + "?b=2&api-version=2024-06-01") == k
    # repeated names are sorted by value too
    assert key_of(deck, BASE, path=CHAT + "?a=2&a=1") == key_of(deck, BASE, path=CHAT + "?a=1&a=2")
    # but the query's content counts
    assert key_of(deck, BASE, path=CHAT + "?api-version=2024-07-01&b=2") != k
    assert key_of(deck, BASE, path=CHAT) != k


# -- the version and the exact canonical form ---------------------------------------------


def test_key_version_is_part_of_the_canonical_form(monkeypatch):
    req = canonicalize("POST", CHAT, "", BASE)
    assert req.to_json()["v"] == KEY_VERSION
    v1 = req.key
    assert req.key == hashlib.sha256(req.canonical_bytes()).hexdigest()
    monkeypatch.setattr(canonical, "KEY_VERSION", KEY_VERSION + 1)
    bumped = canonicalize("POST", CHAT, "", BASE)  # a fresh request: the key may be cached per instance
    assert bumped.to_json()["v"] == KEY_VERSION + 1
    assert bumped.key != v1


def test_canonical_bytes_are_pinned_for_version_1():
    """A change here changes every key: it needs a KEY_VERSION bump, not an edit of this test."""
    req = canonicalize(
        "post",
        "/v1//chat/completions/",
        "b=2&a=1",
        {"temperature": 1.0, "model": "m", "user": "u", "stream": False, "messages": [{"role": "user", "content": "é"}]},
        namespace="ns",
    )
    assert KEY_VERSION == 1
    assert req.canonical_bytes() == (
        '{"body":{"messages":[{"content":"é","role":"user"}],"model":"m","temperature":1},'
        '"method":"POST","namespace":"ns","path":"/v1/chat/completions","query":[["a","1"],["b","2"]],"v":1}'
    ).encode()


# -- any significant change changes the key -----------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o"},
        {"messages": [{"role": "user", "content": "hello there!"}]},
        {"messages": [{"role": "system", "content": "hello there"}]},
        {"messages": [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"}]},
        {"temperature": 0.6},
        {"temperature": None},
        {"max_tokens": 10},
        {"n": 2},
        {"seed": 5},
        {"response_format": {"type": "json_object"}},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"some_new_field": "x"},
    ],
)
def test_any_significant_field_change_changes_the_key(deck, change):
    assert key_of(deck, {**BASE, **change}) != key_of(deck, BASE)


def test_removing_a_significant_field_changes_the_key(deck):
    assert key_of(deck, {k: v for k, v in BASE.items() if k != "temperature"}) != key_of(deck, BASE)


def test_endpoint_path_changes_the_key(deck):
    assert key_of(deck, {"model": "m", "prompt": "hi"}, path="/v1/completions") != key_of(
        deck, {"model": "m", "prompt": "hi"}, path=CHAT
    )
    assert key_of(deck, BASE, path="/openai/v1/chat/completions") != key_of(deck, BASE, path=CHAT)


# -- properties -----------------------------------------------------------------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=25,
)
bodies = st.builds(
    lambda model, extra: {"model": model, **extra},
    st.text(min_size=1, max_size=20),
    st.dictionaries(st.text(max_size=10), json_value, max_size=6),
)
SEPARATORS = [(",", ":"), (", ", ": "), (" ,", " : "), (",\n", ":\t"), (" , ", ":  ")]


def respell(value: object, rng: random.Random) -> object:
    """The same JSON meaning, with shuffled object keys and integral numbers randomly as floats."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: respell(v, rng) for k, v in items}
    if isinstance(value, list):
        return [respell(v, rng) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and rng.random() < 0.5:
        return float(value)
    return value


def dumps_randomly(value: object, rng: random.Random) -> bytes:
    text = json.dumps(
        respell(value, rng),
        indent=rng.choice([None, 0, 1, 2, 4, "\t", " \r\n"[rng.randrange(3)]]),
        separators=rng.choice(SEPARATORS),
        ensure_ascii=rng.random() < 0.5,
    )
    return (rng.choice(["", " ", "\n", "\t\r\n"]) + text + rng.choice(["", " ", "\n"])).encode()


def leaf_paths(value: object, path: tuple = ()) -> list[tuple]:
    if isinstance(value, dict) and value:
        return [p for k, v in value.items() for p in leaf_paths(v, (*path, k))]
    if isinstance(value, list) and value:
        return [p for i, v in enumerate(value) for p in leaf_paths(v, (*path, i))]
    return [path]


def changed_leaf(leaf: object) -> object:
    """A value that can never mean the same as ``leaf``."""
    if isinstance(leaf, str):
        return leaf + "!"
    return f"changed-{leaf!r}"


def with_leaf(value: object, path: tuple, new: object) -> object:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: with_leaf(value[head], rest, new)}
    out = list(value)
    out[head] = with_leaf(out[head], rest, new)
    return out


NEVER_COUNT = set(DEFAULT_IGNORED_FIELDS) | ALWAYS_IGNORED_FIELDS
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(body=bodies, rng=st.randoms(use_true_random=False))
def test_property_key_invariant_under_spelling(deck, body, rng):
    canonical_spelling = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert key_of(deck, dumps_randomly(body, rng)) == key_of(deck, canonical_spelling)


@PROPERTY_SETTINGS
@given(body=bodies, data=st.data())
def test_property_significant_change_changes_key(deck, body, data):
    paths = [p for p in leaf_paths(body) if p and p[0] not in NEVER_COUNT]
    path = data.draw(st.sampled_from(paths), label="path")
    leaf = body
    for step in path:
        leaf = leaf[step]
    changed = with_leaf(body, path, changed_leaf(leaf))
    assert key_of(deck, changed) != key_of(deck, body)


@PROPERTY_SETTINGS
@given(body=bodies, field=st.sampled_from(sorted(NEVER_COUNT)), value=json_value)
def test_property_ignored_fields_never_change_key(deck, body, field, value):
    without = {k: v for k, v in body.items() if k not in NEVER_COUNT}
    assert key_of(deck, {**without, field: value}) == key_of(deck, without)


def test_ignored_query_parameters_leave_the_key_by_name():
    body = {"model": "m", "messages": []}
    a = canonical.canonicalize("POST", "/openai/deployments/d/chat/completions", "api-version=1&x=2", body,
                               ignored_query={"api-version"})
    b = canonical.canonicalize("POST", "/openai/deployments/d/chat/completions", "x=2&api-version=9", body,
                               ignored_query={"api-version"})
    plain = canonical.canonicalize("POST", "/openai/deployments/d/chat/completions", "x=2", body)
    assert a.key == b.key == plain.key
    assert a.query == (("x", "2"),)
    assert canonical.canonicalize("POST", "/p", "api-version=1", body).key != plain.key  # not ignored by default


def test_a_miss_names_query_differences_by_parameter():
    from seedtape.proxy.explain import jsondiff, nearest

    old = {"method": "POST", "path": "/p", "query": [["api-version", "2024-10-21"], ["tag", "a"], ["tag", "b"]],
           "body": {"model": "m"}}
    new = {**old, "query": [["api-version", "2025-04-01-preview"], ["tag", "a"], ["tag", "b"]]}
    [change] = jsondiff.diff(nearest.comparable(old), nearest.comparable(new))
    assert str(change) == "query.api-version: 2024-10-21 != 2025-04-01-preview"
    assert nearest.comparable(old)["query"]["tag"] == ["a", "b"]
    assert nearest.comparable({**old, "query": [["lonely"], 7]})["query"] == {}  # malformed pairs are skipped
