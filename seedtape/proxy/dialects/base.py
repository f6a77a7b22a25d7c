"""What an API surface means to seedtape, in one object per API.

A dialect answers every question the rest of the core would otherwise branch on:
which requests it covers, whether a seed applies, how its stream is framed and
what ends it, how a stream folds into one JSON answer and back, where the
outputs and the fingerprint are. Adding an API is adding a module with a
subclass and its tests; nothing else in the core names an endpoint.
"""

from __future__ import annotations

import json
import re
from typing import ClassVar

from seedtape.proxy.streams.sse import DONE, Event, parse, render

NO_FINGERPRINT = "fp_none"  # stable stand-in when an answer names neither a fingerprint nor a model
MODEL_FINGERPRINT = "model:"  # prefix of the stand-in made of the resolved model an answer names
_VISIBLE = re.compile(r"^[\x21-\x7e]{1,190}$")


class StreamEvent:
    """How a dialect reads one event of a live stream: a chunk, its end, or a problem."""

    END = "end"
    CHUNK = "chunk"
    PROBLEM = "problem"


class Dialect:
    name: ClassVar[str]
    suffix: ClassVar[str]  # matched on the path's tail: a base URL with or without /v1 (or a gateway prefix) works
    takes_seed: ClassVar[bool]  # the API accepts `seed`, so seedtape may inject one
    can_stream: ClassVar[bool]
    output_group: ClassVar[str] = "choices"  # where outputs sit in an answer (diff paths name it)
    request_text_field: ClassVar[str] = ""  # the request field that identifies this API (explain's guess)

    def matches(self, method: str, path: str) -> bool:
        return method.upper() == "POST" and path.endswith(self.suffix)

    def claims(self, body: dict) -> bool:
        """Whether a bare request body looks like this API's (`seedtape explain` without --path)."""
        return self.request_text_field in body

    # -- answers ----------------------------------------------------------------------------

    def answer_problem(self, doc: object) -> str:
        """Why a parsed JSON answer is not one to record (empty: it is)."""
        if not isinstance(doc, dict) or "error" in doc:
            return "upstream body is not a JSON completion"
        return ""

    def fingerprint(self, doc: object) -> str:
        """The fingerprint an answer names: its ``system_fingerprint``, else ``model:`` and the resolved
        model it names (the Responses API and many servers send no fingerprint: a new snapshot behind
        an alias is then what tells drift), else the stand-in."""
        return declared_fingerprint(doc) or model_fingerprint(doc) or NO_FINGERPRINT

    def model(self, doc: object) -> str:
        return str(doc.get("model") or "") if isinstance(doc, dict) else ""

    def outputs(self, doc: dict) -> list[dict]:
        """The comparable output of one answer, one dict per choice (what divergence compares)."""
        raise NotImplementedError

    def outputs_of(self, fmt: str, body: bytes) -> list[dict]:
        """Outputs of a recorded or live body, JSON or a stream (folded first)."""
        doc = self.fold(self.chunks(body)) if fmt == "sse" else json.loads(body)
        return self.outputs(doc)

    # -- streams ----------------------------------------------------------------------------

    def read_event(self, ev: Event) -> tuple[str, dict | str | None]:
        """Classify one event of a live stream (StreamEvent.END / CHUNK with the chunk / PROBLEM with why)."""
        raise NotImplementedError(f"{self.name} answers are never streams")

    def stream_problem(self, chunks: list[dict], ended: bool, closed: bool) -> str:
        """Why a taped stream is not a complete answer (empty: record it). ``ended``: the dialect's end
        event arrived; ``closed``: the upstream closed the body cleanly."""
        raise NotImplementedError(f"{self.name} answers are never streams")

    def chunks(self, body: bytes) -> list[dict]:
        """The JSON chunks of a recorded stream, without its end marker."""
        raise NotImplementedError(f"{self.name} answers are never streams")

    def fold(self, chunks: list[dict]) -> dict:
        """Stream chunks assembled into the JSON answer the API would have sent."""
        raise NotImplementedError(f"{self.name} answers are never streams")

    def unfold(self, doc: dict, include_usage: bool) -> list[dict]:
        """A JSON answer as the chunks the API would have streamed."""
        raise NotImplementedError(f"{self.name} answers are never streams")

    def render(self, chunks: list[dict]) -> bytes:
        """Chunks as the bytes of an event stream, with its end."""
        raise NotImplementedError(f"{self.name} answers are never streams")

    def without_usage(self, chunks: list[dict]) -> list[dict]:
        """The chunks a client that did not ask for usage would get."""
        return chunks

    def stream_fingerprint(self, chunks: list[dict]) -> str:
        declared = next((fp for c in chunks if (fp := declared_fingerprint(c))), "")
        return declared or next((fp for c in chunks if (fp := model_fingerprint(c))), NO_FINGERPRINT)

    def stream_model(self, chunks: list[dict]) -> str:
        return next((m for c in chunks if (m := self.model(c))), "")

    # -- cross-format replay -----------------------------------------------------------------

    def to_stream(self, body: bytes, include_usage: bool) -> bytes:
        """A recorded JSON answer as the stream the API would have sent."""
        return self.render(self.unfold(json.loads(body), include_usage))

    def to_json(self, body: bytes) -> bytes:
        """A recorded stream as the JSON answer the API would have sent."""
        return json.dumps(self.fold(self.chunks(body)), separators=(",", ":"), ensure_ascii=False).encode()

    def restream(self, body: bytes, include_usage: bool) -> bytes:
        """A recorded stream re-rendered for a client that asked for (or without) usage."""
        chunks = self.chunks(body)
        return self.render(chunks if include_usage else self.without_usage(chunks))


