"""Clients other than the Python SDK, end to end through a real `seedtape serve`.

1. The official Node SDK (`openai` on npm, pinned to an exact version in
   tests/node_client/package.json, installed with `npm ci` from the committed
   package-lock.json): tests/node_client/client.mjs records a chat completion and a
   streamed one, then replays both offline. A replay miss and an unreachable upstream
   surface as the SDK's APIError with seedtape's message, and the SDK does not retry
   them (the client counts its own fetches).
2. curl-style hand-written JSON over raw HTTP (requests written by h11, and raw bytes
   for HTTP/1.0): other key orders, whitespace, 1.0 vs 1, escapes, an explicit
   `"stream": false`, gzip request bodies, `Accept-Encoding: gzip` responses, and
   HTTP/1.0 clients without keep-alive.
3. LangChain's request shapes, written by hand: ChatOpenAI with ``n=1`` and
   ``stream_usage=True`` (older langchain-openai sent both by default). The real
   ChatOpenAI is tested in tests/test_langchain.py.

Behaviours documented here, by the README's key rules (version 1):

- `stream` and `stream_options` never enter the key: an explicit `"stream": false`
  (LangChain) hits the recording of a request without it, and a LangChain streaming
  request (`stream: true`, `stream_options.include_usage`) replays a non-streamed
  recording of the same shape, and the other way round (converted).
- An explicit `"n": 1` and an absent `n` are different keys: `n` is not on the
  default ignore list (`user`, `metadata`, `store`). So a ChatOpenAI(n=1) shape
  and the Python/Node SDK's (no `n`) do not share recordings. `--ignore-field n`
  (repeat the defaults you keep) merges them, at the price that `n: 2` would then
  replay an `n: 1` recording.
- A body that starts with a UTF-8 BOM is refused with a clear 400 (not keyed).
- An upstream that gzips its JSON answers is recorded decoded; replay serves the
  plain bytes, whatever Accept-Encoding the client sent.

Setup: the Node tests need `node` and `npm` on PATH (else they are skipped, saying
so). `npm ci` runs once per session into tests/node_client/node_modules, and is
skipped when a stamp there matches package-lock.json, package.json and the node
version. tests/node_client/node_modules must be git-ignored.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fake_upstream import FakeUpstream
from support import assert_openai_error, build_request, entries, http_request

from seedtape.proxy.tapes.store import Store

CHAT = "/v1/chat/completions"

# -- the Node SDK ---------------------------------------------------------------------

NODE_DIR = Path(__file__).parent / "node_client"
NODE_CLIENT = NODE_DIR / "client.mjs"
NODE_STAMP = NODE_DIR / "node_modules" / ".seedtape-npm-ci"
PINNED_SDK = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["openai"]


def _install_stamp(node: str) -> str:
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    h = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        h.update((NODE_DIR / name).read_bytes())
    h.update(version.encode())
    return h.hexdigest()


def _npm_ci(node: str, npm: str) -> None:
    """`npm ci` into tests/node_client/node_modules, unless the stamp says it is up to date."""
    stamp = _install_stamp(node)
    lock = Path(tempfile.gettempdir()) / f"seedtape-node-client-{hashlib.sha256(str(NODE_DIR).encode()).hexdigest()[:12]}.lock"
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # parallel sessions on one checkout install once
        if NODE_STAMP.is_file() and NODE_STAMP.read_text() == stamp and (NODE_DIR / "node_modules/openai/package.json").is_file():
            return
        env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false", "npm_config_audit": "false"}
        t0 = time.monotonic()
        r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, env=env,
                           capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            pytest.fail(f"`npm ci` in {NODE_DIR} failed (exit {r.returncode}) after {time.monotonic() - t0:.1f}s; "
                        f"the Node SDK tests need the npm registry once:\n{r.stdout}\n{r.stderr}", pytrace=False)
        NODE_STAMP.write_text(stamp)


@pytest.fixture(scope="session")
def node_sdk():
    """run(base_url, scenario, **options) -> the JSON that tests/node_client/client.mjs prints."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip(f"the Node SDK tests need node and npm on PATH (node: {node or 'missing'}, npm: {npm or 'missing'})")
    _npm_ci(node, npm)

    def run(base_url: str, scenario: str, **options) -> dict:
        r = subprocess.run([node, str(NODE_CLIENT), base_url, scenario, json.dumps(options)], cwd=NODE_DIR,
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0 and r.stdout.strip(), f"node client failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["sdk_version"] == PINNED_SDK, out["sdk_version"]
        return out

    return run


def wait_for_entries(store: str, n: int, timeout: float = 10.0) -> list:
    deadline = time.monotonic() + timeout
    while len(got := entries(store)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def test_node_sdk_records_then_replays_chat_and_stream_offline(upstream, store, proxies, node_sdk):
    rec = proxies("--upstream", upstream.url, "--store", store)
    chat1 = node_sdk(rec.base_url, "chat", content="Node: what does seedtape do?")
    assert chat1["ok"], chat1
    assert chat1["headers"]["seedtape-status"] == "recorded"
    stream1 = node_sdk(rec.base_url, "stream", content="Node: stream me a story")
    assert stream1["ok"], stream1
    assert stream1["headers"]["seedtape-status"] == "recording"
    assert stream1["content"] and stream1["finish_reasons"] == ["stop"]
    assert len(stream1["chunks"]) > 3  # iterated event by event
    # The upstream saw the Node SDK as it is (its telemetry headers are kept out of the key).
    sent = upstream.requests_to("/chat/completions")
    assert len(sent) == 2
    seen = [{k.lower(): v for k, v in r["headers"].items()} for r in sent]
    assert all(h.get("user-agent", "").startswith("OpenAI/JS") for h in seen), seen
    assert any(k.startswith("x-stainless-") for k in seen[0])
    assert sent[1]["body"]["stream"] is True and sent[0]["body"]["seed"] == sent[1]["body"]["seed"] == 1234
    assert len(wait_for_entries(store, 2)) == 2
    rec.stop()
    upstream.stop()  # from here on there is no upstream at all

    rep = proxies("--mode", "replay", "--store", store, "--upstream", upstream.url)
    chat2 = node_sdk(rep.base_url, "chat", content="Node: what does seedtape do?")
    assert chat2["ok"], chat2
    assert chat2["headers"]["seedtape-status"] == "hit"
    assert chat2["headers"]["seedtape-key"] == chat1["headers"]["seedtape-key"]
    assert chat2["completion"] == chat1["completion"]  # id, created, content, usage: all as recorded
    assert chat2["completion"]["system_fingerprint"] == "fp_fake_1"
    assert chat2["request_id"] == chat1["request_id"]

    stream2 = node_sdk(rep.base_url, "stream", content="Node: stream me a story")
    assert stream2["ok"], stream2
    assert stream2["headers"]["seedtape-status"] == "hit"
    assert stream2["headers"]["seedtape-key"] == stream1["headers"]["seedtape-key"]
    assert stream2["headers"]["seedtape-fingerprint"] == "fp_fake_1"
    assert stream2["chunks"] == stream1["chunks"]  # every chunk, in order
    assert stream2["content"] == stream1["content"]
    assert {c["system_fingerprint"] for c in stream2["chunks"]} == {"fp_fake_1"}
    assert len(upstream.log) == 2


def test_node_sdk_replay_miss_is_a_404_api_error_with_seedtapes_message_and_no_retry(upstream, store, proxies, node_sdk):
    Store(store).close()  # replay needs a store (an empty one starts, with a warning)
    rep = proxies("--mode", "replay", "--store", store, "--upstream", upstream.url)
    out = node_sdk(rep.base_url, "chat", content="Node: never recorded", maxRetries=2)  # retries allowed: must not happen
    assert not out["ok"], out
    err = out["error"]
    assert err["is_api_error"] and err["class"] == "NotFoundError" and err["status"] == 404
    # The Node SDK keeps only an OpenAI-shaped error body: the message must be there.
    assert "seedtape replay miss" in err["message"] and "--mode auto" in err["message"]
    assert err["headers"]["seedtape-key"] in err["message"]
    assert err["code"] == "replay_miss" and err["type"] == "seedtape_error"
    assert err["headers"]["x-should-retry"] == "false"
    assert out["fetches"] == 1  # the SDK did not retry
    assert out["elapsed_ms"] < 3000  # a retried miss adds the SDK's backoff (>= ~1.1 s for 2 retries)
    assert upstream.log == []


def test_node_sdk_upstream_down_is_a_502_naming_the_upstream(upstream, store, proxies, node_sdk):
    url = upstream.url
    upstream.stop()
    p = proxies("--upstream", url, "--store", store)
    out = node_sdk(p.base_url, "chat", content="Node: is anyone there?", maxRetries=2)
    assert not out["ok"], out
    err = out["error"]
    assert err["is_api_error"] and err["status"] == 502 and err["class"] == "InternalServerError"
    assert url in err["message"], err["message"]
    assert err["code"] == "upstream_unreachable" and err["type"] == "seedtape_error"
    assert err["headers"]["x-should-retry"] == "false"
    assert out["fetches"] == 1
    assert entries(store) == []
    # a stream fails the same way, before any event
    out = node_sdk(p.base_url, "stream", content="Node: is anyone there?")
    assert out["error"]["status"] == 502 and url in out["error"]["message"]


# -- a stricter HTTP/1.x upstream ----------------------------------------------------------


class StrictUpstream:
    """An upstream that does what real servers do and the fake upstream does not:
    gzips JSON answers when the request accepts gzip, and answers an HTTP/1.0 request
    with a close-delimited stream (no chunked encoding). Payloads come from FakeUpstream."""

    def __init__(self) -> None:
        self.payloads = FakeUpstream()
        self.payloads.server.server_close()  # only its payload methods are used
        self.log: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.log.append({"version": self.request_version, "headers": {k.lower(): v for k, v in self.headers.items()},
                                  "body": body})
                if body.get("stream"):
                    return self._stream(outer.payloads.chat_chunks(body))
                data = json.dumps(outer.payloads.chat(body)).encode()
                gz = "gzip" in (self.headers.get("accept-encoding") or "")
                if gz:
                    data = gzip.compress(data)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                if gz:
                    self.send_header("content-encoding", "gzip")
                self.send_header("content-length", str(len(data)))
                self.send_header("x-request-id", f"req_strict_{len(outer.log)}")
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, chunks: list[dict]):
                events = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]
                chunked = self.request_version != "HTTP/1.0"
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding" if chunked else "connection", "chunked" if chunked else "close")
                self.end_headers()
                for e in events:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(e), e) if chunked else e)
                    self.wfile.flush()
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
                self.close_connection = not chunked

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def strict_upstream() -> Iterator[StrictUpstream]:
    up = StrictUpstream()
    yield up
    up.stop()


