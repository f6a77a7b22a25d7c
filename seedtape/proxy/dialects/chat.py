"""Chat completions (``POST /v1/chat/completions``): messages in, choices of messages out.

Streams are chunk streams ended by ``data: [DONE]``; a complete one has a
finish_reason. The fingerprint is ``system_fingerprint``. Folding and unfolding
keep everything the SDK exposes: content, refusal, tool calls with fragmented
arguments, logprobs, finish_reason, usage.
"""

from __future__ import annotations

from seedtape.proxy.dialects.base import ChunkStreamDialect, join


class Chat(ChunkStreamDialect):
    name = "chat.completions"
    suffix = "/chat/completions"
    takes_seed = True
    can_stream = True
    request_text_field = "messages"
    chunk_object = "chat.completion.chunk"
    answer_object = "chat.completion"

    def outputs(self, doc: dict) -> list[dict]:
        out = []
        for c in sorted(doc.get("choices") or [], key=lambda c: c.get("index", 0)):
            msg = c.get("message") or {}
            out.append(
                {
                    "index": c.get("index", 0),
                    "content": msg.get("content"),
                    "refusal": msg.get("refusal"),
                    "tool_calls": [
                        [(t.get("function") or {}).get("name"), (t.get("function") or {}).get("arguments")]
                        for t in msg.get("tool_calls") or []
                    ],
                    "finish_reason": c.get("finish_reason"),
                }
            )
        return out

    def unfold(self, doc: dict, include_usage: bool) -> list[dict]:
        base = self.base(doc)
        out = []

        def chunk(i: int, delta: dict, finish: str | None = None, logprobs: object = None) -> None:
            out.append(base | {"choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})

        for c in doc.get("choices") or []:
            i, msg = c.get("index", 0), c.get("message") or {}
            content = msg.get("content")
            chunk(i, {"role": msg.get("role", "assistant"), "content": "" if content is not None else None, "refusal": None})
            lp = c.get("logprobs") or {}
            if content:
                chunk(
                    i,
                    {"content": content},
                    logprobs={"content": lp.get("content"), "refusal": None} if lp.get("content") else None,
                )
            if msg.get("refusal"):
                chunk(
                    i,
                    {"refusal": msg["refusal"]},
                    logprobs={"content": None, "refusal": lp.get("refusal")} if lp.get("refusal") else None,
                )
            for j, tc in enumerate(msg.get("tool_calls") or []):
                fn = tc.get("function") or {}
                chunk(
                    i,
                    {
                        "tool_calls": [
                            {
                                "index": j,
                                "id": tc.get("id"),
                                "type": tc.get("type", "function"),
                                "function": {"name": fn.get("name", ""), "arguments": ""},
                            }
                        ]
                    },
                )
                if fn.get("arguments"):
                    chunk(i, {"tool_calls": [{"index": j, "function": {"arguments": fn["arguments"]}}]})
            chunk(i, {}, finish=c.get("finish_reason"))
        if include_usage:
            out.append(self.usage_chunk(doc))
        return out

    def new_choice(self, index: int) -> dict:
        return {
            "index": index,
            "message": {"role": "assistant", "content": None, "refusal": None},
            "logprobs": None,
            "finish_reason": None,
        }

    def merge(self, cur: dict, c: dict) -> None:
        d, msg = c.get("delta") or {}, cur["message"]
        if d.get("role"):
            msg["role"] = d["role"]
        if d.get("content") is not None:
            msg["content"] = join(msg["content"], d["content"])
        if d.get("refusal") is not None:
            msg["refusal"] = join(msg["refusal"], d["refusal"])
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
