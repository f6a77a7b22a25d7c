"""An upstream (or an old store) that answers with hostile values: nothing it sends reaches a client
as a header of its own, breaks a replay, or prints raw control characters.

The hostile upstream here writes raw bytes, so it can send what a well-behaved server never
would: CR/LF in ``system_fingerprint``, header values that are not UTF-8, escape sequences
in ``model``. Each test says which part of the untrusted-input rules it pins.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from conftest import chat, client

from seedtape.proxy.key.canonical import canonicalize
from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.store import Store

INJECTED_FP = "fp_a\r\nset-cookie: pwn=1\r\nx-injected: yes"
CHAT = "/v1/chat/completions"


class HostileUpstream:
    """Answers every request with ``status``, the raw header lines in ``headers`` and ``body``."""

    def __init__(self) -> None:
        self.status_line = b"HTTP/1.1 200 OK"
        self.headers: list[bytes] = []
        self.body = b""
        self.requests = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def answer_json(self, doc: dict, *extra_headers: bytes) -> None:
        self.body = json.dumps(doc).encode()
        self.headers = [b"content-type: application/json", *extra_headers]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            buf = b""
            try:
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buf += data
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    while len(buf) < length:
                        buf += conn.recv(65536)
                    buf = buf[length:]
                    self.requests += 1
                    lines = [self.status_line, *self.headers, b"content-length: %d" % len(self.body)]
                    conn.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + self.body)
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@pytest.fixture
def hostile():
    up = HostileUpstream()
    yield up
    up.close()


def completion(fp: str = "fp_ok", model: str = "gpt-4o-mini") -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model, "system_fingerprint": fp,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}]}


def post(proxy, body: dict | None = None, *, raw: bytes | None = None, path: str = CHAT) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body or {"model": "m", "messages": [{"role": "user", "content": "q"}]}).encode()
    return httpx.post(proxy.origin + path, content=content, headers={"content-type": "application/json"}, timeout=30)


def no_injection(r: httpx.Response) -> None:
    names = {k.lower() for k in r.headers}
    assert "x-injected" not in names and "pwn=1" not in r.headers.get("set-cookie", ""), dict(r.headers)
    for k, v in r.headers.items():
        assert "\r" not in v and "\n" not in v, (k, v)


def test_a_fingerprint_with_crlf_splits_no_response_and_is_not_recorded(upstream, store, proxies):
    upstream.fingerprint = INJECTED_FP
    p = proxies("--upstream", upstream.url, "--store", store)
    for _ in range(2):  # live, then live again: nothing was recorded to serve
        r = post(p)
        assert r.status_code == 200
        no_injection(r)
        assert r.headers["seedtape-status"] == "unrecorded"
        assert r.headers["seedtape-fingerprint"] == "fp_a\\r\\nset-cookie: pwn=1\\r\\nx-injected: yes"
    assert p.logged("system_fingerprint is unusable")
    assert "\r" not in p.output and "\nset-cookie" not in p.output
    with Store(store, readonly=True) as st:
        assert list(st.entries()) == []


def test_a_streamed_fingerprint_with_crlf_is_not_recorded(upstream, store, proxies):
    upstream.fingerprint = INJECTED_FP
    p = proxies("--upstream", upstream.url, "--store", store)
    with httpx.stream("POST", p.origin + CHAT, json={"model": "m", "stream": True,
                                                     "messages": [{"role": "user", "content": "q"}]}) as r:
        no_injection(r)
        body = r.read()
    assert b"[DONE]" in body
    assert p.logged("system_fingerprint is unusable")
    with Store(store, readonly=True) as st:
        assert list(st.entries()) == []


def _put_old_entry(store: str, fp: str, headers: list[list[str]]) -> str:
    """An entry as a store written before the rules tightened could hold it."""
    canonical = canonicalize("POST", CHAT, "", {"model": "m", "messages": [{"role": "user", "content": "q"}], "seed": 1234})
    with Store(store) as st:
        st.put(TapeEntry(key=canonical.key, fingerprint=fp, endpoint="chat.completions", request=canonical.to_json(),
                         status=200, headers=headers, body=json.dumps(completion(fp)).encode(), model="m"))
    return canonical.key


def test_replay_of_a_stored_crlf_fingerprint_escapes_it(store, proxies):
    key = _put_old_entry(store, INJECTED_FP, [["x-request-id", "req_1"]])
    p = proxies("--mode", "replay", "--store", store)
    r = post(p)
    assert r.status_code == 200 and r.headers["seedtape-status"] == "hit"
    assert r.headers["seedtape-key"] == key
    no_injection(r)
    assert r.headers["x-request-id"] == "req_1"


def test_replay_never_fails_on_a_stored_header_and_serves_only_safe_ones(store, proxies):
    bad = b"a\x01b\x7f\xff\xfe".decode("utf-8", "surrogateescape")
    _put_old_entry(store, "fp_ok", [["x-ratelimit-limit-requests", bad], ["location", "https://evil.example"],
                                    ["access-control-allow-origin", "*"], ["content-length", "5"],
                                    ["transfer-encoding", "chunked"], ["content-encoding", "gzip"],
                                    ["x-request-id", "req_ok"]])
    p = proxies("--mode", "replay", "--store", store)
    r = post(p)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "hi"
    names = {k.lower() for k in r.headers}
    assert not names & {"location", "access-control-allow-origin", "transfer-encoding", "content-encoding",
                        "x-ratelimit-limit-requests"}, names
    assert r.headers["content-length"] == str(len(r.content))
    assert r.headers["x-request-id"] == "req_ok"


def test_a_non_utf8_header_value_from_the_upstream_is_not_recorded(hostile, store, proxies):
    hostile.answer_json(completion(), b"x-ratelimit-remaining-requests: a\x01b\x7f\xff\xfe",
                        b"x-ratelimit-limit-requests: 100", b"x-request-id: req_raw")
    p = proxies("--upstream", hostile.url, "--store", store)
    assert post(p).headers["seedtape-status"] == "recorded"
    p.stop()
    with Store(store, readonly=True) as st:
        (entry,) = list(st.entries())
    assert entry.headers == [["content-type", "application/json"], ["x-ratelimit-limit-requests", "100"],
                             ["x-request-id", "req_raw"]]
    rep = proxies("--mode", "replay", "--store", store)
    r = post(rep)
    assert r.status_code == 200 and r.headers["seedtape-status"] == "hit"
    assert r.headers["x-ratelimit-limit-requests"] == "100"


def test_escape_sequences_from_the_upstream_reach_no_log_line_and_no_terminal(hostile, store, proxies):
    fp, model = "fp_\x1b[2J", "gpt\x1b]0;pwned\x07-\x9bmini\u202e"
    hostile.answer_json(completion(fp, model))
    p = proxies("--upstream", hostile.url, "--store", store)
    r = post(p)
    assert r.headers["seedtape-fingerprint"] == "fp_\\x1b[2J"
    assert p.logged("fp=fp_\\x1b[2J")
    assert "\x1b" not in p.output and "\x9b" not in p.output
    # The fingerprint is unusable (a control character): the answer went live, nothing was stored.
    assert r.headers["seedtape-status"] == "unrecorded"


def test_inspection_commands_escape_recorded_control_characters(store):
    model, ns = "gpt\x1b]0;TITLE\x07\x9b2J\u202e", "ns\x1b[2J\r"
    canonical = canonicalize("POST", CHAT, "", {"model": model, "messages": [{"role": "user", "content": "a\x1b[31mred"}]},
                             namespace=ns)
    body = json.dumps(completion("fp_ok", model)).encode()
    with Store(store) as st:
        st.put(TapeEntry(key=canonical.key, fingerprint="fp_ok", endpoint="chat.completions",
                         request=canonical.to_json(), status=200, headers=[], body=body, model=model, namespace=ns))
    for args in (["ls"], ["ls", "--json"], ["show", canonical.key[:12]], ["show", canonical.key[:12], "--json"]):
        out = subprocess.run([sys.executable, "-m", "seedtape", *args, "--store", store], capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr
        text = out.stdout.decode("utf-8")
        for c in ("\x1b", "\x07", "\x9b", "\u202e", "\r"):
            assert c not in text, (args, c, text)
        if "--json" in args:
            doc = json.loads(text)  # still valid JSON, and the values come back exactly
            first = doc[0] if isinstance(doc, list) else doc
            assert first["model"] == model


def test_a_lone_surrogate_on_a_replay_miss_is_explained_not_a_500(upstream, store, proxies):
    rec = proxies("--upstream", upstream.url, "--store", store)
    chat(client(rec), "recorded question")
    rec.stop()
    p = proxies("--mode", "replay", "--store", store)
    r = post(p, raw=b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "lone \\ud800 here"}]}')
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "replay_miss"
    assert "\\ud800" in r.headers["seedtape-miss"]
    assert p.logged("miss POST /v1/chat/completions")
    assert "Traceback" not in p.output


def test_query_strings_never_reach_the_log(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store, "--auth-token", "right-token")
    r = httpx.post(p.origin + CHAT + "?seedtape-token=wrong-SECRET-token&api-version=2024", json={"model": "m"})
    assert r.status_code == 401
    ok = httpx.post(p.origin + CHAT + "?api-version=SECRETVALUE", headers={"seedtape-token": "right-token"},
                    json={"model": "m", "messages": [{"role": "user", "content": "q"}]})
    assert ok.status_code == 200
    assert p.logged("-> 401") and p.logged(f"key={ok.headers['seedtape-key'][:12]}")
    assert "SECRET" not in p.output


def test_a_chunked_request_with_trailers_is_served_and_the_connection_survives(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "trailers"}]}).encode()
    chunked = b"%x\r\n%s\r\n0\r\nx-checksum: abc\r\n\r\n" % (len(body), body)
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
               b"transfer-encoding: chunked\r\n\r\n" + chunked)
    plain = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
             b"content-length: %d\r\n\r\n%s" % (len(body), body))
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        f = s.makefile("rb")
        statuses = []
        for data in (plain, request, plain):  # recorded; keyed alike despite the trailers; the connection lives on
            s.sendall(data)
            status = f.readline()
            headers = {}
            while (line := f.readline()) not in (b"\r\n", b""):
                k, _, v = line.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            f.read(int(headers["content-length"]))
            statuses.append((status.split()[1], headers.get("seedtape-status")))
    assert statuses == [(b"200", "recorded"), (b"200", "hit"), (b"200", "hit")]
    time.sleep(0.1)
    assert "has crashed" not in p.output and "Traceback" not in p.output
    assert p.logged(f"recorded POST {CHAT}")


def test_every_seedtape_header_value_is_safe_whatever_the_namespace(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    ns = "/_seedtape/mode=replay,ns=a%0d%0aset-cookie:%20pwn=1%1b/v1/chat/completions"
    r = post(p, path=ns)
    assert r.status_code == 404
    no_injection(r)
    assert "pwn" not in r.headers.get("set-cookie", "")


@pytest.mark.parametrize("status", [101, 204, 304, 302, 500])
def test_a_stored_status_seedtape_never_records_fails_closed(store, proxies, status):
    canonical = canonicalize("POST", CHAT, "", {"model": "m", "messages": [{"role": "user", "content": "q"}], "seed": 1234})
    with Store(store) as st:
        st.put(TapeEntry(key=canonical.key, fingerprint="fp_ok", endpoint="chat.completions",
                         request=canonical.to_json(), status=status, headers=[["location", "https://evil.example"]],
                         body=json.dumps(completion()).encode(), model="m"))
    p = proxies("--mode", "replay", "--store", store)
    for _ in range(2):  # the connection handler survives: the next request is answered the same way
        r = post(p)
        assert r.status_code == 500 and r.json()["error"]["code"] == "seedtape_internal_error", r.text
        assert f"status {status}" in r.json()["error"]["message"]
        assert "location" not in r.headers