# -- raw HTTP helpers ------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-cased names
    wire: bytes  # the body as sent (after de-chunking, before content decoding)
    body: bytes  # after content decoding

    @property
    def st(self) -> str:
        return self.headers.get("seedtape-status", "")

    @property
    def key(self) -> str:
        return self.headers.get("seedtape-key", "")

    def json(self) -> dict:
        return json.loads(self.body)


def decode(headers: dict[str, str], wire: bytes) -> bytes:
    enc = headers.get("content-encoding", "identity").strip().lower()
    if enc == "gzip":
        return gzip.decompress(wire)
    assert enc in ("identity", ""), f"unexpected content-encoding {enc!r}"
    return wire


def post(proxy, body: bytes | str, headers: dict | None = None, path: str = CHAT) -> Answer:
    """One request, as curl would send it (content-type, nothing SDK-ish; accept-encoding: identity unless given)."""
    data = body.encode() if isinstance(body, str) else body
    given = {k.lower(): v for k, v in (headers or {}).items()}
    r = http_request(proxy.port, build_request("POST", path, data, {"content-type": "application/json",
                                                                     "accept-encoding": "identity", **given}), data)
    return Answer(r.status, r.headers, r.body, decode(r.headers, r.body))


def http10(proxy, body: bytes, timeout: float = 15.0) -> tuple[Answer, float]:
    """An HTTP/1.0 request without keep-alive (raw bytes: h11 writes only HTTP/1.1); reads until the proxy closes.
    Returns the answer and the seconds until the connection was closed."""
    t0 = time.monotonic()
    # a TimeoutError here means the proxy kept the connection open
    r = http_request(proxy.port, b"POST %s HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (CHAT.encode(), len(body), body),
                     timeout=timeout, until_close=True)
    closed_after = time.monotonic() - t0
    assert "chunked" not in r.headers.get("transfer-encoding", ""), f"chunked framing sent to an HTTP/1.0 client: {r.headers}"
    # h11 read the body by its content-length, if any, and nothing followed it
    return Answer(r.status, r.headers, r.body, decode(r.headers, r.body)), closed_after


