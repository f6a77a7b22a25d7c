"""A fast, bench-only OpenAI-style upstream: `POST .../chat/completions` answered from an asyncio protocol.

tests/fake_upstream.py is a threaded http.server that speaks every API seedtape knows and logs every
request; under a recording storm its per-request cost and its thread switches can make the upstream,
not the proxy, the bottleneck. This server answers only non-streamed chat completions, with the least
work that still yields what a recording proxy needs from a real answer: a valid `chat.completion` JSON
with a unique `id`, a `system_fingerprint`, and content derived from the prompt (the same request gets
the same content, as with a seed), over keep-alive HTTP/1.1 with a content-length. Anything else gets
a 404 in OpenAI's error shape. No request is logged or kept.

    python bench/fast_upstream.py [--host 127.0.0.1] [--port 0] [--workers 1] [--fingerprint fp_bench_1]

It prints ``FAKE_UPSTREAM=http://HOST:PORT`` when ready (the line bench_replay.Server waits for).
--workers N > 1 forks N-1 more processes sharing the port (SO_REUSEPORT), for use without pinning.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import signal
import socket
import time

WORDS = [
    b"alpha",
    b"bravo",
    b"charlie",
    b"delta",
    b"echo",
    b"foxtrot",
    b"golf",
    b"hotel",
    b"india",
    b"juliet",
    b"kilo",
    b"lima",
    b"mike",
    b"november",
    b"oscar",
    b"papa",
    b"quebec",
    b"romeo",
    b"sierra",
    b"tango",
    b"uniform",
    b"victor",
    b"whiskey",
    b"xray",
    b"yankee",
    b"zulu",
]
MAX_HEAD, MAX_BODY = 64 * 1024, 16 * 1024 * 1024


def reason(status: int) -> bytes:
    return {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 413: b"Payload Too Large"}.get(status, b"Error")


class Upstream(asyncio.Protocol):
    fingerprint = "fp_bench_1"
    ids = itertools.count()
    prefix = f"{os.getpid():x}"

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.buf = b""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self.fail(413, "request head too large")
                return
            head = self.buf[:end].decode("latin-1")
            request_line, *fields = head.split("\r\n")
            length, close = 0, False
            for f in fields:
                name, _, value = f.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip() or 0)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
                elif name == "transfer-encoding":
                    self.fail(400, "chunked request bodies are not supported here")
                    return
            if length > MAX_BODY:
                self.fail(413, "request body too large")
                return
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            method, _, rest = request_line.partition(" ")
            path = rest.partition(" ")[0].split("?")[0]
            status, payload = self.answer(method, path, body)
            self.send(status, payload, close)
            if close:
                return

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if method != "POST" or not path.endswith("/chat/completions"):
            return 404, error(f"{method} {path}: this bench upstream answers only POST .../chat/completions")
        try:
            req = json.loads(body)
            messages = req["messages"]
        except (ValueError, KeyError, TypeError):
            return 400, error("the body must be a JSON object with messages")
        if req.get("stream"):
            return 400, error("this bench upstream does not stream")
        digest = hashlib.sha256(json.dumps([messages, req.get("model"), req.get("seed")], sort_keys=True).encode())
        text = b" ".join(WORDS[b % len(WORDS)] for b in digest.digest()[:12]).decode()
        return 200, json.dumps(
            {
                "id": f"chatcmpl-{self.prefix}{next(self.ids):016x}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": req.get("model", "gpt-fake"),
                "system_fingerprint": self.fingerprint,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22},
            },
            separators=(",", ":"),
        ).encode()

    def send(self, status: int, payload: bytes, close: bool) -> None:
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"x-request-id: req_%s%016x\r\nopenai-version: 2020-10-01\r\nopenai-processing-ms: 1\r\n"
            % (status, reason(status), len(payload), self.prefix.encode(), next(self.ids))
        )
        head += b"connection: close\r\n\r\n" if close else b"\r\n"
        self.transport.write(head + payload)
        if close:
            self.transport.close()

    def fail(self, status: int, message: str) -> None:
        self.send(status, error(message), close=True)
        self.buf = b""


def error(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": None}}).encode()


async def serve(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, sock=sock, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes sharing the port (default 1)")
    p.add_argument("--fingerprint", default="fp_bench_1")
    a = p.parse_args()
    Upstream.fingerprint = a.fingerprint
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if a.workers > 1:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((a.host, a.port))
    sock.listen(1024)
    port = sock.getsockname()[1]
    children = []
    for _ in range(a.workers - 1):  # each child listens on a socket of its own, same port (the kernel spreads)
        pid = os.fork()
        if pid == 0:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((a.host, port))
            s.listen(1024)
            sock.close()
            Upstream.prefix = f"{os.getpid():x}"
            asyncio.run(serve(s))
            os._exit(0)
        children.append(pid)
    print(f"FAKE_UPSTREAM=http://{a.host}:{port}", flush=True)
    try:
        asyncio.run(serve(sock))
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


if __name__ == "__main__":
    main()