def declared_fingerprint(doc: object) -> str:
    fp = doc.get("system_fingerprint") if isinstance(doc, dict) else None
    return fp if isinstance(fp, str) else ""


def model_fingerprint(doc: object) -> str:
    """``model:<resolved model>``, or "" when the answer names no model fit for a fingerprint."""
    model = doc.get("model") if isinstance(doc, dict) else None
    return MODEL_FINGERPRINT + model if isinstance(model, str) and _VISIBLE.match(model) else ""


# -- OpenAI's chunk streams (chat and legacy completions) -------------------------------------------

_META = ("id", "created", "model", "system_fingerprint", "service_tier")


class ChunkStreamDialect(Dialect):
    """``data: {chunk}`` events ended by ``data: [DONE]``, chunks holding ``choices`` deltas, a usage chunk last."""

    chunk_object: ClassVar[str]
    answer_object: ClassVar[str]

    def read_event(self, ev: Event) -> tuple[str, dict | str | None]:
        if ev.data == DONE:
            return StreamEvent.END, None
        try:
            chunk = json.loads(ev.data)
        except ValueError:
            return StreamEvent.PROBLEM, "an event is not JSON"
        if not isinstance(chunk, dict) or "error" in chunk:
            return StreamEvent.PROBLEM, "the stream carried an error event"
        return StreamEvent.CHUNK, chunk

    def stream_problem(self, chunks: list[dict], ended: bool, closed: bool) -> str:
        if not (ended or closed):
            return "the stream did not finish"
        if not chunks:
            return "the stream carried no events"
        if not any(c.get("finish_reason") for ch in chunks for c in ch.get("choices") or []):
            return "the stream ended without a finish_reason"
        return ""

    def chunks(self, body: bytes) -> list[dict]:
        return [json.loads(e.data) for e in parse(body) if e.data != DONE]

    def render(self, chunks: list[dict]) -> bytes:
        return render([Event(json.dumps(c, separators=(",", ":"), ensure_ascii=False)) for c in chunks] + [Event(DONE)])

    def without_usage(self, chunks: list[dict]) -> list[dict]:
        return [c for c in chunks if not (c.get("usage") and not c.get("choices"))]

    def base(self, doc: dict) -> dict:
        """The metadata every unfolded chunk repeats."""
        return {"object": self.chunk_object} | {k: doc[k] for k in _META if k in doc}

    def usage_chunk(self, doc: dict) -> dict:
        return self.base(doc) | {"choices": [], "usage": doc.get("usage")}

    def new_choice(self, index: int) -> dict:
        raise NotImplementedError

    def merge(self, choice: dict, delta_choice: dict) -> None:
        """Fold one chunk's choice into the choice assembled so far."""
        raise NotImplementedError

    def fold(self, chunks: list[dict]) -> dict:
        """Metadata from the first chunk that has it, usage from the usage chunk, each choice merged."""
        out: dict = {"object": self.answer_object}
        choices: dict[int, dict] = {}
        usage = None
        for ch in chunks:
            for k in _META:
                if k in ch and k not in out:
                    out[k] = ch[k]
            usage = ch.get("usage") or usage
            for c in ch.get("choices") or []:
                i = c.get("index", 0)
                self.merge(choices.setdefault(i, self.new_choice(i)), c)
        out["choices"] = [choices[i] for i in sorted(choices)]
        out["usage"] = usage
        return out


def join(a: str | None, b: str | None) -> str | None:
    """Concatenate stream text where None means "nothing yet"."""
    return b if a is None else a + (b or "")