def sse(body: bytes) -> list:
    """The data of every event of an SSE body: parsed JSON, or the literal "[DONE]"."""
    out = []
    for block in body.decode().replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(ln[5:].lstrip(" ") for ln in block.split("\n") if ln.startswith("data:"))
        if data:
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def streamed_text(events: list) -> str:
    return "".join((c.get("delta") or {}).get("content") or "" for e in events if isinstance(e, dict)
                   for c in e.get("choices") or [])


def usage_of(events: list) -> dict | None:
    return next((e["usage"] for e in events if isinstance(e, dict) and e.get("usage")), None)


# -- curl-style hand-written JSON -------------------------------------------------------------

# What a tool or the SDK sends: compact, its own key order.
SDK_SPELLING = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"caf\u00e9: curl a/b"}],"temperature":1,"top_p":0.5}'

# The same request, written by hand. Each must hit the recording made with SDK_SPELLING.
HAND_WRITTEN = {
    "other key order": '{"top_p":0.5,"temperature":1,"messages":[{"content":"caf\u00e9: curl a/b","role":"user"}],"model":"gpt-4o-mini"}',
    "whitespace, CRLF, tabs": ('\r\n{\r\n\t"model" : "gpt-4o-mini" ,\n  "messages": [ { "role": "user",\n'
                               '    "content": "caf\u00e9: curl a/b" } ],\n  "temperature": 1,  "top_p": 0.5\n}\n\n'),
    "1.0 for 1": SDK_SPELLING.replace('"temperature":1', '"temperature":1.0'),
    "exponents": SDK_SPELLING.replace('"temperature":1', '"temperature":1e0').replace("0.5", "5E-1"),
    "trailing zeros": SDK_SPELLING.replace("0.5", "0.50000"),
    "\\u escapes": SDK_SPELLING.replace("\u00e9", "\\u00e9").replace("a/b", "a\\/b"),
    'explicit "stream": false': SDK_SPELLING[:-1] + ',"stream":false}',
    "all of them": ('{ "stream": false, "top_p": 5e-1,\n "messages": [{"content": "caf\\u00e9: curl a\\/b", "role": "user"}],'
                    '\t"temperature": 1.0, "model": "gpt-4o-mini" }'),
}


