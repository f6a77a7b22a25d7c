"""The Responses API's server-side state, answered from recordings (issue 14, point 2), unit by unit."""

from __future__ import annotations

import json

import pytest
from test_responses_dialect import response

from seedtape.proxy.deck import Tapedeck
from seedtape.proxy.dialects import RESPONSES, responsestate
from seedtape.proxy.dialects.responsestate import StateRequest
from seedtape.proxy.modes import Mode
from seedtape.proxy.options import Settings
from seedtape.proxy.tapes.store import Store

CREATE = json.dumps({"model": "gpt-4o-mini", "input": "Say hello"}).encode()
JSON = [("content-type", "application/json")]


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as st:
        yield st


def deck(store: Store, mode: Mode = Mode.AUTO) -> Tapedeck:
    return Tapedeck(store, Settings(mode=mode))


def record(store: Store, doc: dict, content: bytes = CREATE, stream: bool = False):
    d = deck(store)
    if stream:
        content = json.dumps(json.loads(content) | {"stream": True}).encode()
    ex = d.begin("POST", "/v1/responses", {}, content)
    assert ex.status == "live"
    if stream:
        d.start_stream(ex)
        d.feed_stream(ex, RESPONSES.render(RESPONSES.unfold(doc, False)), 200, [("content-type", "text/event-stream")])
    else:
        d.finish(ex, 200, JSON, json.dumps(doc).encode())
    assert ex.status == "recorded", ex.note
    return ex


def ask(store: Store, method: str, path: str, mode: Mode = Mode.REPLAY):
    ex = deck(store, mode).begin(method, path, {}, b"")
    return ex, (json.loads(ex.reply.body) if ex.reply else None)


@pytest.mark.parametrize(("method", "path", "action"), [
    ("GET", "/v1/responses/resp_1", "retrieve"), ("GET", "/v1/responses/resp_1/input_items", "input_items"),
    ("DELETE", "/v1/responses/resp_1", "delete"), ("POST", "/v1/responses/resp_1/cancel", "cancel"),
    ("GET", "/openai/v1/responses/resp_1", "retrieve"),
])
def test_routes(method, path, action):
    assert responsestate.route(method, path) == StateRequest(action, "resp_1")


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/responses"), ("PUT", "/v1/responses/resp_1"),
                                              ("GET", "/v1/responses/resp_1/other"), ("POST", "/v1/responses/resp_1")])
def test_not_routes(method, path):
    assert responsestate.route(method, path) is None


@pytest.mark.parametrize("stream", [False, True])
def test_a_recorded_response_is_retrieved_listed_deleted_offline(store, stream):
    record(store, response(), stream=stream)
    ex, body = ask(store, "GET", "/v1/responses/resp_0123")
    assert ex.status == "hit" and ex.reply.status == 200 and body == response()
    ex, body = ask(store, "GET", "/v1/responses/resp_0123/input_items")
    assert body["object"] == "list" and body["has_more"] is False
    [item] = body["data"]
    assert item["role"] == "user" and item["content"] == [{"type": "input_text", "text": "Say hello"}]
    assert item["id"].startswith("msg_") and body["first_id"] == body["last_id"] == item["id"]
    _, again = ask(store, "GET", "/v1/responses/resp_0123/input_items")
    assert again == body  # ids are stable
    ex, body = ask(store, "DELETE", "/v1/responses/resp_0123")
    assert body == {"id": "resp_0123", "object": "response.deleted", "deleted": True}
    ex, body = ask(store, "POST", "/v1/responses/resp_0123/cancel")
    assert ex.reply.status == 400 and "background=true" in body["error"]["message"]


def test_input_items_keep_their_order_and_ids():
    items = [{"role": "user", "content": "one"}, {"type": "function_call_output", "call_id": "c1", "output": "42"},
             {"id": "msg_kept", "type": "message", "role": "user", "content": "two"}]
    req = {"body": {"input": items}}
    _, asc = responsestate.answer(StateRequest("input_items", "r"), {}, req, {"order": "asc"})
    _, desc = responsestate.answer(StateRequest("input_items", "r"), {}, req, {})
    assert [i.get("call_id") or i["content"][0]["text"] for i in asc["data"]] == ["one", "c1", "two"]
    assert desc["data"] == list(reversed(asc["data"]))  # the API lists newest first unless order=asc
    assert asc["data"][2]["id"] == "msg_kept" and asc["data"][1]["id"].startswith("item_")


def test_an_unknown_id_is_a_clear_replay_miss(store):
    record(store, response())
    ex, body = ask(store, "GET", "/v1/responses/resp_nope")
    assert ex.status == "miss" and ex.reply.status == 404
    assert "no recorded response has the id resp_nope (retrieve)" in body["error"]["message"]


def test_in_auto_mode_an_unknown_id_goes_to_the_upstream(store):
    ex, _ = ask(store, "GET", "/v1/responses/resp_nope", Mode.AUTO)
    assert ex.goes_live


def test_a_background_call_replays_as_its_final_polled_state(store):
    queued = response("queued", output=[], usage=None, background=True)
    record(store, queued)
    d = deck(store)
    poll = d.begin("GET", "/v1/responses/resp_0123", {}, b"")
    assert poll.goes_live and poll.status == "live"  # still queued: polled live, in auto mode
    d.finish(poll, 200, JSON, json.dumps(response("in_progress", output=[], background=True)).encode())
    poll = d.begin("GET", "/v1/responses/resp_0123", {}, b"")
    assert poll.goes_live
    final = response(background=True)
    d.finish(poll, 200, JSON, json.dumps(final).encode())
    assert poll.status == "recorded"
    # Offline: the create call answers with the final state, and so does a poll.
    replay = deck(store, Mode.REPLAY)
    create = replay.begin("POST", "/v1/responses", {}, CREATE)
    assert create.status == "hit" and json.loads(create.reply.body)["status"] == "completed"
    _, polled = ask(store, "GET", "/v1/responses/resp_0123")
    assert polled == final
    _, cancelled = ask(store, "POST", "/v1/responses/resp_0123/cancel")
    assert cancelled["status"] == "completed"  # already finished: cancel changes nothing


def test_responses_take_no_seed(store):
    ex = deck(store).begin("POST", "/v1/responses", {}, CREATE)
    assert ex.forward_body is None and ex.seed == "none"
    assert "seed" not in ex.canonical.body
