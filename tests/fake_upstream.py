"""A local OpenAI-compatible fake upstream for tests and benchmarks.

Its output is a pure function of the request (messages or prompt, model, seed,
temperature), so a replay can be compared with a live call. It logs every
request it sees, its ``system_fingerprint`` can be changed at run time, and
it can be told to fail. Run standalone: ``python tests/fake_upstream.py --port 0``.

Besides chat/completions/embeddings it speaks the Responses API (``POST .../responses``, streamed
or not, with ``GET``/``DELETE .../responses/{id}``, ``.../input_items`` and ``.../cancel``), keeps the
responses it created (``previous_response_id`` chains, ``background`` polling), and acts like an
agent when function tools are sent: a function call first, then an answer quoting the tool output.
Azure paths (``/openai/deployments/{d}/...``, ``/openai/v1/...``) work by suffix matching.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import re
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu"]


def deterministic_text(request: dict, choice: int = 0, words: int = 12) -> str:
    basis = json.dumps(
        {k: request.get(k) for k in ("messages", "prompt", "input", "model", "seed", "temperature", "top_p")},
        sort_keys=True,
    )
    digest = hashlib.sha256(f"{basis}|{choice}".encode()).digest()
    return " ".join(WORDS[b % len(WORDS)] for b in digest[:words])


_RESPONSE_PATH = re.compile(r"/responses/([^/]+)(/input_items|/cancel)?$")
_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")  # a snapshot name already: gpt-4o-2024-08-06
REFUSAL = "I'm sorry, but I can't help with that."


def _error(message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _query(path: str) -> dict[str, str]:
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(path).query))


def _oid(prefix: str) -> str:
    """An id shaped like the API's: resp_/msg_/fc_/rs_ + 48 hex digits."""
    return f"{prefix}_{uuid.uuid4().hex}{uuid.uuid4().hex[:16]}"


