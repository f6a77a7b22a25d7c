"""Hardening: upstream faults and client faults, through a real `seedtape serve` process.

The upstream is tests/faulty_upstream.py, a raw-socket server that misbehaves at an
exact point. Every upstream fault is checked four ways: the client gets a clear
OpenAI-shaped error (or the upstream's own error, unchanged); nothing is recorded;
a recording made earlier for the same request key keeps its exact bytes; and the
proxy serves the next request normally. Client faults (hang-ups, slow readers, slow
senders) must not stop the proxy from serving others, and must never leave a partial
recording behind.

Timing: only lower bounds, and generous upper bounds where the point is "no retry or
backoff loop". Ordering between a stuck client and the good ones is forced with events,
not sleeps.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import lmdb
import openai
import pytest
from conftest import API_KEY, chat, wait_for
from conftest import client as sdk_client
from faulty_upstream import FaultyUpstream
from support import assert_openai_error, build_request, entries, parse_response, request_bytes

from seedtape.proxy.tapes.store import Store

MODEL = "gpt-4o-mini"
TEXT = "what could possibly go wrong?"
DONE = b"data: [DONE]\n\n"


@pytest.fixture
def faulty():
    with FaultyUpstream() as up:
        yield up


_clients: list[openai.OpenAI] = []


def client(p, **kw) -> openai.OpenAI:
    """conftest's SDK client (max_retries=0 unless given), closed when the test ends."""
    c = sdk_client(p, **kw)
    _clients.append(c)
    return c


@pytest.fixture(autouse=True)
def _close_clients():
    yield
    while _clients:
        _clients.pop().close()


# -- helpers ------------------------------------------------------------------------------


def snapshot(store: str) -> dict[str, dict[bytes, bytes]]:
    """Every byte the store holds for recordings and audit events, read with a read-only Store."""
    out = {}
    with Store(store, readonly=True) as st, st.env.begin() as txn:
        for name in (b"entries", b"latest", b"events"):
            try:
                db = st.env.open_db(name, txn=txn, create=False)
            except lmdb.NotFoundError:  # no such database (yet)
                out[name.decode()] = {}
                continue
            out[name.decode()] = {bytes(k): bytes(v) for k, v in txn.cursor(db=db)}
    return out


def messages(text: str = TEXT) -> list[dict]:
    return [{"role": "user", "content": text}]


def body(text: str = TEXT, **kw) -> dict:
    return {"model": MODEL, "messages": messages(text), **kw}


def record_first(p, store: str, stream: bool = False) -> dict:
    """Record a good answer for the test's request (the faulty upstream has no fault yet); the store's bytes."""
    c = client(p)
    if stream:
        raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=messages(), stream=True)
        chunks = list(raw.parse())
        assert chunks[-1].choices[0].finish_reason == "stop"
    else:
        raw = chat(c, TEXT, model=MODEL)
        assert raw.headers["seedtape-status"] == "recorded"
    assert wait_for(lambda: len(entries(store)) == 1)
    return snapshot(store)


def settled(p, marker: str, before: int, timeout: float = 10.0) -> None:
    """Wait until the proxy logged one more ``marker`` line than ``before`` (it is done with the request)."""
    assert wait_for(lambda: p.output.count(marker) > before, timeout), p.output


def serves_normally(p, faulty: FaultyUpstream, store: str, times_recorded: int = 2) -> None:
    """With the fault gone, the same request is answered live and recorded again."""
    faulty.fault = None
    raw = chat(client(p), TEXT, model=MODEL)
    assert raw.headers["seedtape-status"] == "recorded"
    assert raw.parse().choices[0].message.content == f"faulty says: {TEXT}"
    [entry] = entries(store)
    assert entry.times_recorded == times_recorded


def raw_request(payload: dict, path: str = "/v1/chat/completions", close: bool = True) -> tuple[bytes, bytes]:
    """(head, body) of a chat completion request, as h11 writes them; a test sends them at its own pace."""
    data = json.dumps(payload).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
    if close:
        headers["connection"] = "close"
    return request_bytes(build_request("POST", path, data, headers), None), data


def read_all(sock: socket.socket) -> bytes:
    """Everything until the proxy closes the connection (a reset ends it too)."""
    data = bytearray()
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except ConnectionResetError:
        pass
    return bytes(data)


def connect(p) -> socket.socket:
    return socket.create_connection(("127.0.0.1", p.port), timeout=30)


# -- 1. upstream faults ---------------------------------------------------------------------


