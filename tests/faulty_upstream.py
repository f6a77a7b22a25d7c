"""A fake OpenAI-compatible upstream that misbehaves exactly as told, on raw sockets.

tests/fake_upstream.py is a well-behaved HTTP server; this one writes every byte
itself so it can fail at a precise point: stall before the headers, reset the
connection in the middle of a JSON body, cut a chunked event stream in the middle
of an event, stall between events, send a 200 that is not JSON, answer with a
5xx or a 429 + Retry-After, or refuse connections altogether (``refuse()``).

Without a fault (``fault = None``) it answers chat completions well, as JSON or as
an event stream, with bytes that are a pure function of the request, so a test can
compare what was recorded with what was sent (``answers``).

Only 127.0.0.1. ``close()`` releases every stalled answer, closes every socket and
joins every thread it started.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import select
import socket
import struct
import threading
import time

FINGERPRINT = "fp_faulty_1"

# What the server can be told to do with the next answers (``fault``):
FAULTS = (
    None,             # a good answer (JSON, or an event stream when the request says "stream": true)
    "stall-headers",  # read the request, then send nothing until released or the peer hangs up
    "status",         # answer ``status`` (default 503) with an OpenAI error body, plus ``extra_headers``
    "reset-body",     # 200 with a content-length, half the JSON body, then a TCP reset
    "stall-body",     # 200 with a content-length, half the JSON body, then nothing (as stall-headers)
    "not-json",       # 200 with ``not_json_type`` and a body that is not JSON
    "cut-stream",     # a streamed 200: ``good_events`` events, half of the next one, then FIN (or RST: cut_with)
    "stall-stream",   # a streamed 200: ``good_events`` events, then nothing (as stall-headers)
)


class Request:
    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes):
        self.method, self.path, self.headers, self.raw = method, path, headers, body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    @property
    def stream(self) -> bool:
        return isinstance(self.json, dict) and self.json.get("stream") is True


class FaultyUpstream:
    def __init__(self) -> None:
        self.fault: str | None = None
        self.status = 503
        self.error_body: dict = {"error": {"message": "The upstream is overloaded (faulty upstream).",
                                           "type": "server_error", "param": None, "code": "overloaded"}}
        self.extra_headers: dict[str, str] = {}
        self.not_json_type = "application/json"
        self.not_json_body = b"<html><body>502 Bad Gateway (not JSON)</body></html>"
        self.cut_with = "fin"  # or "rst"
        self.good_events = 2  # full events before a cut or a stall
        self.events = 8  # content events of a good stream (before the finish and [DONE])
        self.pad = 0  # extra characters per content event (a long stream: many events, or big ones)
        self.chunk_delay = 0.0  # seconds between streamed events
        self.finish = "stop"  # finish_reason of good answers
        self.hold_after_finish: threading.Event | None = None  # a good stream waits for it after its finish event
        self.latency = 0.0  # seconds before a good answer's headers
        self.release = threading.Event()  # stalls end when it is set (close() sets it), or when the peer leaves

        self.requests: list[Request] = []  # every request read completely
        self.answers: list[tuple[Request, bytes, str]] = []  # (request, body bytes sent, how it ended)
        self.partial_requests = 0  # connections that closed in the middle of a request
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self.host, self.port = "127.0.0.1", 0
        self._listen()

    # -- life cycle -----------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _listen(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(128)
        self.port = s.getsockname()[1]
        self._listener = s
        t = threading.Thread(target=self._accept, args=(s,), daemon=True, name="faulty-upstream-accept")
        t.start()
        self._threads.append(t)

    def refuse(self) -> None:
        """Stop listening: connections to the port are refused until ``listen_again()``."""
        s, self._listener = self._listener, None
        if s is not None:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the accepting thread
            s.close()

    def listen_again(self) -> None:
        """Listen on the same port again (after ``refuse()``)."""
        if self._listener is None:
            self._listen()

    def close(self) -> None:
        self.release.set()
        if self.hold_after_finish is not None:
            self.hold_after_finish.set()
        self.refuse()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in list(self._threads):
            t.join(10)

    def __enter__(self) -> FaultyUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- answers --------------------------------------------------------------

    @staticmethod
    def completion(req: Request) -> dict:
        """A good chat completion, a pure function of the request body."""
        digest = hashlib.sha256(req.raw).hexdigest()
        body = req.json if isinstance(req.json, dict) else {}
        ask = ""
        for m in reversed(body.get("messages") or []):
            if isinstance(m, dict) and m.get("role") == "user":
                ask = str(m.get("content"))
                break
        return {
            "id": f"chatcmpl-{digest[:24]}", "object": "chat.completion", "created": 1_700_000_000,
            "model": body.get("model", "gpt-fake"), "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"faulty says: {ask}",
                                                 "refusal": None}, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        }

    def stream_events(self, req: Request) -> list[bytes]:
        """The events of a good stream, ``data: [DONE]`` last."""
        full = self.completion(req)
        base = {k: full[k] for k in ("id", "created", "model", "system_fingerprint")} | {"object": "chat.completion.chunk"}
        body = req.json if isinstance(req.json, dict) else {}

        def event(delta: dict, finish: str | None = None) -> bytes:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        pieces = [f" w{i}" + "x" * self.pad for i in range(self.events)]
        if body.get("response_format"):  # structured output: the pieces make up (the start of) a JSON object
            pieces = ['{"answer": "'] + [p.strip() + " " for p in pieces]
        out = [event({"role": "assistant", "content": "", "refusal": None})]
        out += [event({"content": p}) for p in pieces]
        out.append(event({}, self.finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {**base, "choices": [], "usage": full["usage"]}
            out.append(b"data: " + json.dumps(usage).encode() + b"\n\n")
        out.append(b"data: [DONE]\n\n")
        return out

    def finish_index(self, req: Request) -> int:
        """Where the finish event is in ``stream_events(req)``."""
        opts = (req.json.get("stream_options") if isinstance(req.json, dict) else None) or {}
        return len(self.stream_events(req)) - (3 if opts.get("include_usage") else 2)

    def stream_body(self, req: Request) -> bytes:
        """The body of a complete good stream for ``req``, as an upstream sends it (de-chunked)."""
        return b"".join(self.stream_events(req))

    # -- the server -----------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # refuse() or close()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.add(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True, name="faulty-upstream-conn")
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                req, buf = self._read_request(conn, buf)
                if req is None:
                    return
                with self._lock:
                    self.requests.append(req)
                if not self._answer(conn, req):
                    return  # the answer closed (or broke) the connection
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _read_request(self, conn: socket.socket, buf: bytes) -> tuple[Request | None, bytes]:
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                if buf:
                    self._partial()
                return None, b""
            buf += data
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                while b"\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        self._partial()
                        return None, b""
                    buf += data
                size_line, buf = buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(buf) < size + 2:
                    data = conn.recv(65536)
                    if not data:
                        self._partial()
                        return None, b""
                    buf += data
                body, buf = body + buf[:size], buf[size + 2:]
                if size == 0:
                    break
        else:
            length = int(headers.get("content-length") or 0)
            while len(buf) < length:
                data = conn.recv(65536)
                if not data:
                    self._partial()
                    return None, b""
                buf += data
            body, buf = buf[:length], buf[length:]
        return Request(method, path, headers, body), buf

    def wait_answers(self, n: int, timeout: float = 10.0) -> list[tuple[Request, bytes, str]]:
        """The answers once there are ``n`` of them (or what there is after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.answers) >= n:
                    break
            time.sleep(0.02)
        with self._lock:
            return list(self.answers)

    def _partial(self) -> None:
        with self._lock:
            self.partial_requests += 1

    @staticmethod
    def _head(status: int, reason: str, headers: dict[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _record(self, req: Request, body: bytes, how: str) -> None:
        with self._lock:
            self.answers.append((req, body, how))

    def _answer(self, conn: socket.socket, req: Request) -> bool:
        """Send the answer the current fault asks for; False when the connection is done."""
        fault = self.fault
        rid = {"x-request-id": f"req_faulty_{len(self.requests)}", "openai-version": "2020-10-01"}
        if fault == "stall-headers":
            self._record(req, b"", f"stalled before the headers; {self._stall(conn)}")
            return False
        if fault == "status":
            body = json.dumps(self.error_body).encode()
            conn.sendall(self._head(self.status, "Upstream Error", {
                "content-type": "application/json", "content-length": str(len(body)), **rid, **self.extra_headers,
            }) + body)
            self._record(req, body, "complete")
            return True
        if fault == "not-json":
            body = self.not_json_body
            conn.sendall(self._head(200, "OK", {"content-type": self.not_json_type,
                                                "content-length": str(len(body)), **rid}) + body)
            self._record(req, body, "complete")
            return True
        if fault in ("reset-body", "stall-body"):
            body = json.dumps(self.completion(req)).encode()
            conn.sendall(self._head(200, "OK", {"content-type": "application/json",
                                                "content-length": str(len(body)), **rid}) + body[: len(body) // 2])
            if fault == "stall-body":
                self._record(req, body[: len(body) // 2], f"stalled in the body; {self._stall(conn)}")
                return False
            self._reset(conn)
            self._record(req, body[: len(body) // 2], "reset in the body")
            return False
        if self.latency:
            time.sleep(self.latency)
        if not req.stream:  # the stream faults apply to streams only: a JSON request gets a good answer
            body = json.dumps(self.completion(req)).encode()
            conn.sendall(self._head(200, "OK", {"content-type": "application/json",
                                                "content-length": str(len(body)), **rid}) + body)
            self._record(req, body, "complete")
            return True
        return self._stream(conn, req, fault, rid)

    def _stream(self, conn: socket.socket, req: Request, fault: str | None, rid: dict) -> bool:
        conn.sendall(self._head(200, "OK", {"content-type": "text/event-stream; charset=utf-8",
                                            "transfer-encoding": "chunked", **rid}))
        sent = b""
        events = self.stream_events(req)
        try:
            finish_at = self.finish_index(req)
            for n, ev in enumerate(events):
                if n == finish_at + 1 and self.hold_after_finish is not None:
                    self.hold_after_finish.wait(30)  # the rest (usage, [DONE]) comes once the test says so
                if fault in ("cut-stream", "stall-stream") and n == self.good_events:
                    if fault == "stall-stream":
                        self._record(req, sent, f"stalled in the stream; {self._stall(conn)}")
                        return False
                    half = ev[: len(ev) // 2]
                    conn.sendall(b"%x\r\n%s" % (len(ev), half))  # the chunk announces the whole event
                    sent += half
                    if self.cut_with == "rst":
                        self._reset(conn)
                    else:
                        conn.shutdown(socket.SHUT_RDWR)
                    self._record(req, sent, "cut in an event")
                    return False
                conn.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
                sent += ev
                if self.chunk_delay:
                    time.sleep(self.chunk_delay)
            conn.sendall(b"0\r\n\r\n")
        except OSError as e:  # the proxy hung up on us
            self._record(req, sent, f"the peer left: {type(e).__name__}")
            return False
        self._record(req, sent, "complete")
        return True

    def _stall(self, conn: socket.socket) -> str:
        """Send nothing until released, or until the peer hangs up; say which."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self.release.is_set():
            readable, _, _ = select.select([conn], [], [], 0.05)
            if readable:
                try:
                    if not conn.recv(65536, socket.MSG_PEEK):
                        return "the peer left"
                except OSError:
                    return "the peer left"
                time.sleep(0.05)  # the peer sent something more: it is still there
        return "released"

    @staticmethod
    def _reset(conn: socket.socket) -> None:
        """Close with a TCP RST instead of a FIN."""
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
