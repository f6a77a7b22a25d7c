"""Tapedeck's decisions (serve / forward / refuse / record), without mitmproxy."""

from __future__ import annotations

import json

import pytest

from seedtape.proxy.deck import Tapedeck
from seedtape.proxy.dialects import NO_FINGERPRINT
from seedtape.proxy.modes import Mode
from seedtape.proxy.options import Settings
from seedtape.proxy.tapes.store import Store

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is 2+2?"}]}
CONTENT = json.dumps(BODY).encode()
SAFE = {"content-type", "x-request-id", "openai-processing-ms", "openai-version", "x-ratelimit-remaining-requests"}
SECRET_VALUES = ("org-secret", "cookie-secret", "sk-secret", "proj-secret")


def completion(text: str = "4", fingerprint: str | None = "fp_test") -> bytes:
    out = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    if fingerprint is not None:
        out["system_fingerprint"] = fingerprint
    return json.dumps(out).encode()


def upstream_headers(content_type: str = "application/json") -> list[tuple[str, str]]:
    return [
        ("Content-Type", content_type),
        ("Content-Length", "123"),
        ("x-request-id", "req_abc"),
        ("openai-processing-ms", "42"),
        ("openai-version", "2020-10-01"),
        ("openai-organization", "org-secret"),
        ("openai-project", "proj-secret"),
        ("x-ratelimit-remaining-requests", "9999"),
        ("set-cookie", "__cf_bm=cookie-secret; path=/"),
        ("authorization", "Bearer sk-secret"),
        ("cf-ray", "abc-XYZ"),
    ]


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as st:
        yield st


def deck(store: Store, mode: Mode = Mode.AUTO, **kw) -> Tapedeck:
    return Tapedeck(store, Settings(mode=mode, **kw))


def record(store: Store, content: bytes = CONTENT, answer: bytes | None = None, path: str = CHAT):
    d = deck(store, Mode.RECORD)
    ex = d.begin("POST", path, {}, content)
    assert ex.status == "live"
    return d.finish(ex, 200, upstream_headers(), answer or completion())


def error_of(ex) -> dict:
    assert ex.reply is not None
    return json.loads(ex.reply.body)["error"]


def reply_headers(ex) -> dict[str, str]:
    return dict(ex.reply.headers)


# -- auto: miss, record, hit ---------------------------------------------------------------------


def test_auto_miss_goes_live(store):
    ex = deck(store).begin("POST", CHAT, {"authorization": "Bearer sk-secret"}, CONTENT)
    assert ex.status == "live"
    assert ex.reply is None  # forwarded
    assert json.loads(ex.forward_body) == {**BODY, "seed": 1234}
    assert dict(ex.headers()) == {"seedtape-status": "live", "seedtape-key": ex.key, "seedtape-seed": "1234; injected"}


def test_auto_records_a_2xx_json_answer_with_only_safe_headers(store):
    answer = completion("four")
    ex = record(store, answer=answer)
    assert ex.status == "recorded"
    assert ex.fingerprint == "fp_test"
    assert ("seedtape-fingerprint", "fp_test") in ex.headers()
    entry = store.get(ex.key)
    assert entry is not None
    assert entry.body == answer  # exact bytes
    assert entry.status == 200
    assert entry.fingerprint == "fp_test"
    assert entry.endpoint == "chat.completions"
    assert entry.format == "json"
    assert entry.model == "gpt-4o-mini-2024-07-18"  # the model that answered
    assert entry.request == ex.canonical.to_json()
    assert entry.request["body"]["seed"] == 1234
    names = [k for k, _ in entry.headers]
    assert set(names) == SAFE
    assert all(k == k.lower() for k in names)
    for forbidden in ("set-cookie", "openai-organization", "openai-project", "authorization", "content-length", "cf-ray"):
        assert forbidden not in names
    assert not any(s in json.dumps(entry.headers) for s in SECRET_VALUES)
    assert not any(s.encode() in entry.encode() for s in SECRET_VALUES)


