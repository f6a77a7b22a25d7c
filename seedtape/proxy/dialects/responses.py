"""The Responses API (``POST /v1/responses``): input items in, output items out.

No ``seed`` (the API refuses unknown parameters). No ``system_fingerprint``: the
resolved model snapshot it names stands in (``model:gpt-4o-mini-2024-07-18``).
Streams are typed events (``event: response.output_text.delta`` with a JSON
``data`` holding ``type`` and ``sequence_number``) ended by a terminal event that
carries the whole response: ``response.completed`` or ``response.incomplete`` make
a stream recordable; ``response.failed`` and ``error`` never do. There is no
``data: [DONE]``. Folding a stream is taking its terminal response; unfolding a
response emits the event sequence the API sends, so the SDK's
``responses.create(stream=True)``, ``responses.stream()`` and ``responses.create()``
see the same output text, function calls, reasoning summaries, refusal, status and usage.
"""

from __future__ import annotations

import copy
import json

from seedtape.proxy.dialects.base import Dialect, StreamEvent
from seedtape.proxy.streams.sse import DONE, Event, parse, render

TERMINAL = frozenset({"response.completed", "response.incomplete"})  # a finished answer: recordable
FAILED = frozenset({"response.failed", "error"})  # never recorded


class Responses(Dialect):
    name = "responses"
    suffix = "/responses"
    takes_seed = False
    can_stream = True
    output_group = "output"
    request_text_field = "input"

    # -- answers ----------------------------------------------------------------------------

    def answer_problem(self, doc: object) -> str:
        if not isinstance(doc, dict) or doc.get("object") != "response" or doc.get("error"):
            return "upstream body is not a response"
        if doc.get("status") in ("failed", "cancelled"):
            return f"the response {doc['status']}"
        return ""

    def outputs(self, doc: dict) -> list[dict]:
        """One comparable output for the whole response: its text, refusal, function calls, reasoning, status."""
        text, refusal, calls, reasoning = [], [], [], []
        for item in doc.get("output") or []:
            kind = item.get("type")
            if kind == "message":
                for part in item.get("content") or []:
                    if part.get("type") == "output_text":
                        text.append(part.get("text") or "")
                    elif part.get("type") == "refusal":
                        refusal.append(part.get("refusal") or "")
            elif kind == "function_call":
                calls.append([item.get("name"), item.get("arguments")])
            elif kind == "reasoning":
                reasoning += [s.get("text") or "" for s in item.get("summary") or []]
        status = doc.get("status")
        reason = (doc.get("incomplete_details") or {}).get("reason") if status == "incomplete" else None
        return [
            {
                "index": 0,
                "content": "".join(text) if text else None,
                "refusal": "".join(refusal) if refusal else None,
                "tool_calls": calls,
                "reasoning": "\n".join(reasoning) if reasoning else None,
                "finish_reason": f"{status}: {reason}" if reason else status,
            }
        ]

    # -- streams ----------------------------------------------------------------------------

    def read_event(self, ev: Event) -> tuple[str, dict | str | None]:
        try:
            event = json.loads(ev.data)
        except ValueError:
            return StreamEvent.PROBLEM, "an event is not JSON"
        if not isinstance(event, dict):
            return StreamEvent.PROBLEM, "an event is not a JSON object"
        kind = event.get("type") or ev.event
        if kind in FAILED:
            return StreamEvent.PROBLEM, f"the stream carried {kind}"
        if kind in TERMINAL:
            return StreamEvent.END, event
        return StreamEvent.CHUNK, event

    def stream_problem(self, chunks: list[dict], ended: bool, closed: bool) -> str:
        if not ended:
            return "the stream ended without response.completed or response.incomplete"
        return ""

    def chunks(self, body: bytes) -> list[dict]:
        return [json.loads(e.data) for e in parse(body) if e.data != DONE]

    def render(self, chunks: list[dict]) -> bytes:
        return render([Event(json.dumps(c, separators=(",", ":"), ensure_ascii=False), str(c.get("type", ""))) for c in chunks])

    def fold(self, chunks: list[dict]) -> dict:
        final = next((c.get("response") for c in reversed(chunks) if c.get("type") in TERMINAL), None)
        if not isinstance(final, dict):
            raise ValueError("the stream has no terminal response event")
        return final

    def stream_fingerprint(self, chunks: list[dict]) -> str:
        responses = [c.get("response") for c in chunks if isinstance(c.get("response"), dict)]
        return self.fingerprint(responses[-1]) if responses else super().stream_fingerprint([])

    def stream_model(self, chunks: list[dict]) -> str:
        return next((m for c in reversed(chunks) if (m := self.model(c.get("response")))), "")

    def unfold(self, doc: dict, include_usage: bool) -> list[dict]:
        """The events the API streams for ``doc``: created, in_progress, each item's events, the terminal one."""
        events: list[dict] = []

        def emit(kind: str, **fields: object) -> None:
            events.append({"type": kind, "sequence_number": len(events), **fields})

        start = copy.deepcopy(doc) | {"status": "in_progress", "output": [], "usage": None}
        start.pop("incomplete_details", None)
        emit("response.created", response=start)
        emit("response.in_progress", response=start)
        for i, item in enumerate(doc.get("output") or []):
            _item_events(emit, i, item)
        emit("response.incomplete" if doc.get("status") == "incomplete" else "response.completed", response=doc)
        return events


def _item_events(emit, i: int, item: dict) -> None:
    """The events of one output item, from output_item.added to output_item.done."""
    kind, item_id = item.get("type"), item.get("id", "")
    added = copy.deepcopy(item) | {"status": "in_progress"}
    if kind == "message":
        added["content"] = []
    elif kind == "function_call":
        added["arguments"] = ""
    elif kind == "reasoning":
        added["summary"] = []
    emit("response.output_item.added", output_index=i, item=added)
    at = {"item_id": item_id, "output_index": i}
    if kind == "message":
        for j, part in enumerate(item.get("content") or []):
            ptype = part.get("type")
            empty = (
                {"type": ptype, "text": "", "annotations": [], "logprobs": []}
                if ptype == "output_text"
                else {
                    "type": ptype,
                    "refusal": "",
                }
            )
            emit("response.content_part.added", **at, content_index=j, part=empty)
            if ptype == "output_text":
                text = part.get("text") or ""
                logprobs = part.get("logprobs") or []
                emit("response.output_text.delta", **at, content_index=j, delta=text, logprobs=logprobs)
                emit("response.output_text.done", **at, content_index=j, text=text, logprobs=logprobs)
            elif ptype == "refusal":
                refusal = part.get("refusal") or ""
                emit("response.refusal.delta", **at, content_index=j, delta=refusal)
                emit("response.refusal.done", **at, content_index=j, refusal=refusal)
            emit("response.content_part.done", **at, content_index=j, part=part)
    elif kind == "function_call":
        args = item.get("arguments") or ""
        emit("response.function_call_arguments.delta", **at, delta=args)
        emit("response.function_call_arguments.done", **at, arguments=args)
    elif kind == "reasoning":
        for j, summary in enumerate(item.get("summary") or []):
            text = summary.get("text") or ""
            emit("response.reasoning_summary_part.added", **at, summary_index=j, part={"type": "summary_text", "text": ""})
            emit("response.reasoning_summary_text.delta", **at, summary_index=j, delta=text)
            emit("response.reasoning_summary_text.done", **at, summary_index=j, text=text)
            emit("response.reasoning_summary_part.done", **at, summary_index=j, part=summary)
    emit("response.output_item.done", output_index=i, item=item)
