"""How the proxy ends client connections (issue 15, point 5), through a real `seedtape serve`.

Early errors: a request refused before its body is read (a 413 over --max-body) gets its
answer, then EOF, while the proxy reads and drops what the client still sends; the
connection is then closed, so no file descriptor is left behind. Clients leaving a
stream: the upstream answer is read to its end and recorded once the upstream completed
it; a cut upstream still records nothing.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import threading
import time

import httpx
import pytest
from conftest import API_KEY, chat, client, wait_for
from support import assert_openai_error, build_request, entries, parse_response, request_bytes

MAX_BODY = 1000
DONE = b"data: [DONE]\n\n"
LONG = " ".join(f"word{i}" for i in range(12))  # the fake upstream echoes it: one event per word


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fds_settle(pid: int, at_most: int, timeout: float = 10.0) -> int:
    """The proxy's open descriptors once they are down to ``at_most`` (or after ``timeout``)."""
    wait_for(lambda: open_fds(pid) <= at_most, timeout)
    return open_fds(pid)


def head(length: int | None = None, *, chunked: bool = False, stream: bool = False, payload: bytes = b"") -> bytes:
    headers = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
    if chunked:
        headers["transfer-encoding"] = "chunked"
    elif length is not None:
        headers["content-length"] = str(length)
    return request_bytes(build_request("POST", "/v1/chat/completions", payload, headers), None)


def read_to_eof(sock: socket.socket) -> tuple[bytes, str]:
    """Everything the proxy sends until it closes; how it ended: "eof", "reset" or "timeout"."""
    data = bytearray()
    try:
        while chunk := sock.recv(1 << 16):
            data += chunk
    except ConnectionResetError:
        return bytes(data), "reset"
    except TimeoutError:
        return bytes(data), "timeout"
    return bytes(data), "eof"


def refused_while_sending(port: int, declared: int, send: int) -> tuple[bytes, str, int, OSError | None]:
    """A request declaring ``declared`` body bytes whose client goes on sending (up to ``send`` bytes) while
    it reads the answer: (what it read, how that ended, bytes sent, the error that stopped the sending)."""
    data, sent, error, how = bytearray(), 0, None, "timeout"
    piece = b"x" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head(declared))
        s.setblocking(False)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            sending = error is None and sent < send
            readable, writable, _ = select.select([s], [s] if sending else [], [], 0.2)
            if writable:
                try:
                    sent += s.send(piece[: send - sent])
                except BlockingIOError:
                    pass
                except OSError as e:
                    error = e
            if readable:
                try:
                    chunk = s.recv(1 << 16)
                except ConnectionResetError:
                    how = "reset"
                    break
                if not chunk:
                    how = "eof"
                    break
                data += chunk
    return bytes(data), how, sent, error


def assert_413_then_eof(data: bytes, how: str) -> None:
    assert how == "eof", (how, data[:300])
    (status, headers, body), complete = parse_response(data)
    assert status == 413 and complete, data[:300]
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_too_large"


# -- early errors -----------------------------------------------------------------------------


@pytest.mark.slow
def test_500_refused_requests_get_their_413_then_eof_and_leave_no_descriptor(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store, "--max-body", str(MAX_BODY))
    pid = p.proc.pid
    assert chat(client(p), "warm up").headers["seedtape-status"] == "recorded"  # store, pools, upstream: opened once
    before = fds_settle(pid, 0, timeout=0.5)
    for i in range(500):  # each client is still sending its body (a part of it) when the answer comes
        t0 = time.monotonic()
        data, how, sent, error = refused_while_sending(p.port, 10_000_000, 256 * 1024)
        assert time.monotonic() - t0 < 5, i
        assert_413_then_eof(data, how)
        assert error is None, (i, sent, error)  # the proxy read what it was sent: no reset
    after = fds_settle(pid, before + 2)
    assert after <= before + 2, f"{after - before} descriptors more after 500 refused requests"
    assert len(upstream.log) == 1  # none of them went upstream
    assert chat(client(p), "still serving").headers["seedtape-status"] == "recorded"