def test_auto_serves_a_recording_without_the_upstream(store):
    answer = completion("four")
    rec = record(store, answer=answer)
    ex = deck(store).begin("POST", CHAT, {}, CONTENT)
    assert ex.status == "hit"
    assert ex.key == rec.key
    assert ex.reply is not None
    assert ex.reply.status == 200
    assert ex.reply.body == answer
    h = reply_headers(ex)
    assert h["x-request-id"] == "req_abc" and h["openai-version"] == "2020-10-01"
    assert h["seedtape-status"] == "hit" and h["seedtape-key"] == ex.key and h["seedtape-fingerprint"] == "fp_test"
    assert "set-cookie" not in h and "openai-organization" not in h


def test_missing_fingerprint_gets_the_resolved_model_as_its_stand_in(store):
    ex = record(store, answer=completion(fingerprint=None))
    assert ex.status == "recorded" and ex.fingerprint == "model:gpt-4o-mini-2024-07-18"
    assert store.get(ex.key).fingerprint == "model:gpt-4o-mini-2024-07-18"
    answer = json.loads(completion(fingerprint=None))
    del answer["model"]
    ex = record(store, CONTENT.replace(b"2+2", b"3+3"), answer=json.dumps(answer).encode())
    assert ex.fingerprint == NO_FINGERPRINT == "fp_none"  # neither a fingerprint nor a model


def test_model_falls_back_to_the_request(store):
    answer = json.dumps({"object": "chat.completion", "choices": [], "system_fingerprint": "fp"}).encode()
    ex = record(store, answer=answer)
    assert store.get(ex.key).model == "gpt-4o-mini"


def test_embeddings_are_recorded(store):
    content = json.dumps({"model": "text-embedding-3-small", "input": "x"}).encode()
    answer = json.dumps({"object": "list", "data": [{"embedding": [0.1]}], "model": "text-embedding-3-small"}).encode()
    ex = record(store, content, answer, path="/v1/embeddings")
    assert ex.status == "recorded"
    e = store.get(ex.key)
    assert e.endpoint == "embeddings" and e.fingerprint == "model:text-embedding-3-small" and e.body == answer


def test_namespace_is_stored(store):
    d = deck(store)
    ex = d.begin("POST", CHAT, {"seedtape-namespace": "suite_a"}, CONTENT)
    d.finish(ex, 200, upstream_headers(), completion())
    assert store.get(ex.key).namespace == "suite_a"
    assert store.get(ex.key).request["namespace"] == "suite_a"


# -- replay ----------------------------------------------------------------------------------------


def test_replay_hit(store):
    answer = completion("four")
    record(store, answer=answer)
    ex = deck(store, Mode.REPLAY).begin("POST", CHAT, {}, CONTENT)
    assert ex.status == "hit"
    assert ex.reply.status == 200 and ex.reply.body == answer


def test_replay_miss_is_a_clear_openai_shaped_404(store):
    d = deck(store, Mode.REPLAY)
    ex = d.begin("POST", CHAT, {}, CONTENT)
    assert ex.status == "miss"
    assert ex.reply.status == 404  # not retried by the SDKs
    h = reply_headers(ex)
    assert h["x-should-retry"] == "false"
    assert h["content-type"] == "application/json"
    assert h["seedtape-status"] == "miss"
    assert h["seedtape-error"] == "replay_miss"
    assert h["seedtape-key"] == ex.key and len(ex.key) == 64
    err = error_of(ex)
    assert set(err) >= {"message", "type", "code"}
    assert err["code"] == "replay_miss" and err["type"] == "seedtape_error"
    msg = err["message"]
    assert ex.key in msg  # names the key ...
    assert CHAT in msg
    assert "--mode auto" in msg and "--mode record" in msg  # ... and how to record it
    assert store.keys() == []
    # finishing a refused exchange records nothing
    assert d.finish(ex, 200, upstream_headers(), completion()).status == "miss"
    assert store.keys() == []


