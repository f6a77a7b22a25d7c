"""The Responses API's server-side state, answered from recordings.

A recorded response is stored on the API's side under its id: clients retrieve it
(``GET /v1/responses/{id}``), list its input (``.../input_items``), delete it
(``DELETE``) or cancel it (``POST .../cancel``), and a ``background: true`` call is
polled until done. Offline, these act on the recording of that id and are answered
as the API answers them; this module reads the routes and builds those answers.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_ROUTE = re.compile(r"/responses/([A-Za-z0-9_.:-]{1,200})(/input_items|/cancel)?$")
_ACTIONS = {("GET", ""): "retrieve", ("GET", "/input_items"): "input_items", ("DELETE", ""): "delete"}
_ACTIONS[("POST", "/cancel")] = "cancel"
TERMINAL_STATUS = frozenset({"completed", "incomplete", "failed", "cancelled"})


@dataclass(frozen=True)
class StateRequest:
    action: str  # retrieve, input_items, delete, cancel
    response_id: str


def route(method: str, path: str) -> StateRequest | None:
    """The state request a path names (``path`` normalized, without its query), or None."""
    m = _ROUTE.search(path)
    if m is None:
        return None
    action = _ACTIONS.get((method.upper(), m.group(2) or ""))
    return StateRequest(action, m.group(1)) if action else None


def answer(req: StateRequest, response: dict, request: dict, query: dict[str, str]) -> tuple[int, dict]:
    """(status, body) the API gives for ``req`` on the recorded ``response`` made by ``request`` (its canonical form)."""
    if req.action == "retrieve":
        return 200, response
    if req.action == "delete":
        return 200, {"id": req.response_id, "object": "response.deleted", "deleted": True}
    if req.action == "cancel":
        if not response.get("background"):
            return 400, _error("Only responses created with background=true can be cancelled.", "response_id")
        if response.get("status") in TERMINAL_STATUS:
            return 200, response
        return 200, response | {"status": "cancelled"}
    body = request.get("body")
    items = input_items(body if isinstance(body, dict) else {})
    if query.get("order", "desc") != "asc":
        items.reverse()
    return 200, {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": False,
    }


def input_items(body: dict) -> list[dict]:
    """The request's input as the API lists it: a string is one user message; every item gets an id."""
    raw = body.get("input")
    items = [{"type": "message", "role": "user", "content": raw}] if isinstance(raw, str) else raw
    out = []
    for n, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, dict):
            continue
        item = dict(item)
        if item.get("type", "message") == "message":
            item.setdefault("type", "message")
            if isinstance(item.get("content"), str):
                item["content"] = [{"type": "input_text", "text": item["content"]}]
            item.setdefault("status", "completed")
        if "id" not in item:  # stable across runs: derived from the item and its place
            digest = hashlib.sha256(f"{n}:{sorted(item.items())!r}".encode()).hexdigest()[:24]
            item["id"] = f"{'msg' if item['type'] == 'message' else 'item'}_{digest}"
        out.append(item)
    return out


def not_found(response_id: str) -> dict:
    return _error(f"No response with id '{response_id}' found.", None)


def _error(message: str, param: str | None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