def test_a_client_still_sending_gets_the_413_and_eof_while_the_proxy_drains(upstream, store, proxies):
    """Before: the proxy answered, stopped reading and never closed; the client waited forever."""
    p = proxies("--upstream", upstream.url, "--store", store, "--max-body", str(MAX_BODY))
    before = fds_settle(p.proc.pid, 0, timeout=0.5)
    data, how, sent, error = refused_while_sending(p.port, 200_000_000, 4_000_000)
    assert_413_then_eof(data, how)
    assert error is None, (sent, error)  # drained, not reset
    assert fds_settle(p.proc.pid, before) == before  # closed once the client closed


def test_a_client_that_sends_its_whole_body_before_reading_gets_the_413(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store, "--max-body", str(MAX_BODY))
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(head(3_000_000) + b"x" * 3_000_000)  # drained by the proxy: no broken pipe, no reset
        data, how = read_to_eof(s)
    assert_413_then_eof(data, how)


@pytest.mark.parametrize("size, chunked", [(3_000_000, False), (30_000_000, True)], ids=["content-length", "chunked"])
def test_an_sdk_like_client_sending_an_oversized_body_reads_the_413(upstream, store, proxies, size, chunked):
    """httpx (under the openai SDK) sends its body before it reads; chunked, the limit is met as the body is read."""
    p = proxies("--upstream", upstream.url, "--store", store, "--max-body", str(MAX_BODY))
    data = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "' + b"y" * size + b'"}]}'
    content = iter([data[i : i + 65536] for i in range(0, len(data), 65536)]) if chunked else data
    r = httpx.post(
        p.base_url + "/chat/completions",
        content=content,
        timeout=20,
        headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
    )
    assert_openai_error(r, 413, "request_too_large")
    assert r.headers["connection"] == "close"
    assert upstream.log == []


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_client_that_sends_nothing_more_is_closed_after_the_linger(upstream, store, proxies, chunked):
    """A client that keeps its socket open after the answer: closed within seconds. With a content-length it
    sent none of its body; chunked, all of it: a first chunk, then one over the limit and the last chunk
    in one write (mitmproxy reads on to the end of the body after the early answer)."""
    p = proxies("--upstream", upstream.url, "--store", store, "--max-body", str(MAX_BODY))
    before = fds_settle(p.proc.pid, 0, timeout=0.5)
    with socket.create_connection(("127.0.0.1", p.port), timeout=15) as s:
        if chunked:
            s.sendall(head(chunked=True) + b"10\r\n" + b"x" * 16 + b"\r\n")
            time.sleep(0.3)  # the request headers were handled: the rest is read as it comes
            s.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (2 * MAX_BODY, b"x" * 2 * MAX_BODY))
        else:
            s.sendall(head(5000))
        data, how = read_to_eof(s)  # the 413, then EOF at once (the proxy half-closes)
        assert_413_then_eof(data, how)
        if not chunked:  # (chunked, the whole body was read: the proxy closes at once)
            assert open_fds(p.proc.pid) == before + 1  # still reading what the client might send
        t0 = time.monotonic()
        assert fds_settle(p.proc.pid, before, timeout=12) == before  # then closed, the client still silent
        assert time.monotonic() - t0 < 10
    assert "crashed" not in p.output and "Traceback" not in p.output, p.output
    assert chat(client(p), "still serving").headers["seedtape-status"] == "recorded"


# -- clients leaving a stream -------------------------------------------------------------------