def test_replay_miss_under_a_pinned_fingerprint_names_the_recorded_ones(store):
    record(store, answer=completion(fingerprint="fp_a"))
    record(store, answer=completion(fingerprint="fp_b"))
    ex = deck(store, Mode.REPLAY, fingerprint="fp_c").begin("POST", CHAT, {}, CONTENT)
    assert ex.status == "miss" and ex.reply.status == 404
    msg = error_of(ex)["message"]
    assert "fp_a" in msg and "fp_b" in msg and "fp_c" in msg
    # pinned to a recorded one, it serves that one
    ex = deck(store, Mode.REPLAY, fingerprint="fp_a").begin("POST", CHAT, {}, CONTENT)
    assert ex.status == "hit" and ex.fingerprint == "fp_a"


@pytest.mark.parametrize(
    "method, path",
    [("GET", "/v1/models"), ("POST", "/v1/images/generations"), ("GET", CHAT), ("DELETE", "/v1/files/x")],
)
def test_replay_mode_refuses_unknown_endpoints(store, method, path):
    ex = deck(store, Mode.REPLAY).begin(method, path + "?limit=1", {}, b"")
    assert ex.reply is not None and ex.reply.status == 400
    assert reply_headers(ex)["x-should-retry"] == "false"
    err = error_of(ex)
    assert err["code"] == "not_replayable"
    assert path in err["message"] and "--mode auto" in err["message"]
    assert "?limit" not in err["message"]


@pytest.mark.parametrize("method, path", [("GET", "/v1/models"), ("POST", "/v1/images/generations")])
def test_auto_mode_passes_unknown_endpoints_through(store, method, path):
    d = deck(store)
    ex = d.begin(method, path, {}, b'{"prompt": "x"}')
    assert ex.status == "passthrough" and ex.reply is None and ex.canonical is None and ex.forward_body is None
    assert d.finish(ex, 200, upstream_headers(), b'{"data": []}').status == "passthrough"
    assert store.keys() == []


def test_replay_mode_never_sends_a_stream_live(store):
    ex = deck(store, Mode.REPLAY).begin("POST", CHAT, {}, json.dumps({**BODY, "stream": True}).encode())
    assert ex.status != "live"
    assert ex.reply is not None and 400 <= ex.reply.status < 500
    assert reply_headers(ex)["x-should-retry"] == "false"


# -- what is not recorded ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503, 302])
def test_non_2xx_answers_are_not_recorded(store, status):
    d = deck(store)
    ex = d.begin("POST", CHAT, {}, CONTENT)
    body = json.dumps({"error": {"message": "nope", "type": "server_error", "code": None}}).encode()
    d.finish(ex, status, upstream_headers(), body)
    assert ex.status == "unrecorded"
    assert str(status) in ex.note
    assert store.keys() == []
    assert deck(store).begin("POST", CHAT, {}, CONTENT).status == "live"  # still a miss


@pytest.mark.parametrize(
    "content",
    [b"<html>bad gateway</html>", b"", b"[1, 2]", b'"text"', b"{truncated", b'{"error": {"message": "x"}}', b"\xff\xfe"],
)
def test_non_json_answers_are_not_recorded(store, content):
    d = deck(store)
    ex = d.begin("POST", CHAT, {}, CONTENT)
    d.finish(ex, 200, upstream_headers("text/html"), content)
    assert ex.status == "unrecorded"
    assert store.keys() == []


# -- modes -------------------------------------------------------------------------------------------


def test_passthrough_mode_does_nothing(store):
    record(store)  # even a recorded request is not served
    d = deck(store, Mode.PASSTHROUGH)
    ex = d.begin("POST", CHAT, {"seedtape-namespace": "x"}, CONTENT)
    assert ex.status == "passthrough"
    assert ex.reply is None and ex.forward_body is None and ex.canonical is None and ex.seed == "none"
    assert ex.headers() == [("seedtape-status", "passthrough")]
    d.finish(ex, 200, upstream_headers(), completion("other"))
    assert ex.status == "passthrough"
    assert store.stats()["entries"] == 1
    # even garbage is forwarded untouched in passthrough
    assert d.begin("POST", CHAT, {}, b"{not json").reply is None