def test_connection_refused_is_a_clear_502_and_the_proxy_recovers(faulty, store, proxies):
    p = proxies("--upstream", faulty.url, "--store", store, "--mode", "record")
    before = record_first(p, store)
    faulty.refuse()
    c = client(p, max_retries=2)  # the SDK may retry; seedtape's x-should-retry: false must stop it
    for stream in (False, True):
        failed = p.output.count("failed, nothing recorded")
        t0 = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            c.chat.completions.create(model=MODEL, messages=messages(), stream=stream)
        assert time.monotonic() - t0 < 10  # no retry/backoff loop
        err = assert_openai_error(info.value.response, 502, "upstream_unreachable")
        assert faulty.url in err["message"]
        assert info.value.response.headers["seedtape-status"] == "error"
        settled(p, "failed, nothing recorded", failed)
        time.sleep(0.3)  # a retry's log line would be on its way by now
        assert p.output.count("failed, nothing recorded") == failed + 1  # one attempt, not three
    assert snapshot(store) == before
    faulty.listen_again()
    serves_normally(p, faulty, store)


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_timeout_before_the_headers_is_a_fast_504(faulty, store, proxies, stream):
    p = proxies("--upstream", faulty.url, "--store", store, "--mode", "record", "--upstream-timeout", "1")
    before = record_first(p, store, stream=stream)
    faulty.fault = "stall-headers"
    seen = len(faulty.requests)
    c = client(p, max_retries=2)
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        c.chat.completions.create(model=MODEL, messages=messages(), stream=stream)
    took = time.monotonic() - t0
    assert 0.9 <= took < 10  # it waited for the timeout, and no retry/backoff loop followed
    err = assert_openai_error(info.value.response, 504, "upstream_timeout")
    assert faulty.url in err["message"] and "--upstream-timeout" in err["message"]
    assert len(faulty.requests) == seen + 1  # the SDK did not retry
    # seedtape gave the stalled upstream connection up: the upstream sees it go
    answers = faulty.wait_answers(seen + 1)
    assert answers[-1][2] == "stalled before the headers; the peer left"
    settled(p, "failed, nothing recorded", 0)
    assert snapshot(store) == before
    serves_normally(p, faulty, store)


@pytest.mark.parametrize("status, exc", [(500, openai.InternalServerError), (502, openai.InternalServerError),
                                         (503, openai.InternalServerError)])
def test_upstream_5xx_reaches_the_client_unchanged(faulty, store, proxies, status, exc):
    p = proxies("--upstream", faulty.url, "--store", store, "--mode", "record")
    before = record_first(p, store)
    faulty.fault, faulty.status = "status", status
    with pytest.raises(exc) as info:
        client(p).chat.completions.create(model=MODEL, messages=messages())
    resp = info.value.response
    assert resp.status_code == status
    [(_, sent, _)] = faulty.wait_answers(2)[1:]
    assert resp.content == sent  # the upstream's own error body, byte for byte
    assert info.value.body == faulty.error_body["error"]
    assert resp.headers["x-request-id"] == "req_faulty_2"  # and its headers
    assert resp.headers["seedtape-status"] == "unrecorded"
    assert "x-should-retry" not in resp.headers  # seedtape does not decide for the upstream's own errors
    assert snapshot(store) == before
    serves_normally(p, faulty, store)