def test_hand_written_json_spellings_replay_the_same_recording(upstream, store, proxies):
    rec = proxies("--upstream", upstream.url, "--store", store)
    first = post(rec, SDK_SPELLING)
    assert first.status == 200 and first.st == "recorded", first
    rec.stop()
    upstream.stop()

    rep = proxies("--mode", "replay", "--store", store)
    for name, spelling in HAND_WRITTEN.items():
        json.loads(spelling)  # valid JSON, as written
        r = post(rep, spelling)
        assert (r.status, r.st) == (200, "hit"), f"{name}: {r.status} {r.st} {r.body[:300]!r}"
        assert r.key == first.key, name
        assert r.body == first.body, name  # the recorded bytes
    assert len(upstream.log) == 1


def test_explicit_stream_false_records_what_a_request_without_it_replays(upstream, store, proxies):
    """LangChain sends "stream": false; recording that way serves the SDK's shape too."""
    p = proxies("--upstream", upstream.url, "--store", store)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "stream false first"}]}
    first = post(p, json.dumps({**body, "stream": False}))
    assert first.st == "recorded"
    assert upstream.log[0]["body"]["stream"] is False  # forwarded as the client wrote it
    again = post(p, json.dumps(body))
    assert again.st == "hit" and again.key == first.key and again.body == first.body
    assert len(upstream.log) == 1