def test_record_mode_always_goes_live_and_re_records(store):
    record(store)
    d = deck(store, Mode.RECORD)
    ex = d.begin("POST", CHAT, {}, CONTENT)
    assert ex.status == "live" and ex.reply is None
    d.finish(ex, 200, upstream_headers(), completion("new"))
    assert ex.status == "recorded"
    e = store.get(ex.key)
    assert e.times_recorded == 2 and json.loads(e.body)["choices"][0]["message"]["content"] == "new"


# -- bad request bodies --------------------------------------------------------------------------------

BAD_BODIES = {
    "invalid": b"{not json",
    "empty": b"",
    "array": b"[1, 2]",
    "string": b'"hello"',
    "number": b"42",
    "null": b"null",
    "nan": b'{"model": "m", "temperature": NaN}',
    "infinity": b'{"model": "m", "temperature": Infinity}',
    "minus-infinity": b'{"model": "m", "temperature": -Infinity}',
    "nested-100000": b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "nested-objects-100000": b'{"a": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"}",
    "not-utf8": b'{"model": "m", "messages": [{"role": "user", "content": "caf\xe9"}]}',
    "not-utf8-start": b"\xff\xff\xff",
    "trailing-garbage": b'{"model": "m"} {"model": "n"}',
}


@pytest.mark.parametrize("mode", [Mode.AUTO, Mode.REPLAY, Mode.RECORD])
@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_json_bodies_get_a_400_and_never_raise(store, mode, name):
    ex = deck(store, mode).begin("POST", CHAT, {}, BAD_BODIES[name])
    assert ex.status == "error"
    assert ex.reply is not None and ex.reply.status == 400
    assert ex.forward_body is None
    h = reply_headers(ex)
    assert h["x-should-retry"] == "false" and h["content-type"] == "application/json"
    err = error_of(ex)
    assert err["code"] == "invalid_request" and "seedtape" in err["message"]
    assert store.keys() == []


def test_bad_body_messages_say_why(store):
    d = deck(store)
    assert "not valid JSON" in error_of(d.begin("POST", CHAT, {}, b"{not json"))["message"]
    assert "must be an object" in error_of(d.begin("POST", CHAT, {}, b"[1]"))["message"]
    assert "NaN" in error_of(d.begin("POST", CHAT, {}, b'{"t": NaN}'))["message"]
    assert "nested too deeply" in error_of(d.begin("POST", CHAT, {}, BAD_BODIES["nested-100000"]))["message"]
    assert "UTF-8" in error_of(d.begin("POST", CHAT, {}, BAD_BODIES["not-utf8"]))["message"]


def test_embeddings_bad_bodies_are_refused_too(store):
    ex = deck(store).begin("POST", "/v1/embeddings", {}, b"[1]")
    assert ex.reply.status == 400


def test_nesting_near_the_recursion_limit_never_raises(store):
    d = deck(store)
    for depth in (1000, 1100, 1200, 1300, 1400):
        content = b'{"a": ' + b"[" * depth + b"]" * depth + b"}"
        ex = d.begin("POST", CHAT, {}, content)  # must not raise: refuse (400) or forward
        assert ex.status in ("error", "live"), depth


@pytest.mark.parametrize("path", [CHAT, "/v1/completions"])
def test_lone_surrogate_escape_never_raises(store, path):
    """"\\ud800" is valid JSON; re-encoding the seeded body must not raise UnicodeEncodeError."""
    content = b'{"model": "m", "prompt": "x", "messages": [{"role": "user", "content": "\\ud800"}]}'
    ex = deck(store).begin("POST", path, {}, content)
    assert ex.status in ("error", "live")
    if ex.status == "live":
        assert ex.forward_body is not None and json.loads(ex.forward_body)["messages"][0]["content"] == "\ud800"