def test_upstream_429_with_retry_after_reaches_the_client_unchanged(faulty, store, proxies):
    p = proxies("--upstream", faulty.url, "--store", store, "--mode", "record")
    before = record_first(p, store, stream=True)
    faulty.fault, faulty.status = "status", 429
    faulty.error_body = {"error": {"message": "Rate limit reached for gpt-4o-mini: retry in 7s.",
                                   "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
    faulty.extra_headers = {"retry-after": "7", "x-ratelimit-remaining-requests": "0",
                            "x-ratelimit-reset-requests": "7s"}
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as info:
            client(p).chat.completions.create(model=MODEL, messages=messages(), stream=stream)
        resp = info.value.response
        assert resp.status_code == 429
        assert resp.content == json.dumps(faulty.error_body).encode()
        assert info.value.code == "rate_limit_exceeded"
        assert resp.headers["retry-after"] == "7"
        assert resp.headers["x-ratelimit-remaining-requests"] == "0"
        assert resp.headers["x-ratelimit-reset-requests"] == "7s"
        assert resp.headers["seedtape-status"] == "unrecorded"
    assert snapshot(store) == before
    serves_normally(p, faulty, store)


def test_reset_in_the_middle_of_a_json_body(faulty, store, proxies):
    p = proxies("--upstream", faulty.url, "--store", store, "--mode", "record")
    before = record_first(p, store)
    faulty.fault = "reset-body"
    failed = p.output.count("failed, nothing recorded")
    with pytest.raises(openai.APIStatusError) as info:
        client(p, max_retries=2).chat.completions.create(model=MODEL, messages=messages())
    err = assert_openai_error(info.value.response, 502)
    assert faulty.url in err["message"]
    # the half body never reaches the client as if it were an answer
    assert b"faulty says" not in info.value.response.content
    settled(p, "failed, nothing recorded", failed)
    assert len(faulty.requests) == 2  # one attempt: no retry
    assert snapshot(store) == before
    serves_normally(p, faulty, store)


def _stall_mid_body(faulty, store, proxies):
    p = proxies("--upstream", faulty.url, "--store", store, "--mode", "record", "--upstream-timeout", "1")
    before = record_first(p, store)
    faulty.fault = "stall-body"
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client(p, max_retries=2).chat.completions.create(model=MODEL, messages=messages())
    assert 0.9 <= time.monotonic() - t0 < 10
    return p, before, info.value.response


@pytest.mark.slow
def test_stall_in_the_middle_of_a_json_body(faulty, store, proxies):
    p, before, resp = _stall_mid_body(faulty, store, proxies)
    assert_openai_error(resp, resp.status_code)
    assert resp.status_code in (502, 504)
    assert b"faulty says" not in resp.content  # the half body never passes for an answer
    assert faulty.wait_answers(2)[-1][2] == "stalled in the body; the peer left"
    assert len(faulty.requests) == 2  # no retry
    settled(p, "failed, nothing recorded", 0)
    assert snapshot(store) == before
    serves_normally(p, faulty, store)


@pytest.mark.slow
def test_stall_in_the_middle_of_a_json_body_is_reported_as_a_timeout(faulty, store, proxies):
    _, _, resp = _stall_mid_body(faulty, store, proxies)
    assert_openai_error(resp, 504, "upstream_timeout")


@pytest.mark.parametrize("cut_with", ["fin", "rst"])
def test_stream_cut_in_the_middle_of_an_event(faulty, store, proxies, cut_with):
    p = proxies("--upstream", faulty.url, "--store", store, "--mode", "record")
    before = record_first(p, store, stream=True)
    faulty.fault, faulty.cut_with = "cut-stream", cut_with
    failed = p.output.count("failed, nothing recorded")
    got = []
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        for chunk in client(p).chat.completions.create(model=MODEL, messages=messages(), stream=True):
            got.append(chunk)
    assert len(got) == faulty.good_events  # the whole events before the cut reached the client, then an error
    assert got[0].choices[0].delta.role == "assistant"
    settled(p, "failed, nothing recorded", failed)
    assert snapshot(store) == before
    serves_normally(p, faulty, store)


def test_stream_cut_seen_raw_is_an_unfinished_body(faulty, store, proxies):
    """Without the SDK: the client sees the events before the cut, never a clean end or a [DONE]."""
    p = proxies("--upstream", faulty.url, "--store", store, "--mode", "record")
    before = record_first(p, store, stream=True)
    faulty.fault = "cut-stream"
    s = connect(p)
    try:
        head, data = raw_request(body(stream=True))
        s.sendall(head + data)
        (status, headers, received), complete = parse_response(read_all(s))
    finally:
        s.close()
    assert status == 200 and headers["seedtape-status"] == "recording"
    assert not complete  # the chunked body has no end: a client cannot mistake it for a whole answer
    [(_req, sent, how)] = faulty.wait_answers(2)[1:]
    assert how == "cut in an event"
    assert sent.startswith(received) and DONE not in received
    settled(p, "failed, nothing recorded", 0)
    assert snapshot(store) == before
    serves_normally(p, faulty, store)


@pytest.mark.slow
def test_stream_that_stalls_past_the_timeout_is_cut(faulty, store, proxies):
    p = proxies("--upstream", faulty.url, "--store", store, "--mode", "record", "--upstream-timeout", "1")
    before = record_first(p, store, stream=True)
    faulty.fault = "stall-stream"
    got = []
    t0 = time.monotonic()
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        for chunk in client(p).chat.completions.create(model=MODEL, messages=messages(), stream=True):
            got.append(chunk)
    took = time.monotonic() - t0
    assert 0.9 <= took < 10
    assert len(got) == faulty.good_events
    assert faulty.wait_answers(2)[-1][2] == "stalled in the stream; the peer left"  # the upstream connection went too
    settled(p, "the upstream sent nothing for 1s", 0)
    settled(p, "failed, nothing recorded", 0)
    assert snapshot(store) == before
    serves_normally(p, faulty, store)


@pytest.mark.parametrize("content_type", ["application/json", "text/html"])
def test_a_200_that_is_not_json_is_passed_on_unchanged_and_never_recorded(faulty, store, proxies, content_type):
    p = proxies("--upstream", faulty.url, "--store", store, "--mode", "record")
    before = record_first(p, store)
    faulty.fault, faulty.not_json_type = "not-json", content_type
    r = httpx.post(p.base_url + "/chat/completions", json=body(), headers={"authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200
    assert r.content == faulty.not_json_body  # the upstream's own answer, unchanged: seedtape does not invent one
    assert r.headers["content-type"] == content_type
    assert r.headers["seedtape-status"] == "unrecorded"
    settled(p, "not a JSON completion", 0)  # the log says why
    assert snapshot(store) == before
    serves_normally(p, faulty, store)


# -- 2. client faults ----------------------------------------------------------------------


def test_client_hanging_up_in_the_middle_of_its_request(faulty, store, proxies):
    p = proxies("--upstream", faulty.url, "--store", store)
    head, data = raw_request(body("cut short"))
    bad = connect(p)
    try:
        bad.sendall(head + data[: len(data) // 3])
        # while it is stuck half-way, others are served
        raw = chat(client(p), "meanwhile", model=MODEL)
        assert raw.headers["seedtape-status"] == "recorded"
    finally:
        bad.close()
    settled(p, "failed, nothing recorded", 0)
    assert [r.json["messages"][0]["content"] for r in faulty.requests] == ["meanwhile"]  # nothing half-read went on
    assert faulty.partial_requests == 0
    assert [e.request["body"]["messages"][0]["content"] for e in entries(store)] == ["meanwhile"]
    raw = chat(client(p), "cut short", model=MODEL)  # the same request, whole, is served normally
    assert raw.headers["seedtape-status"] == "recorded"


@pytest.mark.parametrize("mode", ["auto", "record"])
def test_client_hanging_up_before_the_answer(faulty, store, proxies, mode):
    p = proxies("--upstream", faulty.url, "--store", store, "--mode", mode)
    faulty.latency = 0.5  # the answer comes after the client has gone
    head, data = raw_request(body("gone before the answer"))
    with connect(p) as s:
        s.sendall(head + data)
        assert wait_for(lambda: len(faulty.requests) == 1)
    faulty.wait_answers(1)
    settled(p, "POST /v1/chat/completions", 0)
    time.sleep(0.2)
    found = entries(store)
    if found:  # a complete upstream answer may be recorded, and then only whole
        [(_req, sent, how)] = faulty.answers
        assert how == "complete"
        assert [e.body for e in found] == [sent]
    faulty.latency = 0
    raw = chat(client(p), "gone before the answer", model=MODEL)
    assert raw.headers["seedtape-status"] in (("hit", "recorded") if mode == "auto" else ("recorded",))
    assert raw.parse().choices[0].message.content == "faulty says: gone before the answer"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["auto", "record"])
def test_client_hanging_up_mid_stream_never_leaves_a_partial_recording(faulty, store, proxies, mode):
    p = proxies("--upstream", faulty.url, "--store", store, "--mode", mode)
    faulty.chunk_delay = 0.05  # the upstream is still sending when the client leaves
    c = client(p)
    stream = c.chat.completions.create(model=MODEL, messages=messages("leave after two"), stream=True)
    it = iter(stream)
    first, second = next(it), next(it)
    assert first.choices[0].delta.role == "assistant" and second.choices[0].delta.content
    stream.close()
    [(req, _sent, how)] = faulty.wait_answers(1)
    wait_for(lambda: bool(entries(store)), timeout=2)  # a recording, if any, is written once the upstream is done
    found = entries(store)
    if found:  # recorded complete: the whole stream, [DONE] included
        [entry] = found
        assert how == "complete"
        assert entry.format == "sse"
        assert entry.body == faulty.stream_body(req)
        assert entry.body.endswith(DONE)
    # the proxy keeps serving: the same request again, read to the end
    faulty.chunk_delay = 0
    raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=messages("leave after two"), stream=True)
    chunks = list(raw.parse())
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert wait_for(lambda: len(entries(store)) == 1)
    assert entries(store)[0].body.endswith(DONE)


@pytest.mark.slow
def test_stream_helper_leaving_at_a_length_finish_still_records_the_complete_answer(faulty, store, proxies):
    """The helper hangs up at the length finish; seedtape reads the upstream on to usage and [DONE], and records."""
    import pydantic

    class Answer(pydantic.BaseModel):
        answer: str

    p = proxies("--upstream", faulty.url, "--store", store)
    faulty.finish = "length"
    faulty.hold_after_finish = threading.Event()  # usage and [DONE] come only after the client has left
    try:
        with pytest.raises(openai.LengthFinishReasonError), client(p).chat.completions.stream(
                model=MODEL, messages=messages("structured"), response_format=Answer,
                stream_options={"include_usage": True}) as s:
            for _ in s:
                pass
    finally:
        faulty.hold_after_finish.set()
    [(req, _sent, how)] = faulty.wait_answers(1)
    wait_for(lambda: bool(entries(store)), timeout=3)
    found = entries(store)
    assert found, f"nothing recorded; the upstream's answer: {how}"
    [entry] = found
    assert entry.body == faulty.stream_body(req) and entry.body.endswith(DONE)
    assert entry.sse_chunks()[-1]["usage"]["total_tokens"] == 8
    assert p.logged("(the client left before the end)"), p.output  # logged like any recorded request
    assert "failed, nothing recorded" not in p.output
    # and it replays: the same helper call is served from the store
    with pytest.raises(openai.LengthFinishReasonError), client(p).chat.completions.stream(
            model=MODEL, messages=messages("structured"), response_format=Answer,
            stream_options={"include_usage": True}) as s:
        for _ in s:
            pass
    assert len(faulty.requests) == 1


def _big_stream(faulty: FaultyUpstream) -> None:
    """A stream larger than every socket buffer between proxy and client, so a slow reader holds the proxy back."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            wmem = int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        wmem = 4 << 20
    faulty.pad = 32 * 1024
    faulty.events = (2 * wmem + (2 << 20)) // faulty.pad


@pytest.mark.slow
@pytest.mark.parametrize("timeout", [
    "600",
    "1",
], ids=["default-timeout", "timeout-1s"])
def test_slow_reader_gets_the_whole_stream_and_others_are_served(faulty, store, proxies, timeout):
    _big_stream(faulty)
    p = proxies("--upstream", faulty.url, "--store", store, "--upstream-timeout", timeout)
    payload = body("read me slowly", stream=True)
    head, data = raw_request(payload)
    others_done = threading.Event()
    slow_phase = threading.Event()
    result: dict = {}

    def slow_reader() -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small window: the proxy feels the slowness
        s.settimeout(30)
        try:
            s.connect(("127.0.0.1", p.port))
            s.sendall(head + data)
            got = bytearray()
            t0 = time.monotonic()
            slow_phase.set()
            # a few bytes at a time, until the others were served and at least 3 s went by (at most 10 s)
            while (not others_done.is_set() or time.monotonic() - t0 < 3) and time.monotonic() - t0 < 10:
                chunk = s.recv(16)
                if not chunk:
                    break
                got += chunk
                time.sleep(0.002)
            result["slow_bytes"] = len(got)
            got += read_all(s)  # then the rest at full speed
            result["data"] = bytes(got)
        except Exception as e:
            result["error"] = e
        finally:
            s.close()

    t = threading.Thread(target=slow_reader, daemon=True)
    t.start()
    try:
        assert slow_phase.wait(10)
        assert wait_for(lambda: len(faulty.requests) >= 1)
        c = client(p)
        for i in range(3):  # served while the slow reader holds its stream
            raw = chat(c, f"meanwhile {i}", model=MODEL)
            assert raw.headers["seedtape-status"] == "recorded"
    finally:
        others_done.set()
        t.join(60)
    assert not t.is_alive()
    assert "error" not in result, result.get("error")
    (status, headers, received), complete = parse_response(result["data"])
    req = next(r for r in faulty.requests if r.stream)
    expected = faulty.stream_body(req)
    assert result["slow_bytes"] < len(expected)  # it was still reading slowly while the others were served
    assert status == 200 and headers["seedtape-status"] == "recording"
    assert complete and received == expected  # every byte, in order
    assert wait_for(lambda: any(e.format == "sse" for e in entries(store)))
    [entry] = [e for e in entries(store) if e.format == "sse"]
    assert entry.body == expected


@pytest.mark.slow
def test_request_body_sent_slower_than_the_timeout(faulty, store, proxies):
    p = proxies("--upstream", faulty.url, "--store", store, "--upstream-timeout", "1")
    head, data = raw_request(body("a slow sender " + "." * 200))
    stuck = threading.Event()
    others_done = threading.Event()
    result: dict = {}

    def dribble() -> None:
        s = connect(p)
        try:
            t0 = time.monotonic()
            s.sendall(head)
            pieces = [data[i:i + 16] for i in range(0, len(data), 16)]
            half = len(pieces) // 2
            for n, piece in enumerate(pieces):
                if n == half:
                    stuck.set()
                    others_done.wait(30)
                s.sendall(piece)
                time.sleep(3.0 / len(pieces))  # about 3 s for the whole body
            result["sent_in"] = time.monotonic() - t0
            result["data"] = read_all(s)
        except Exception as e:
            result["error"] = e
        finally:
            s.close()

    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    try:
        assert stuck.wait(30)
        c = client(p)
        for i in range(3):  # the bad client is half-way through its body
            assert chat(c, f"meanwhile {i}", model=MODEL).headers["seedtape-status"] == "recorded"
        stream = c.chat.completions.create(model=MODEL, messages=messages("meanwhile, streamed"), stream=True)
        assert list(stream)[-1].choices[0].finish_reason == "stop"
        assert not result  # still sending
    finally:
        others_done.set()
        t.join(30)
    assert "error" not in result, result.get("error")
    assert result["sent_in"] >= 2.5  # well past --upstream-timeout
    (status, headers, received), complete = parse_response(result["data"])
    # the upstream timeout is about the upstream: a slow client is not timed out, its request is served
    assert status == 200 and complete, received
    assert headers["seedtape-status"] == "recorded"
    assert json.loads(received)["choices"][0]["message"]["content"] == f"faulty says: a slow sender {'.' * 200}"
    slow = [r for r in faulty.requests if r.json["messages"][0]["content"].startswith("a slow sender")]
    assert len(slow) == 1 and slow[0].json["seed"] == 1234


@pytest.mark.slow
def test_client_leaving_during_a_stall_leaves_no_timeout_error_behind(faulty, store, proxies):
    """A timed-out request whose client is gone must not hand its 504 to the next client's error."""
    p = proxies("--upstream", faulty.url, "--store", store, "--upstream-timeout", "1")
    faulty.fault = "stall-headers"
    head, data = raw_request(body("nobody waits for me"))
    with connect(p) as s:
        s.sendall(head + data)
        assert wait_for(lambda: len(faulty.requests) == 1)
    [(_, _, how)] = faulty.wait_answers(1)
    assert how == "stalled before the headers; the peer left"  # seedtape dropped the upstream connection too
    time.sleep(1.5)  # past the timeout the request would have had
    faulty.refuse()
    with pytest.raises(openai.APIStatusError) as info:
        chat(client(p), "refused, not timed out", model=MODEL)
    assert_openai_error(info.value.response, 502, "upstream_unreachable")
    faulty.listen_again()
    faulty.fault = None
    assert chat(client(p), "and then served", model=MODEL).headers["seedtape-status"] == "recorded"
    assert len(entries(store)) == 1


@pytest.mark.slow
def test_concurrent_timeouts_and_good_requests(faulty, store, proxies):
    """Several stalled upstream calls time out together, each with its own 504; good calls go on meanwhile."""
    import concurrent.futures

    p = proxies("--upstream", faulty.url, "--store", store, "--upstream-timeout", "1")
    faulty.fault = "stall-headers"
    c = client(p, max_retries=0)

    def stalled(i: int):
        try:
            c.chat.completions.create(model=MODEL, messages=messages(f"stalled {i}"))
        except openai.APIStatusError as e:
            return e.response
        return None

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(stalled, i) for i in range(4)]
        assert wait_for(lambda: len(faulty.requests) == 4)
        faulty.fault = None  # new upstream calls are answered at once
        good = chat(client(p), "not stalled", model=MODEL)
        assert good.headers["seedtape-status"] == "recorded"
        responses = [f.result(timeout=20) for f in futures]
    for r in responses:
        assert r is not None
        assert_openai_error(r, 504, "upstream_timeout")
    assert [e.request["body"]["messages"][0]["content"] for e in entries(store)] == ["not stalled"]
