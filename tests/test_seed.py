"""Seed policy: every seedable request gets a seed, the client's own is never overridden."""

from __future__ import annotations

import json

import pytest

from seedtape.proxy.deck import Tapedeck
from seedtape.proxy.key.seed import DEFAULT_SEED, SeedPolicy
from seedtape.proxy.options import Settings
from seedtape.proxy.tapes.store import Store

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "seed me"}]}
COMPLETION_BODY = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi"}
EMBEDDING_BODY = {"model": "text-embedding-3-small", "input": "embed me"}


# -- SeedPolicy.apply ------------------------------------------------------------------------


def test_default_seed_is_1234():
    assert DEFAULT_SEED == 1234
    assert SeedPolicy().seed == 1234 and SeedPolicy().inject is True


def test_injects_when_absent_without_mutating_the_input():
    original = {"model": "m", "messages": []}
    body, header = SeedPolicy().apply(original)
    assert body == {"model": "m", "messages": [], "seed": 1234}
    assert header == "1234; injected"
    assert original == {"model": "m", "messages": []}


def test_injects_a_configured_seed():
    body, header = SeedPolicy(seed=42).apply({"model": "m"})
    assert body["seed"] == 42 and header == "42; injected"


@pytest.mark.parametrize("seed", [5, 0, -1, 2**31, 1234])
def test_client_seed_is_kept(seed):
    original = {"model": "m", "seed": seed}
    body, header = SeedPolicy(seed=99).apply(original)
    assert body is original
    assert body["seed"] == seed
    assert header == f"{seed}; client"


def test_client_seed_zero_is_not_mistaken_for_absent():
    body, header = SeedPolicy().apply({"model": "m", "seed": 0})
    assert body["seed"] == 0 and header == "0; client"


def test_client_seed_header_is_json_so_it_has_no_control_characters():
    _, header = SeedPolicy().apply({"seed": "a\r\nb"})
    assert header == '"a\\r\\nb"; client'
    assert "\n" not in header and "\r" not in header


def test_seed_none_is_treated_as_absent():
    body, header = SeedPolicy().apply({"model": "m", "seed": None})
    assert body == {"model": "m", "seed": 1234}
    assert header == "1234; injected"


def test_injection_off():
    original = {"model": "m"}
    body, header = SeedPolicy(inject=False).apply(original)
    assert body == {"model": "m"} and "seed" not in body
    assert header == "none"
    # a client seed is still reported as the client's
    assert SeedPolicy(inject=False).apply({"seed": 7}) == ({"seed": 7}, "7; client")
    assert SeedPolicy(inject=False).apply({"seed": None})[1] == "none"


# -- through Tapedeck.begin ----------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as st:
        yield st


def begin(store: Store, path: str, body: dict, policy: SeedPolicy | None = None):
    deck = Tapedeck(store, Settings(seed=policy or SeedPolicy()))
    ex = deck.begin("POST", path, {}, json.dumps(body).encode())
    assert ex.reply is None and ex.status == "live", ex.note
    return ex


@pytest.mark.parametrize("path, body", [(CHAT, CHAT_BODY), (COMPLETIONS, COMPLETION_BODY)])
def test_chat_and_legacy_completions_are_injected(store, path, body):
    ex = begin(store, path, body)
    assert ex.seed == "1234; injected"
    assert ex.forward_body is not None
    assert json.loads(ex.forward_body) == {**body, "seed": 1234}
    assert ex.canonical.body["seed"] == 1234
    assert ("seedtape-seed", "1234; injected") in ex.headers()


def test_embeddings_are_not_injected(store):
    ex = begin(store, EMBEDDINGS, EMBEDDING_BODY)
    assert ex.seed == "none"
    assert ex.forward_body is None  # forwarded exactly as the client sent it
    assert "seed" not in ex.canonical.body


def test_client_seed_is_forwarded_unchanged(store):
    ex = begin(store, CHAT, {**CHAT_BODY, "seed": 5})
    assert ex.seed == "5; client"
    assert ex.forward_body is None


def test_seed_none_in_a_request_is_replaced(store):
    ex = begin(store, CHAT, {**CHAT_BODY, "seed": None})
    assert ex.seed == "1234; injected"
    assert json.loads(ex.forward_body)["seed"] == 1234


def test_injection_off_forwards_untouched(store):
    ex = begin(store, CHAT, CHAT_BODY, SeedPolicy(inject=False))
    assert ex.seed == "none" and ex.forward_body is None
    assert "seed" not in ex.canonical.body


def test_key_is_computed_on_the_injected_body(store):
    injected = begin(store, CHAT, CHAT_BODY)
    explicit = begin(store, CHAT, {**CHAT_BODY, "seed": DEFAULT_SEED})
    assert injected.key == explicit.key
    assert explicit.seed == "1234; client"
    # a different seed is a different request
    assert begin(store, CHAT, {**CHAT_BODY, "seed": 5}).key != injected.key
    # a different default seed gives the key of a request that carried that seed
    assert begin(store, CHAT, CHAT_BODY, SeedPolicy(seed=99)).key == begin(store, CHAT, {**CHAT_BODY, "seed": 99}).key
    assert begin(store, CHAT, CHAT_BODY, SeedPolicy(seed=99)).key != injected.key


def test_legacy_completions_key_is_computed_on_the_injected_body(store):
    assert begin(store, COMPLETIONS, COMPLETION_BODY).key == begin(store, COMPLETIONS, {**COMPLETION_BODY, "seed": 1234}).key


def test_without_injection_a_seedless_request_differs_from_a_seeded_one(store):
    off = SeedPolicy(inject=False)
    assert begin(store, CHAT, CHAT_BODY, off).key != begin(store, CHAT, {**CHAT_BODY, "seed": 1234}, off).key


def test_without_injection_seed_null_and_absent_share_a_key(store):
    off = SeedPolicy(inject=False)
    assert begin(store, CHAT, {**CHAT_BODY, "seed": None}, off).key == begin(store, CHAT, CHAT_BODY, off).key