def test_an_accepted_request_can_be_recorded(store):
    d = deck(store)
    ex = d.begin("POST", "/v1/embeddings", {}, b'{"model": "m", "input": "\\ud800"}')
    if ex.status == "live":  # refusing it up front with a 400 is fine too
        d.finish(ex, 200, upstream_headers(), b'{"object": "list", "data": [], "model": "m"}')
        assert ex.status == "recorded"
        assert store.get(ex.key).request == ex.canonical.to_json()
    else:
        assert ex.reply.status == 400


@pytest.mark.parametrize(
    "content",
    [
        json.dumps({"model": "m", "input": "x"}).encode("utf-16"),
        json.dumps({"model": "m", "input": "x"}).encode("utf-32"),
        b'{"model": "m", "input": "\xed\xa0\x80"}',  # a UTF-16 surrogate encoded as UTF-8 bytes: not UTF-8
    ],
    ids=["utf-16", "utf-32", "cesu-8-surrogate"],
)
def test_non_utf8_encodings_are_refused(store, content):
    ex = deck(store).begin("POST", "/v1/embeddings", {}, content)
    assert ex.reply is not None and ex.reply.status == 400
    assert error_of(ex)["code"] == "invalid_request"


@pytest.mark.parametrize("mode", [Mode.AUTO, Mode.RECORD, Mode.AUDIT, Mode.PASSTHROUGH])
@pytest.mark.parametrize(("header", "value"), [("authorization", "Bearer sk-seedtape-replay-no-key-needed"),
                                               ("api-key", "sk-seedtape-replay-no-key-needed")])
def test_the_placeholder_key_is_never_forwarded(store, mode, header, value):
    for path in (CHAT, "/v1/models"):
        ex = deck(store, mode).begin("POST", path, {header: value}, CONTENT)
        assert not ex.goes_live and ex.reply is not None
        assert ex.reply.status == 401 and b"set OPENAI_API_KEY" in ex.reply.body
    real = deck(store, mode).begin("POST", CHAT, {header: "sk-real"}, CONTENT)
    assert real.goes_live


def test_the_placeholder_key_replays(store):
    record(store)
    ex = deck(store, Mode.REPLAY).begin("POST", CHAT, {"authorization": "Bearer sk-seedtape-replay-no-key-needed"}, CONTENT)
    assert ex.status.is_hit


def test_two_recordings_of_one_key_at_once_that_disagree_are_a_divergence_event(store):
    import asyncio

    a, b = deck(store), deck(store)  # two proxies on one store
    ex_a = a.begin("POST", CHAT, {}, CONTENT)
    ex_b = b.begin("POST", CHAT, {}, CONTENT)
    assert ex_a.status == ex_b.status == "live"  # both missed: neither had a recording to compare with
    a.finish(ex_a, 200, upstream_headers(), completion("four"))
    assert ex_a.divergence is None
    b.finish(ex_b, 200, upstream_headers(), completion("4, surely"))
    assert ex_b.status == "recorded" and ex_b.divergence is not None
    assert ex_b.divergence.verdict == "nondeterminism"  # same fingerprint, another answer
    event = asyncio.run(b.settle(ex_b, {}))
    assert event is not None and event["verdict"] == "nondeterminism"
    assert store.events()[-1]["live_output"] != store.events()[-1]["recorded_output"]
    assert store.get(ex_b.key).times_recorded == 2


def test_the_same_answer_recorded_twice_is_no_event(store):
    import asyncio

    a, b = deck(store), deck(store)
    ex_a, ex_b = a.begin("POST", CHAT, {}, CONTENT), b.begin("POST", CHAT, {}, CONTENT)
    a.finish(ex_a, 200, upstream_headers(), completion("four"))
    b.finish(ex_b, 200, upstream_headers(), completion("four"))
    assert ex_b.divergence is not None and ex_b.divergence.verdict == "match"
    assert asyncio.run(b.settle(ex_b, {})) is None and store.events() == []
