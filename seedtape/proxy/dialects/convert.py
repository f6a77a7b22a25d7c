"""Cross-format replay: a completion as stream chunks, and stream chunks as a completion.

A recording made without ``stream`` can answer a streaming request and the
other way round. The rule for both directions: what the SDK assembles from the
converted reply equals what it gets from the original (content, refusal, tool
calls and their arguments, finish_reason, logprobs, usage).
"""

from __future__ import annotations

import json

from seedtape.proxy.streams.sse import DONE, Event, render

_META = ("id", "created", "model", "system_fingerprint", "service_tier")


def _base(body: dict, obj: str) -> dict:
    return {"object": obj} | {k: body[k] for k in _META if k in body}


# -- completion -> chunks ------------------------------------------------------


def chat_to_chunks(body: dict, include_usage: bool) -> list[dict]:
    base = _base(body, "chat.completion.chunk")
    out = []

    def chunk(i: int, delta: dict, finish: str | None = None, logprobs: object = None) -> None:
        out.append(base | {"choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})

    for c in body.get("choices") or []:
        i, msg = c.get("index", 0), c.get("message") or {}
        content = msg.get("content")
        chunk(i, {"role": msg.get("role", "assistant"), "content": "" if content is not None else None, "refusal": None})
        lp = c.get("logprobs") or {}
        if content:
            chunk(i, {"content": content}, logprobs={"content": lp.get("content"), "refusal": None} if lp.get("content") else None)
        if msg.get("refusal"):
            chunk(i, {"refusal": msg["refusal"]}, logprobs={"content": None, "refusal": lp.get("refusal")} if lp.get("refusal") else None)
        for j, tc in enumerate(msg.get("tool_calls") or []):
            fn = tc.get("function") or {}
            chunk(i, {"tool_calls": [{"index": j, "id": tc.get("id"), "type": tc.get("type", "function"),
                                      "function": {"name": fn.get("name", ""), "arguments": ""}}]})
            if fn.get("arguments"):
                chunk(i, {"tool_calls": [{"index": j, "function": {"arguments": fn["arguments"]}}]})
        chunk(i, {}, finish=c.get("finish_reason"))
    if include_usage:
        out.append(base | {"choices": [], "usage": body.get("usage")})
    return out


def text_to_chunks(body: dict, include_usage: bool) -> list[dict]:
    """Legacy /completions."""
    base = _base(body, "text_completion")
    out = []
    for c in body.get("choices") or []:
        i = c.get("index", 0)
        out.append(base | {"choices": [{"index": i, "text": c.get("text", ""), "logprobs": c.get("logprobs"), "finish_reason": None}]})
        out.append(base | {"choices": [{"index": i, "text": "", "logprobs": None, "finish_reason": c.get("finish_reason")}]})
    if include_usage:
        out.append(base | {"choices": [], "usage": body.get("usage")})
    return out


# -- chunks -> completion --------------------------------------------------------


def _join(a: str | None, b: str | None) -> str | None:
    return b if a is None else a + (b or "")


def _assemble(chunks: list[dict], obj: str, new_choice, merge) -> dict:
    """Fold stream chunks into one completion: metadata from the first chunk that has it, usage from
    the usage chunk, and each choice built by ``merge(choice_so_far, chunk_choice)``."""
    out: dict = {"object": obj}
    choices: dict[int, dict] = {}
    usage = None
    for ch in chunks:
        for k in _META:
            if k in ch and k not in out:
                out[k] = ch[k]
        usage = ch.get("usage") or usage
        for c in ch.get("choices") or []:
            i = c.get("index", 0)
            merge(choices.setdefault(i, new_choice(i)), c)
    out["choices"] = [choices[i] for i in sorted(choices)]
    out["usage"] = usage
    return out


def _merge_chat(cur: dict, c: dict) -> None:
    d, msg = c.get("delta") or {}, cur["message"]
    if d.get("role"):
        msg["role"] = d["role"]
    if d.get("content") is not None:
        msg["content"] = _join(msg["content"], d["content"])
    if d.get("refusal") is not None:
        msg["refusal"] = _join(msg["refusal"], d["refusal"])
    for tc in d.get("tool_calls") or []:
        calls = msg.setdefault("tool_calls", [])
        j = tc.get("index", len(calls))
        while len(calls) <= j:
            calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        call, fn = calls[j], tc.get("function") or {}
        call["id"] = tc.get("id") or call["id"]
        call["type"] = tc.get("type") or call["type"]
        call["function"]["name"] += fn.get("name") or ""
        call["function"]["arguments"] += fn.get("arguments") or ""
    if c.get("logprobs"):
        lp = cur["logprobs"] or {"content": None, "refusal": None}
        for k in ("content", "refusal"):
            if c["logprobs"].get(k) is not None:
                lp[k] = (lp[k] or []) + c["logprobs"][k]
        cur["logprobs"] = lp
    if c.get("finish_reason"):
        cur["finish_reason"] = c["finish_reason"]


def _merge_text(cur: dict, c: dict) -> None:
    cur["text"] += c.get("text") or ""
    if c.get("logprobs"):
        lp = cur["logprobs"] or {}
        for k, v in c["logprobs"].items():
            lp[k] = (lp.get(k) or []) + (v or []) if isinstance(v, list) or v is None else v
        cur["logprobs"] = lp
    if c.get("finish_reason"):
        cur["finish_reason"] = c["finish_reason"]


def chunks_to_chat(chunks: list[dict]) -> dict:
    return _assemble(chunks, "chat.completion", lambda i: {
        "index": i, "message": {"role": "assistant", "content": None, "refusal": None}, "logprobs": None,
        "finish_reason": None}, _merge_chat)


def chunks_to_text(chunks: list[dict]) -> dict:
    """Legacy /completions."""
    return _assemble(chunks, "text_completion",
                     lambda i: {"index": i, "text": "", "logprobs": None, "finish_reason": None}, _merge_text)


# -- entry points ----------------------------------------------------------------


def to_stream(endpoint: str, body: dict, include_usage: bool) -> bytes:
    """A JSON completion rendered as the event stream the API would have sent."""
    chunks = chat_to_chunks(body, include_usage) if endpoint == "chat.completions" else text_to_chunks(body, include_usage)
    events = [Event(json.dumps(c, separators=(",", ":"), ensure_ascii=False)) for c in chunks]
    return render(events + [Event(DONE)])


def to_completion(endpoint: str, chunks: list[dict]) -> bytes:
    """Stream chunks assembled into the JSON completion the API would have sent."""
    body = chunks_to_chat(chunks) if endpoint == "chat.completions" else chunks_to_text(chunks)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def restream(chunks: list[dict], include_usage: bool) -> bytes:
    """Re-render recorded chunks, with or without the usage chunk the request asked for."""
    kept = [c for c in chunks if include_usage or not (c.get("usage") and not c.get("choices"))]
    return render([Event(json.dumps(c, separators=(",", ":"), ensure_ascii=False)) for c in kept] + [Event(DONE)])
