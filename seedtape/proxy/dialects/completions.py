"""Legacy completions (``POST /v1/completions``): a prompt in, choices of text out.

Streams are chunk streams of ``text`` pieces ended by ``data: [DONE]``; the
fingerprint is ``system_fingerprint`` (where a server sends one).
"""

from __future__ import annotations

from seedtape.proxy.dialects.base import ChunkStreamDialect


class Completions(ChunkStreamDialect):
    name = "completions"
    suffix = "/completions"
    takes_seed = True
    can_stream = True
    request_text_field = "prompt"
    chunk_object = "text_completion"
    answer_object = "text_completion"

    def outputs(self, doc: dict) -> list[dict]:
        return [
            {
                "index": c.get("index", 0),
                "content": c.get("text"),
                "refusal": None,
                "tool_calls": [],
                "finish_reason": c.get("finish_reason"),
            }
            for c in sorted(doc.get("choices") or [], key=lambda c: c.get("index", 0))
        ]

    def unfold(self, doc: dict, include_usage: bool) -> list[dict]:
        base = self.base(doc)
        out = []
        for c in doc.get("choices") or []:
            i = c.get("index", 0)
            out.append(
                base
                | {"choices": [{"index": i, "text": c.get("text", ""), "logprobs": c.get("logprobs"), "finish_reason": None}]}
            )
            out.append(base | {"choices": [{"index": i, "text": "", "logprobs": None, "finish_reason": c.get("finish_reason")}]})
        if include_usage:
            out.append(self.usage_chunk(doc))
        return out

    def new_choice(self, index: int) -> dict:
        return {"index": index, "text": "", "logprobs": None, "finish_reason": None}

    def merge(self, cur: dict, c: dict) -> None:
        cur["text"] += c.get("text") or ""
        if c.get("logprobs"):
            lp = cur["logprobs"] or {}
            for k, v in c["logprobs"].items():
                lp[k] = (lp.get(k) or []) + (v or []) if isinstance(v, list) or v is None else v
            cur["logprobs"] = lp
        if c.get("finish_reason"):
            cur["finish_reason"] = c["finish_reason"]