def _text_of(content: object) -> str:
    """The text of a message content: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text") or p.get("refusal") or "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _word_from(prompt: str) -> str:
    """A word of the prompt to put in tool arguments: the last capitalised one ("Paris"), else the longest."""
    words = [w.strip(".,;:!?\"'()[]{}") for w in prompt.split()]
    words = [w for w in words if w.isalpha()]
    if not words:
        return "alpha"
    capitalised = [w for w in words[1:] if w[0].isupper()]
    return capitalised[-1] if capitalised else max(words, key=len)


def _arguments(tool_schema: dict | None, word: str) -> str:
    """Deterministic JSON arguments for a function tool: its required (else first) properties, filled
    by type; ``{"city": word}`` when the schema names none."""
    props = (tool_schema or {}).get("properties") or {}
    names = list((tool_schema or {}).get("required") or []) or list(props)[:1]
    if not names:
        return json.dumps({"city": word})
    out: dict = {}
    for name in names:
        spec = props.get(name) or {}
        kind = spec.get("type")
        kind = kind[0] if isinstance(kind, list) else kind
        if spec.get("enum"):
            out[name] = spec["enum"][0]
        elif kind in ("integer", "number"):
            out[name] = len(word)
        elif kind == "boolean":
            out[name] = True
        elif kind == "array":
            out[name] = [word]
        elif kind == "object":
            out[name] = {}
        else:
            out[name] = word
    return json.dumps(out)


def _json_for(schema: dict, words: list[str], depth: int = 0) -> object:
    """A value of a JSON schema, built from words, for ``text.format`` json_schema answers."""
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "object" or "properties" in schema:
        return {k: _json_for(v, words[i + 1:] or words, depth + 1) for i, (k, v) in enumerate((schema.get("properties") or {}).items())} if depth < 5 else {}
    if kind == "array":
        return [_json_for(schema.get("items") or {"type": "string"}, words, depth + 1)] if depth < 5 else []
    if kind in ("integer", "number"):
        return len(words[0]) if words else 0
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return words[0] if words else "alpha"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the default (5) drops connections under 50 concurrent clients

    def handle_error(self, request, client_address):  # a client hanging up mid-answer is no server error
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeUpstream:
    """Threaded HTTP server; ``log`` holds (method, path, headers, parsed body) of every request."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, fingerprint: str | None = "fp_fake_1"):
        self.fingerprint = fingerprint
        self.log: list[dict] = []
        self.latency = 0.0  # seconds to wait before answering
        self.fail_with: int | None = None  # answer every request with this status
        self.fail_next: list[int] = []  # answer the next requests with these statuses, one each
        self.noise: bool | str = False  # True: random words in every answer; "unseeded": only without a seed
        self.chunk_delay = 0.0  # seconds between streamed events
        self.gate: threading.Event | None = None  # when set, [DONE] (Responses: the terminal event) waits for it
        self.stream_fault: str | None = None  # "cut" mid-event, "malformed" event, "error-event"; Responses: also "failed"
        self.snapshot: str | None = "2024-07-18"  # Responses answer model "gpt-4o-mini" as "gpt-4o-mini-2024-07-18"
        self.require_auth = False  # True: 401 for requests without an api-key or Authorization header
        self.background_polls = 1  # GETs of a background response that still answer "in_progress"
        self.responses: dict[str, dict] = {}  # stored Responses by id: response, input items, context, polls
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else Nagle + delayed ACK hold every keep-alive answer ~40 ms

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                if self.path == "/_fake/log":
                    with upstream._lock:
                        return self._send(200, upstream.log)
                path = self.path.split("?")[0]
                if path.rstrip("/").endswith("/models"):  # not logged, never failed: as it always was
                    if self._unauthorized():
                        return
                    return self._send(200, {"object": "list", "data": [{"id": "gpt-fake", "object": "model"}]})
                if self._preflight("GET", None):
                    return
                m = _RESPONSE_PATH.search(path)
                if m and m.group(2) == "/input_items":
                    return self._send(*upstream.input_items(m.group(1), _query(self.path)))
                if m and not m.group(2):
                    query = _query(self.path)
                    if query.get("stream") == "true":
                        status, found = upstream.retrieve_response(m.group(1), poll=False)
                        if status != 200:
                            return self._send(status, found)
                        after = int(query.get("starting_after", -1))
                        events = [e for e in upstream.response_events(found) if e["sequence_number"] > after]
                        return self._stream_events(events)
                    return self._send(*upstream.retrieve_response(m.group(1)))
                self._send(404, _error(f"unknown path {self.path}"))

            def do_DELETE(self):
                if self._preflight("DELETE", None):
                    return
                m = _RESPONSE_PATH.search(self.path.split("?")[0])
                if m and not m.group(2):
                    return self._send(*upstream.delete_response(m.group(1)))
                self._send(404, _error(f"unknown path {self.path}"))

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                if self._preflight("POST", body):
                    return
                path = self.path.split("?")[0]
                m = _RESPONSE_PATH.search(path)
                if m and m.group(2) == "/cancel":  # the SDK sends no body
                    return self._send(*upstream.cancel_response(m.group(1)))
                if not isinstance(body, dict):
                    return self._send(400, {"error": {"message": "body must be JSON", "type": "invalid_request_error"}})
                if path.endswith("/chat/completions"):
                    if body.get("stream"):
                        return self._stream(upstream.chat_chunks(body))
                    return self._send(200, upstream.chat(body))
                if path.endswith("/completions"):
                    if body.get("stream"):
                        return self._stream(upstream.completion_chunks(body))
                    return self._send(200, upstream.completion(body))
                if path.endswith("/embeddings"):
                    return self._send(200, upstream.embeddings(body))
                if path.endswith("/responses"):
                    status, payload = upstream.create_response(body)
                    if status == 200 and body.get("stream"):
                        return self._stream_events(upstream.response_events(payload, body), payload)
                    return self._send(status, payload)
                self._send(404, {"error": {"message": f"unknown path {self.path}", "type": "invalid_request_error"}})

            def _unauthorized(self) -> bool:
                """With ``require_auth``, a request without an ``api-key`` or ``Authorization`` header gets a 401."""
                if not upstream.require_auth or self.headers.get("api-key") or self.headers.get("authorization"):
                    return False
                self._send(401, _error("Incorrect API key provided: you must provide an API key in an Authorization "
                                       "header (Bearer) or an api-key header.", code="invalid_api_key"))
                return True

            def _preflight(self, method: str, body: object) -> bool:
                """Log the request, wait ``latency``, check credentials and the injected failures.
                True when an answer was already sent."""
                with upstream._lock:
                    upstream.log.append({"method": method, "path": self.path, "headers": dict(self.headers.items()), "body": body})
                if upstream.latency:
                    time.sleep(upstream.latency)
                if self._unauthorized():
                    return True
                with upstream._lock:
                    status = upstream.fail_next.pop(0) if upstream.fail_next else upstream.fail_with
                if status:
                    self._send(status, {"error": {"message": "fake failure", "type": "server_error", "code": None}},
                               {"retry-after": "0"} if status == 429 else {})
                    return True
                return False

            def _send(self, status: int, payload: object, extra: dict | None = None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("x-request-id", f"req_{uuid.uuid4().hex}")
                self.send_header("openai-processing-ms", "42")
                self.send_header("openai-version", "2020-10-01")
                self.send_header("openai-organization", "org-secret-fake")
                self.send_header("x-ratelimit-remaining-requests", "9999")
                self.send_header("set-cookie", "__cf_bm=secret-cookie; path=/")
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, chunks: list[dict]):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream; charset=utf-8")
                self.send_header("transfer-encoding", "chunked")
                self.send_header("x-request-id", f"req_{uuid.uuid4().hex}")
                self.end_headers()
                events = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]
                fault = upstream.stream_fault
                if fault == "malformed":
                    events.insert(2, b"data: {not json\n\n")
                if fault == "error-event":
                    events.insert(2, b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n')
                for n, event in enumerate(events):
                    if n == len(events) - 1 and upstream.gate is not None:
                        upstream.gate.wait(30)  # hold [DONE] until the test has seen the first events
                    if fault == "cut" and n == len(events) // 2:
                        self.wfile.write(b"%x\r\n%s" % (len(event), event[: len(event) // 2]))  # mid-event
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.wfile.flush()
                    if upstream.chunk_delay:
                        time.sleep(upstream.chunk_delay)
                self.wfile.write(b"0\r\n\r\n")

            def _stream_events(self, events: list[dict], response: dict | None = None):
                """Responses API server-sent events: ``event: <type>`` + ``data: <json>``, no ``[DONE]``.

                ``stream_fault``: "cut" mid-event, "malformed" event, "error-event" (an ``error`` event
                halfway, then the end without a terminal event), "failed" (``response.failed`` halfway).
                ``gate`` holds the terminal event; ``chunk_delay`` paces the events."""
                self.send_response(200)
                self.send_header("content-type", "text/event-stream; charset=utf-8")
                self.send_header("transfer-encoding", "chunked")
                self.send_header("x-request-id", f"req_{uuid.uuid4().hex}")
                self.send_header("openai-processing-ms", "42")
                self.end_headers()
                fault = upstream.stream_fault if response is not None else None
                half = len(events) // 2
                if fault in ("error-event", "failed"):
                    failed = upstream.fail_stored(response, "overloaded")
                    end = ({"type": "error", "code": "server_error", "message": "overloaded", "param": None}
                           if fault == "error-event" else {"type": "response.failed", "response": failed})
                    events = [*events[:half], {**end, "sequence_number": half}]
                encoded = [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]
                if fault == "malformed":
                    encoded.insert(2, b"event: response.output_text.delta\ndata: {not json\n\n")
                for n, event in enumerate(encoded):
                    if n == len(encoded) - 1 and upstream.gate is not None:
                        upstream.gate.wait(30)  # hold the terminal event until the test has seen the first ones
                    if fault == "cut" and n == len(encoded) // 2:
                        self.wfile.write(b"%x\r\n%s" % (len(event), event[: len(event) // 2]))  # mid-event
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.wfile.flush()
                    if upstream.chunk_delay:
                        time.sleep(upstream.chunk_delay)
                self.wfile.write(b"0\r\n\r\n")

        self.server = _Server((host, port), Handler)
        self.host, self.port = self.server.server_address[:2]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _text(self, body: dict, choice: int) -> str:
        text = deterministic_text(body, choice)
        if self.noise is True or (self.noise == "unseeded" and body.get("seed") is None):
            text += " " + " ".join(random.choice(WORDS) for _ in range(3))
        return text

    def _common(self, body: dict, obj: str, prefix: str) -> dict:
        out = {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "object": obj, "created": int(time.time()),
               "model": body.get("model", "gpt-fake")}
        if self.fingerprint is not None:
            out["system_fingerprint"] = self.fingerprint
        return out

    @staticmethod
    def _last_user(body: dict) -> str:
        for m in reversed(body.get("messages") or []):
            if m.get("role") == "user":
                return str(m.get("content"))
        return str(body.get("prompt") or "")

    @staticmethod
    def _last_user_text(body: dict) -> str:
        for m in reversed(body.get("messages") or []):
            if isinstance(m, dict) and m.get("role") == "user":
                return _text_of(m.get("content"))
        return ""

    @staticmethod
    def _chat_agent(body: dict) -> tuple[dict, str | None] | None:
        """Chat with function ``tools``: (the first function, the last ``role: tool`` message's content
        or None when no tool answered yet). None without function tools or with ``tool_choice: none``."""
        if body.get("tool_choice") == "none":
            return None
        fns = [t["function"] for t in body.get("tools") or []
               if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)]
        if not fns:
            return None
        outputs = [_text_of(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "tool"]
        return fns[0], (outputs[-1] if outputs else None)

    @staticmethod
    def _logprobs(text: str) -> dict:
        return {"content": [{"token": w, "logprob": -0.1 * (i + 1), "bytes": list(w.encode()), "top_logprobs": []}
                            for i, w in enumerate(text.split(" "))], "refusal": None}

    def chat(self, body: dict) -> dict:
        """Scenarios by the last user message: [tool] tool calls, [refuse] a refusal, [filter] content_filter."""
        n, ask = int(body.get("n") or 1), self._last_user(body)
        agent = self._chat_agent(body)  # (function, tool output or None) when function tools were sent
        choices = []
        for i in range(n):
            text = self._text(body, i)
            if agent and agent[1] is not None:
                text = f"The tool returned: {agent[1]}. {text}"
            msg: dict = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
            finish = "stop"
            if "[tool]" in ask:
                msg["content"] = None
                msg["tool_calls"] = [
                    {"id": f"call_{i}_{j}", "type": "function",
                     "function": {"name": f"lookup_{j}", "arguments": json.dumps({"query": text, "page": j})}}
                    for j in range(2)]
                finish = "tool_calls"
            elif agent and agent[1] is None:  # an agent's first step: call the first function tool
                fn = agent[0]
                msg["content"] = None
                msg["tool_calls"] = [{"id": f"call_{secrets.token_hex(12)}", "type": "function",
                                      "function": {"name": fn.get("name"), "arguments": _arguments(
                                          fn.get("parameters"), _word_from(self._last_user_text(body)))}}]
                finish = "tool_calls"
            elif "[refuse]" in ask:
                msg["content"], msg["refusal"] = None, "I can't help with that."
            elif "[filter]" in ask:
                finish = "content_filter"
            elif body.get("max_tokens") == 3 or body.get("max_completion_tokens") == 3:
                msg["content"] = " ".join(text.split(" ")[:3])
                finish = "length"
            lp = self._logprobs(msg["content"]) if body.get("logprobs") and msg["content"] else None
            choices.append({"index": i, "message": msg, "logprobs": lp, "finish_reason": finish})
        return {**self._common(body, "chat.completion", "chatcmpl"), "choices": choices,
                "usage": {"prompt_tokens": 10, "completion_tokens": 12 * n, "total_tokens": 10 + 12 * n}}

    def chat_chunks(self, body: dict) -> list[dict]:
        """The events of a streamed chat completion, split finely like the real API, usage chunk last."""
        full = self.chat(body)
        base = {k: full[k] for k in ("id", "created", "model") if k in full} | {"object": "chat.completion.chunk"}
        if "system_fingerprint" in full:
            base["system_fingerprint"] = full["system_fingerprint"]
        base["obfuscation"] = "x"  # newer chunks carry a random field; assembling must ignore it
        chunks = []

        def add(i, delta, finish=None, logprobs=None):
            chunks.append({**base, "choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})

        for c in full["choices"]:
            i, msg = c["index"], c["message"]
            add(i, {"role": "assistant", "content": "" if msg["content"] is not None else None, "refusal": None})
            if msg["content"]:
                words = msg["content"].split(" ")
                for j, w in enumerate(words):
                    lp = {"content": [c["logprobs"]["content"][j]], "refusal": None} if c["logprobs"] else None
                    add(i, {"content": w if j == 0 else " " + w}, logprobs=lp)
            ref = msg.get("refusal") or ""
            for k in range(0, len(ref), 6):
                add(i, {"refusal": ref[k:k + 6]})
            for j, tc in enumerate(msg.get("tool_calls") or []):
                add(i, {"tool_calls": [{"index": j, "id": tc["id"], "type": "function",
                                        "function": {"name": tc["function"]["name"], "arguments": ""}}]})
                args = tc["function"]["arguments"]
                for k in range(0, len(args), 7):  # argument fragments, as the API streams them
                    add(i, {"tool_calls": [{"index": j, "function": {"arguments": args[k:k + 7]}}]})
            add(i, {}, finish=c["finish_reason"])
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**base, "choices": [], "usage": full["usage"]})
        return chunks

    def completion(self, body: dict) -> dict:
        n = int(body.get("n") or 1)
        choices = [{"index": i, "text": self._text(body, i), "logprobs": None, "finish_reason": "stop"} for i in range(n)]
        return {**self._common(body, "text_completion", "cmpl"), "choices": choices,
                "usage": {"prompt_tokens": 5, "completion_tokens": 12 * n, "total_tokens": 5 + 12 * n}}

    def completion_chunks(self, body: dict) -> list[dict]:
        full = self.completion(body)
        base = {k: full[k] for k in ("id", "created", "model", "system_fingerprint") if k in full} | {"object": "text_completion"}
        chunks = []
        for c in full["choices"]:
            for j, w in enumerate(c["text"].split(" ")):
                chunks.append({**base, "choices": [{"index": c["index"], "text": w if j == 0 else " " + w, "logprobs": None, "finish_reason": None}]})
            chunks.append({**base, "choices": [{"index": c["index"], "text": "", "logprobs": None, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**base, "choices": [], "usage": full["usage"]})
        return chunks

    def embeddings(self, body: dict) -> dict:
        inputs = body.get("input")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        data = []
        for i, text in enumerate(inputs):
            digest = hashlib.sha256(json.dumps(text).encode()).digest()
            data.append({"object": "embedding", "index": i, "embedding": [(b - 128) / 128 for b in digest[:16]]})
        out = {"object": "list", "data": data, "model": body.get("model", "emb-fake"),
               "usage": {"prompt_tokens": 3, "total_tokens": 3}}
        return out

    # -- the Responses API ----------------------------------------------------------------------------

    def resolve_model(self, model: str) -> str:
        """The snapshot a Responses call answers with: "gpt-4o-mini" -> "gpt-4o-mini-2024-07-18" (``snapshot``)."""
        return model if not self.snapshot or _DATED.search(model) else f"{model}-{self.snapshot}"

    @staticmethod
    def _input_items(raw: object) -> list[dict] | dict:
        """The request's ``input`` as items with ids and statuses, as input_items lists them; an error
        payload when it is malformed."""
        if raw is None:
            return []
        if isinstance(raw, str):
            raw = [{"role": "user", "content": raw}]
        if not isinstance(raw, list):
            return _error(f"Invalid type for 'input': expected one of a string or array of input items, but got "
                          f"{type(raw).__name__} instead.", param="input", code="invalid_type")
        items = []
        for n, item in enumerate(raw):
            if not isinstance(item, dict):
                return _error(f"Invalid type for 'input[{n}]': expected an object.", param=f"input[{n}]", code="invalid_type")
            item = dict(item)
            kind = item.get("type") or ("message" if "role" in item else None)
            if kind is None:
                return _error(f"Missing required parameter: 'input[{n}].type'.", param=f"input[{n}].type",
                              code="missing_required_parameter")
            item["type"] = kind
            prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}.get(kind, "item")
            if kind == "message":
                role = item.get("role")
                if role not in ("user", "assistant", "system", "developer"):
                    return _error(f"Invalid value: '{role}'. Supported values are: 'assistant', 'system', 'developer', "
                                  f"and 'user'.", param=f"input[{n}].role", code="invalid_value")
                if isinstance(item.get("content"), str):
                    item["content"] = ([{"type": "output_text", "text": item["content"], "annotations": []}] if role == "assistant"
                                       else [{"type": "input_text", "text": item["content"]}])
            if kind in ("function_call", "function_call_output") and not item.get("call_id"):
                return _error(f"Missing required parameter: 'input[{n}].call_id'.", param=f"input[{n}].call_id",
                              code="missing_required_parameter")
            if kind in ("message", "function_call", "function_call_output"):
                item["status"] = item.get("status") or "completed"
            items.append({"id": item.get("id") or _oid(prefix), **{k: v for k, v in item.items() if k != "id"}})
        return items

    @staticmethod
    def _canon(items: list[dict]) -> list:
        """What of a conversation decides the answer: roles, texts, calls, outputs; never ids."""
        out: list = []
        for it in items:
            kind = it.get("type")
            if kind == "message":
                out.append([it.get("role"), _text_of(it.get("content"))])
            elif kind == "function_call":
                out.append(["call", it.get("name"), it.get("arguments")])
            elif kind == "function_call_output":
                out.append(["output", _text_of(it.get("output"))])
            elif kind != "reasoning":
                out.append([kind])
        return out

    @staticmethod
    def _pieces(text: str) -> list[str]:
        """Text split the way it streams: a word at a time, the space leading."""
        return [w if j == 0 else " " + w for j, w in enumerate(text.split(" "))]

    @staticmethod
    def _view(resp: dict, status: str) -> dict:
        """A response as it looks before it has an output (queued, in_progress, cancelled, failed)."""
        return {**resp, "status": status, "output": [], "usage": None, "completed_at": None,
                "incomplete_details": None, "error": None}

    def create_response(self, body: dict) -> tuple[int, dict]:
        """``POST /responses``: build and store the answer; (HTTP status, response or error payload)."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return 400, _error("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
        items = self._input_items(body.get("input"))
        if isinstance(items, dict):
            return 400, items
        prev_id, chain = body.get("previous_response_id"), []
        if prev_id is not None:
            with self._lock:
                entry = self.responses.get(prev_id)
            if entry is None:
                return 400, _error(f"Previous response with id '{prev_id}' not found.", param="previous_response_id",
                                   code="previous_response_not_found")
            chain = entry["context"]
        context = chain + items
        calls = [it.get("call_id") for it in context if it.get("type") == "function_call"]
        outputs = [it.get("call_id") for it in context if it.get("type") == "function_call_output"]
        for cid in outputs:
            if cid not in calls:
                return 400, _error(f"No tool call found for function call output with call_id {cid}.", param="input")
        for cid in calls:
            if cid not in outputs:
                return 400, _error(f"No tool output found for function call {cid}.", param="input")

        instructions = body.get("instructions")
        basis = {"input": [instructions if isinstance(instructions, str) else json.dumps(instructions), *self._canon(context)],
                 "model": model, "seed": body.get("seed"), "temperature": body.get("temperature"), "top_p": body.get("top_p")}
        text = self._text(basis, 0)
        prompt = next((_text_of(it.get("content")) for it in reversed(context)
                       if it.get("type") == "message" and it.get("role") == "user"), "")
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
        functions = [t for t in tools if t.get("type") == "function"]
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("name"):
            functions = [t for t in functions if t.get("name") == choice["name"]] or functions
        tool_outputs = [_text_of(it.get("output")) for it in context if it.get("type") == "function_call_output"]
        reasoning = body.get("reasoning")
        thinks = isinstance(reasoning, dict) and model.startswith(("o", "gpt-5"))

        output: list[dict] = []
        status, incomplete, out_tokens = "completed", None, 0
        if thinks:
            summary = f"**Considering {_word_from(prompt)}**\n\n{self._text(basis, 1)}"
            item = {"id": _oid("rs"), "type": "reasoning", "summary": [{"type": "summary_text", "text": summary}]}
            if "reasoning.encrypted_content" in (body.get("include") or []):
                item["encrypted_content"] = "gAAAAA" + hashlib.sha256(summary.encode()).hexdigest()
            output.append(item)
        reasoning_tokens = 2 * len(output[0]["summary"][0]["text"].split()) if thinks else 0
        if functions and not tool_outputs and choice != "none":
            fn = functions[0]
            args = _arguments(fn.get("parameters"), _word_from(prompt))
            output.append({"id": _oid("fc"), "type": "function_call", "status": "completed", "arguments": args,
                           "call_id": f"call_{secrets.token_hex(12)}", "name": fn.get("name")})
            out_tokens = len(args) // 4 + 1
        else:
            if tool_outputs:
                text = f"The tool returned: {tool_outputs[-1]}. {text}"
            if "refuse" in prompt.lower():
                part = {"type": "refusal", "refusal": REFUSAL}
                out_tokens = len(REFUSAL.split())
            else:
                fmt = (body.get("text") or {}).get("format") or {}
                if fmt.get("type") == "json_schema":
                    text = json.dumps(_json_for(fmt.get("schema") or {}, text.split(" ")))
                elif fmt.get("type") == "json_object":
                    text = json.dumps({"answer": text})
                words = text.split(" ")
                limit = body.get("max_output_tokens")
                if isinstance(limit, int) and not isinstance(limit, bool) and limit < len(words):
                    text, status, incomplete = " ".join(words[:max(limit, 0)]), "incomplete", {"reason": "max_output_tokens"}
                part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
                out_tokens = len(text.split(" "))
            output.append({"id": _oid("msg"), "type": "message", "status": status, "content": [part], "role": "assistant"})

        in_tokens = len(json.dumps(basis["input"]).split()) + 12 * len(tools) + 5
        out_tokens += reasoning_tokens
        now = int(time.time())
        tier = body.get("service_tier") or "auto"
        resp = {
            "id": _oid("resp"), "object": "response", "created_at": now, "status": status,
            "background": bool(body.get("background")), "completed_at": now if status == "completed" else None,
            "error": None, "incomplete_details": incomplete, "instructions": instructions,
            "max_output_tokens": body.get("max_output_tokens"), "max_tool_calls": body.get("max_tool_calls"),
            "model": self.resolve_model(model), "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True), "previous_response_id": prev_id,
            "prompt_cache_key": body.get("prompt_cache_key"),
            "reasoning": {"effort": (reasoning or {}).get("effort", "medium" if thinks else None),
                          "summary": (reasoning or {}).get("summary")},
            "safety_identifier": body.get("safety_identifier"), "service_tier": "default" if tier == "auto" else tier,
            "store": body.get("store") is not False, "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium", **(body.get("text") or {})},
            "tool_choice": choice if choice is not None else "auto",
            "tools": [{"description": None, "strict": True, **t} if t.get("type") == "function" else t for t in tools],
            "top_logprobs": body.get("top_logprobs", 0), "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation", "disabled"),
            "usage": {"input_tokens": in_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                      "output_tokens": out_tokens, "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
                      "total_tokens": in_tokens + out_tokens},
            "user": body.get("user"), "metadata": body.get("metadata") or {},
        }
        if resp["store"]:
            with self._lock:
                self.responses[resp["id"]] = {"response": resp, "input_items": items, "context": context + output,
                                              "background": resp["background"], "polls_left": self.background_polls,
                                              "cancelled": False}
        if resp["background"] and not body.get("stream"):
            return 200, self._view(resp, "queued")
        return 200, resp

    def response_events(self, resp: dict, body: dict | None = None) -> list[dict]:
        """The server-sent events of a streamed response, in the API's order, ``sequence_number`` 0, 1, ..."""
        obfuscate = ((body or {}).get("stream_options") or {}).get("include_obfuscation") is not False
        events: list[dict] = []

        def add(kind: str, **fields) -> None:
            events.append({"type": kind, "sequence_number": len(events), **fields})

        def delta(kind: str, **fields) -> None:
            if obfuscate:  # random padding the API adds to deltas against length side channels
                fields["obfuscation"] = secrets.token_urlsafe(12)[: random.randint(2, 12)]
            add(kind, **fields)

        start = self._view(resp, "in_progress")
        add("response.created", response=start)
        add("response.in_progress", response=start)
        for n, item in enumerate(resp["output"]):
            at = {"item_id": item["id"], "output_index": n}
            if item["type"] == "message":
                add("response.output_item.added", output_index=n, item={**item, "status": "in_progress", "content": []})
                for c, part in enumerate(item["content"]):
                    if part["type"] == "refusal":
                        add("response.content_part.added", **at, content_index=c, part={**part, "refusal": ""})
                        for piece in self._pieces(part["refusal"]):
                            delta("response.refusal.delta", **at, content_index=c, delta=piece)
                        add("response.refusal.done", **at, content_index=c, refusal=part["refusal"])
                    else:
                        add("response.content_part.added", **at, content_index=c, part={**part, "text": ""})
                        for piece in self._pieces(part["text"]):
                            delta("response.output_text.delta", **at, content_index=c, delta=piece, logprobs=[])
                        add("response.output_text.done", **at, content_index=c, text=part["text"], logprobs=[])
                    add("response.content_part.done", **at, content_index=c, part=part)
            elif item["type"] == "function_call":
                add("response.output_item.added", output_index=n, item={**item, "status": "in_progress", "arguments": ""})
                args = item["arguments"]
                for k in range(0, len(args), 7):  # fragments, as the API streams them
                    delta("response.function_call_arguments.delta", **at, delta=args[k:k + 7])
                add("response.function_call_arguments.done", **at, arguments=args)
            elif item["type"] == "reasoning":
                add("response.output_item.added", output_index=n, item={**item, "summary": []})
                for i, summary in enumerate(item["summary"]):
                    add("response.reasoning_summary_part.added", **at, summary_index=i, part={**summary, "text": ""})
                    for piece in self._pieces(summary["text"]):
                        delta("response.reasoning_summary_text.delta", **at, summary_index=i, delta=piece)
                    add("response.reasoning_summary_text.done", **at, summary_index=i, text=summary["text"])
                    add("response.reasoning_summary_part.done", **at, summary_index=i, part=summary)
            add("response.output_item.done", output_index=n, item=item)
        add({"incomplete": "response.incomplete", "failed": "response.failed"}.get(resp["status"], "response.completed"),
            response=resp)
        return events

    def fail_stored(self, resp: dict, message: str) -> dict:
        """The failed form of a response (its stream broke off), which a later GET also answers."""
        failed = {**self._view(resp, "failed"), "error": {"code": "server_error", "message": message}}
        with self._lock:
            if resp["id"] in self.responses:
                self.responses[resp["id"]]["response"] = failed
        return failed

    def _stored(self, rid: str) -> dict | None:
        return self.responses.get(rid)

    @staticmethod
    def _not_found(rid: str) -> tuple[int, dict]:
        return 404, _error(f"Response with id '{rid}' not found.")

    def retrieve_response(self, rid: str, poll: bool = True) -> tuple[int, dict]:
        """``GET /responses/{id}``; a background one answers "in_progress" ``background_polls`` times first."""
        with self._lock:
            entry = self._stored(rid)
            if entry is None:
                return self._not_found(rid)
            resp = entry["response"]
            if entry["background"] and entry["cancelled"]:
                return 200, self._view(resp, "cancelled")
            if entry["background"] and poll and entry["polls_left"] > 0:
                entry["polls_left"] -= 1
                return 200, self._view(resp, "in_progress")
            return 200, resp

    def input_items(self, rid: str, query: dict[str, str]) -> tuple[int, dict]:
        """``GET /responses/{id}/input_items``: the request's input items, newest first unless ``order=asc``."""
        with self._lock:
            entry = self._stored(rid)
            if entry is None:
                return self._not_found(rid)
            items = list(entry["input_items"])
        if query.get("order", "desc") == "desc":
            items.reverse()
        if query.get("after"):
            ids = [it["id"] for it in items]
            items = items[ids.index(query["after"]) + 1:] if query["after"] in ids else []
        limit = int(query.get("limit") or 20)
        page = items[:limit]
        return 200, {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                     "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}

    def delete_response(self, rid: str) -> tuple[int, dict]:
        with self._lock:
            if self.responses.pop(rid, None) is None:
                return self._not_found(rid)
        return 200, {"id": rid, "object": "response.deleted", "deleted": True}

    def cancel_response(self, rid: str) -> tuple[int, dict]:
        """``POST /responses/{id}/cancel``: a background response not done yet becomes "cancelled"; a done
        one comes back as it is; a synchronous one cannot be cancelled (400, as the API answers)."""
        with self._lock:
            entry = self._stored(rid)
            if entry is None:
                return self._not_found(rid)
            if not entry["background"]:
                return 400, _error("Cannot cancel a synchronous response: only responses created with "
                                   "background=true can be cancelled.")
            if entry["cancelled"] or entry["polls_left"] > 0:
                entry["cancelled"] = True
                return 200, self._view(entry["response"], "cancelled")
            return 200, entry["response"]

    def requests_to(self, suffix: str) -> list[dict]:
        with self._lock:
            return [r for r in self.log if r["path"].split("?")[0].endswith(suffix)]

    def start(self) -> FakeUpstream:
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)  # stop() within 50 ms
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--fingerprint", default="fp_fake_1")
    p.add_argument("--noise", choices=["off", "on", "unseeded"], default="off",
                   help="add random words to answers: never, always, or only to requests without a seed")
    p.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed events (default 0)")
    p.add_argument("--latency", type=float, default=0.0, help="seconds before each answer (default 0)")
    a = p.parse_args()
    up = FakeUpstream(a.host, a.port, a.fingerprint)
    up.chunk_delay, up.latency = a.chunk_delay, a.latency
    up.noise = {"off": False, "on": True, "unseeded": "unseeded"}[a.noise]
    print(f"FAKE_UPSTREAM={up.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        up.server.serve_forever()


if __name__ == "__main__":
    main()