def leave_after(p, events: int, *, reset: bool = False) -> bytes:
    """Send a streamed chat completion, read ``events`` events, hang up (with an RST when ``reset``)."""
    payload = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": LONG}]}).encode()
    s = socket.create_connection(("127.0.0.1", p.port), timeout=15)
    try:
        s.sendall(head(len(payload), payload=payload) + payload)
        got = b""
        while got.count(b"data: ") < events:
            chunk = s.recv(1 << 16)
            assert chunk, got
            got += chunk
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    finally:
        s.close()
    return got


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_a_stream_the_client_left_is_recorded_once_the_upstream_completes_it(upstream, store, proxies, reset):
    p = proxies("--upstream", upstream.url, "--store", store)
    before = fds_settle(p.proc.pid, 0, timeout=0.5)
    upstream.gate = threading.Event()  # [DONE] waits until the client has gone
    upstream.chunk_delay = 0.02
    got = leave_after(p, 2, reset=reset)
    assert b"seedtape-status: recording" in got
    time.sleep(0.3)  # the proxy sees the client go while the upstream still streams
    assert entries(store) == []
    upstream.gate.set()
    assert wait_for(lambda: len(entries(store)) == 1), p.output
    [entry] = entries(store)
    assert entry.format == "sse" and entry.body.endswith(DONE)
    assert entry.sse_chunks()[-1]["choices"][0]["finish_reason"] == "stop"
    assert p.logged("(the client left before the end)"), p.output
    line = next(x for x in p.output.splitlines() if "(the client left before the end)" in x)
    assert "seedtape: recorded POST /v1/chat/completions key=" in line and "-> 200" in line
    assert "failed, nothing recorded" not in p.output
    assert len(upstream.log) == 1  # read on, never sent again
    assert fds_settle(p.proc.pid, before + 1) <= before + 1  # the upstream connection may stay pooled
    upstream.chunk_delay, upstream.gate = 0, None
    raw = chat(client(p), LONG, stream=True)
    assert raw.headers["seedtape-status"] == "hit"  # it replays
    assert list(raw.parse())[-1].choices[0].finish_reason == "stop"
    assert len(upstream.log) == 1


def test_a_stream_the_client_left_then_cut_by_the_upstream_records_nothing(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    upstream.stream_fault = "cut"  # half-way through its events
    upstream.chunk_delay = 0.1
    leave_after(p, 1)
    assert p.logged("failed, nothing recorded"), p.output
    line = next(x for x in p.output.splitlines() if "failed, nothing recorded" in x)
    assert "(the client had left before the end)" in line
    time.sleep(0.2)
    assert entries(store) == []
    upstream.stream_fault, upstream.chunk_delay = None, 0
    raw = chat(client(p), LONG)  # the proxy keeps serving, and records the same request whole
    assert raw.headers["seedtape-status"] == "recorded"
    assert len(entries(store)) == 1


@pytest.mark.slow
def test_a_stream_the_client_left_still_times_out(upstream, store, proxies):
    """--upstream-timeout bounds the reading on: an upstream that stalls after the client left is cut."""
    p = proxies("--upstream", upstream.url, "--store", store, "--upstream-timeout", "1")
    before = fds_settle(p.proc.pid, 0, timeout=0.5)
    upstream.gate = threading.Event()  # never set in time: [DONE] does not come
    try:
        leave_after(p, 2)
        assert p.logged("the upstream sent nothing for 1s; aborted, nothing recorded"), p.output
        assert p.logged("failed, nothing recorded"), p.output
        assert fds_settle(p.proc.pid, before) == before  # both connections closed
    finally:
        upstream.gate.set()
    time.sleep(0.3)
    assert entries(store) == []
    upstream.gate = None
    assert chat(client(p), LONG).headers["seedtape-status"] == "recorded"


def test_a_stream_the_client_left_is_still_in_flight_for_a_graceful_stop(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store, "--grace", "20")
    upstream.gate = threading.Event()
    leave_after(p, 2)
    time.sleep(0.3)
    p.proc.send_signal(signal.SIGTERM)
    assert p.logged("waiting up to 20s for 1 exchange in flight"), p.output
    upstream.gate.set()
    assert p.proc.wait(15) == 0
    p.stop()
    assert "seedtape: stopped; no exchange was cut" in p.output
    assert "(the client left before the end)" in p.output
    assert len(entries(store)) == 1