def test_explicit_n_1_and_absent_n_are_different_keys_unless_n_is_ignored(upstream, store, proxies):
    """Documented behaviour: n is not on the default ignore list, so n: 1 != no n."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "how many?"}]}
    rec = proxies("--upstream", upstream.url, "--store", store)
    without_n = post(rec, json.dumps(body))
    assert without_n.st == "recorded"
    rec.stop()

    rep = proxies("--mode", "replay", "--store", store)
    miss = post(rep, json.dumps({**body, "n": 1}))
    assert (miss.status, miss.st) == (404, "miss")
    assert miss.key != without_n.key
    assert "n: (absent) != 1" in miss.headers["seedtape-miss"]  # the miss says which field
    assert "n: (absent) != 1" in miss.json()["error"]["message"]
    assert_openai_error(miss, 404, "replay_miss")
    rep.stop()

    ignore_n = ["--ignore-field", "n", "--ignore-field", "user", "--ignore-field", "metadata", "--ignore-field", "store"]
    rec = proxies("--upstream", upstream.url, "--store", store, *ignore_n)
    a = post(rec, json.dumps(body))
    b = post(rec, json.dumps({**body, "n": 1}))
    # A request without n keeps its key (nothing was removed from it): the old recording serves both.
    assert (a.st, b.st) == ("hit", "hit")
    assert a.key == b.key == without_n.key and a.body == b.body == without_n.body
    assert len(upstream.log) == 1


def test_gzip_encoded_request_bodies_share_the_plain_recording(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    plain = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"gzip me"}],"temperature":0.25}'
    rec = post(p, gzip.compress(plain.encode()), {"Content-Encoding": "gzip"})
    assert rec.st == "recorded", rec
    sent = upstream.log[0]
    assert sent["body"]["messages"][0]["content"] == "gzip me"  # the upstream got JSON it could read
    assert "content-encoding" not in {k.lower() for k in sent["headers"]}
    hit = post(p, plain)
    assert hit.st == "hit" and hit.key == rec.key and hit.body == rec.body
    # and a different spelling, gzipped, still the same key
    spelled = gzip.compress(b'{ "temperature": 2.5e-1, "messages": [{"content": "gzip me", "role": "user"}], "model": "gpt-4o-mini" }')
    hit = post(p, spelled, {"Content-Encoding": "gzip"})
    assert hit.st == "hit" and hit.key == rec.key and hit.body == rec.body
    assert len(upstream.log) == 1


def test_accept_encoding_gzip_replays_the_recorded_body_decoded(strict_upstream, store, proxies):
    up = strict_upstream
    rec = proxies("--upstream", up.url, "--store", store)
    body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"compress the answer"}]}'
    live = post(rec, body, {"Accept-Encoding": "gzip"})
    assert live.st == "recorded"
    assert live.headers.get("content-encoding") == "gzip" and live.wire != live.body  # the upstream's gzip, passed through
    recorded = wait_for_entries(store, 1)
    assert [e.body for e in recorded] == [live.body]  # stored decoded: reviewable, replayable
    # a stream asks the upstream for identity, whatever the client accepts
    streamed = post(rec, json.dumps({**json.loads(body), "messages": [{"role": "user", "content": "stream, gzip?"}],
                                     "stream": True}), {"Accept-Encoding": "gzip"})
    assert streamed.st == "recording" and sse(streamed.body)[-1] == "[DONE]"
    assert up.log[-1]["headers"].get("accept-encoding") == "identity"
    assert len(wait_for_entries(store, 2)) == 2
    rec.stop()
    up.stop()

    rep = proxies("--mode", "replay", "--store", store)
    for accept in ("gzip", "gzip, deflate, br", "identity"):
        r = post(rep, body, {"Accept-Encoding": accept})
        assert (r.status, r.st) == (200, "hit"), (accept, r)
        assert r.body == live.body, accept  # decodes to exactly what was recorded
        assert int(r.headers["content-length"]) == len(r.wire)
    r = post(rep, json.dumps({**json.loads(body), "messages": [{"role": "user", "content": "stream, gzip?"}], "stream": True}),
             {"Accept-Encoding": "gzip"})
    assert r.st == "hit" and r.body == streamed.body


def test_http10_client_without_keep_alive_records_and_replays(strict_upstream, store, proxies):
    up = strict_upstream
    rec = proxies("--upstream", up.url, "--store", store)
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "HTTP/1.0 please"}]}).encode()
    sbody = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "HTTP/1.0 stream"}],
                        "stream": True, "stream_options": {"include_usage": True}}).encode()
    live, closed = http10(rec, body)
    assert (live.status, live.st) == (200, "recorded") and closed < 5
    assert live.json()["choices"][0]["message"]["content"]
    live_stream, closed = http10(rec, sbody)  # the upstream answers close-delimited; so must the proxy
    assert (live_stream.status, live_stream.st) == (200, "recording") and closed < 5
    events = sse(live_stream.body)
    assert events[-1] == "[DONE]" and usage_of(events)
    assert [r["version"] for r in up.log] == ["HTTP/1.0", "HTTP/1.0"]
    assert len(wait_for_entries(store, 2)) == 2
    rec.stop()
    up.stop()

    rep = proxies("--mode", "replay", "--store", store)
    for _ in range(2):  # the proxy keeps serving after closing each connection
        again, closed = http10(rep, body)
        assert (again.status, again.st) == (200, "hit") and closed < 5
        assert again.body == live.body
        again_stream, closed = http10(rep, sbody)
        assert (again_stream.status, again_stream.st) == (200, "hit") and closed < 5
        assert again_stream.body == live_stream.body


def test_http10_live_stream_from_a_chunking_upstream_is_not_chunked(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)  # the fake upstream chunks whatever the version
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "1.0 chunked?"}], "stream": True})
    r, _ = http10(p, body.encode())  # asserts no chunked framing
    assert sse(r.body)[-1] == "[DONE]"


def test_body_with_a_utf8_bom_gets_a_clear_400(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    r = post(p, b"\xef\xbb\xbf" + SDK_SPELLING.encode())
    assert r.st == "error"
    err = assert_openai_error(r, 400, "invalid_request")
    assert "not valid JSON" in err["message"] and "BOM" in err["message"]
    assert upstream.log == []


def test_miss_explanation_shows_a_quoted_number_differently(upstream, store, proxies):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "quoted numbers"}], "temperature": 0.7}
    rec = proxies("--upstream", upstream.url, "--store", store)
    assert post(rec, json.dumps(body)).st == "recorded"
    rec.stop()
    rep = proxies("--mode", "replay", "--store", store)
    miss = post(rep, json.dumps({**body, "temperature": "0.7"}))
    assert miss.st == "miss"
    m = re.search(r"temperature: (.+?) != (.+?)\.(?: |$)", miss.headers["seedtape-miss"])
    assert m, miss.headers["seedtape-miss"]
    assert m.group(1) != m.group(2), miss.headers["seedtape-miss"]


# -- LangChain's request shapes ---------------------------------------------------------------

LC_MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "LangChain says hi"}]
# ChatOpenAI(temperature=0.7, n=1, stream_usage=True).invoke(...) and .stream(...), as they reach the wire
LANGCHAIN = {"model": "gpt-4o-mini", "messages": LC_MESSAGES, "stream": False, "n": 1, "temperature": 0.7}
LANGCHAIN_STREAM = {**LANGCHAIN, "stream": True, "stream_options": {"include_usage": True}}


@pytest.mark.parametrize("recorded_as", ["invoke", "stream"])
def test_langchain_invoke_and_stream_shapes_replay_each_others_recording(upstream, store, proxies, recorded_as):
    rec = proxies("--upstream", upstream.url, "--store", store)
    if recorded_as == "invoke":
        first = post(rec, json.dumps(LANGCHAIN))
        assert first.st == "recorded"
        text, usage = first.json()["choices"][0]["message"]["content"], first.json()["usage"]
    else:
        first = post(rec, json.dumps(LANGCHAIN_STREAM))
        assert first.st == "recording"
        events = sse(first.body)
        text, usage = streamed_text(events), usage_of(events)
    assert text and usage
    assert len(wait_for_entries(store, 1)) == 1
    rec.stop()
    upstream.stop()

    rep = proxies("--mode", "replay", "--store", store)
    inv = post(rep, json.dumps(LANGCHAIN))
    st = post(rep, json.dumps(LANGCHAIN_STREAM))
    assert inv.key == st.key == first.key
    assert inv.st == ("hit" if recorded_as == "invoke" else "hit; converted-from=sse")
    assert st.st == ("hit" if recorded_as == "stream" else "hit; converted-from=json")
    completion = inv.json()
    assert completion["choices"][0]["message"]["content"] == text
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["usage"] == usage
    assert completion["system_fingerprint"] == "fp_fake_1"
    events = sse(st.body)
    assert events[-1] == "[DONE]"
    assert streamed_text(events) == text
    assert usage_of(events) == usage  # include_usage asked for: the usage chunk is there
    assert {e["system_fingerprint"] for e in events if isinstance(e, dict)} == {"fp_fake_1"}
    assert [c["finish_reason"] for e in events if isinstance(e, dict) for c in e["choices"] if c["finish_reason"]] == ["stop"]
    if recorded_as == "stream":
        assert st.body == first.body  # byte for byte
    else:
        assert inv.body == first.body
    # The SDK's shape (no n) is a different request by the key rules: it misses and says why.
    sdk = {k: v for k, v in LANGCHAIN.items() if k not in ("n", "stream")}
    miss = post(rep, json.dumps(sdk))
    assert miss.st == "miss" and "n: 1 != (absent)" in miss.headers["seedtape-miss"]
    assert len(upstream.log) == 1


def test_langchain_stream_without_include_usage_drops_the_recorded_usage_chunk(upstream, store, proxies):
    rec = proxies("--upstream", upstream.url, "--store", store)
    first = post(rec, json.dumps(LANGCHAIN_STREAM))
    assert first.st == "recording" and usage_of(sse(first.body))
    assert len(wait_for_entries(store, 1)) == 1
    rec.stop()
    rep = proxies("--mode", "replay", "--store", store)
    plain = post(rep, json.dumps({k: v for k, v in LANGCHAIN_STREAM.items() if k != "stream_options"}))
    assert plain.st == "hit" and plain.key == first.key
    events = sse(plain.body)
    assert usage_of(events) is None and all(e["choices"] for e in events if isinstance(e, dict))
    assert streamed_text(events) == streamed_text(sse(first.body))
