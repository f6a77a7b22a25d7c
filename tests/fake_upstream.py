"""A local OpenAI-compatible fake upstream for tests and benchmarks.

Its output is a pure function of the request (messages or prompt, model, seed,
temperature), so a replay can be compared with a live call. It logs every
request it sees, its ``system_fingerprint`` can be changed at run time, and
it can be told to fail. Run standalone: ``python tests/fake_upstream.py --port 0``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the default (5) drops connections under 50 concurrent clients


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
        self.gate: threading.Event | None = None  # when set, [DONE] waits for it
        self.stream_fault: str | None = None  # "cut" mid-event, "malformed" event, "error-event"
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
                if self.path.rstrip("/").endswith("/models"):
                    return self._send(200, {"object": "list", "data": [{"id": "gpt-fake", "object": "model"}]})
                self._send(404, {"error": {"message": f"unknown path {self.path}", "type": "invalid_request_error"}})

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with upstream._lock:
                    upstream.log.append({"method": "POST", "path": self.path, "headers": dict(self.headers.items()), "body": body})
                if upstream.latency:
                    time.sleep(upstream.latency)
                with upstream._lock:
                    status = upstream.fail_next.pop(0) if upstream.fail_next else upstream.fail_with
                if status:
                    return self._send(status, {"error": {"message": "fake failure", "type": "server_error", "code": None}},
                                      {"retry-after": "0"} if status == 429 else {})
                if not isinstance(body, dict):
                    return self._send(400, {"error": {"message": "body must be JSON", "type": "invalid_request_error"}})
                path = self.path.split("?")[0]
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
                self._send(404, {"error": {"message": f"unknown path {self.path}", "type": "invalid_request_error"}})

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
    def _logprobs(text: str) -> dict:
        return {"content": [{"token": w, "logprob": -0.1 * (i + 1), "bytes": list(w.encode()), "top_logprobs": []}
                            for i, w in enumerate(text.split(" "))], "refusal": None}

    def chat(self, body: dict) -> dict:
        """Scenarios by the last user message: [tool] tool calls, [refuse] a refusal, [filter] content_filter."""
        n, ask = int(body.get("n") or 1), self._last_user(body)
        choices = []
        for i in range(n):
            text = self._text(body, i)
            msg: dict = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
            finish = "stop"
            if "[tool]" in ask:
                msg["content"] = None
                msg["tool_calls"] = [
                    {"id": f"call_{i}_{j}", "type": "function",
                     "function": {"name": f"lookup_{j}", "arguments": json.dumps({"query": text, "page": j})}}
                    for j in range(2)]
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

    def requests_to(self, suffix: str) -> list[dict]:
        with self._lock:
            return [r for r in self.log if r["path"].split("?")[0].endswith(suffix)]

    def start(self) -> FakeUpstream:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
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
