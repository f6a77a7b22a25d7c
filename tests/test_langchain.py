"""The real LangChain client (langchain-openai's ChatOpenAI and OpenAIEmbeddings) end to end
through a real `seedtape serve` and the fake upstream.

tests/test_other_clients.py checks hand-written LangChain request *shapes* over raw HTTP;
here the real ChatOpenAI builds and sends the requests, reads the answers, assembles
streams and tool calls, and raises the errors a LangChain user sees.

What langchain-openai 1.7.4 (over openai 3.x) sends on the wire, as the fake upstream logs it
(the proxy adds `seed` when the client sent none):

- ``invoke``/``ainvoke``: ``model``, ``stream: false``, ``messages`` and only the parameters
  that were set (``temperature``, ``seed``, ``tools``, ...). No ``n`` unless ``n=`` is given,
  so a default ChatOpenAI shares recordings with the plain openai SDK (``stream: false`` does
  not enter the key); ``ChatOpenAI(n=1)`` sends ``"n": 1``, a different key.
- ``stream``/``astream``: the same with ``stream: true``; ``stream_options.include_usage`` only
  with ``stream_usage=True``, which ChatOpenAI turns on by itself only for the default OpenAI
  base URL (never for a proxy given as ``base_url`` or ``OPENAI_BASE_URL``).
- OpenAIEmbeddings(check_embedding_ctx_length=False): ``model``, ``input`` (a list) and
  ``encoding_format: "base64"``; no tiktoken needed.

Nothing here may reach the network: LangSmith tracing is off, OpenAI/LangSmith variables are
cleared, and a guard fails the test if anything in this process connects beyond loopback.
``include_response_headers=True`` (a ChatOpenAI option) puts seedtape's headers in
``response_metadata["headers"]`` (for a stream: in the first chunk's).
"""

from __future__ import annotations

import functools
import ipaddress
import operator
import re
import socket

import openai
import pytest
from conftest import API_KEY, chat, client, wait_for
from support import assert_openai_error, entries, get_entry

pytest.importorskip("langchain_openai", reason="the LangChain tests need langchain-openai (in the [test] extra)")
from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

try:  # the HTTP library the openai SDK itself uses (openai 3.x: httpx2; older: httpx)
    import httpx2 as sdk_http
except ImportError:  # pragma: no cover
    import httpx as sdk_http

MODEL = "gpt-4o-mini"
DUMMY_KEY = "sk-anything-for-replay"
KEY_RE = re.compile(r"\b[0-9a-f]{64}\b")

_NETWORK_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE", "OPENAI_ORG_ID", "OPENAI_ORGANIZATION",
                "OPENAI_PROXY", "LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGSMITH_ENDPOINT", "LANGCHAIN_ENDPOINT",
                "LANGSMITH_GATEWAY_API_KEY", "LANGSMITH_GATEWAY_URL", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                "http_proxy", "https_proxy", "all_proxy")


def _loopback(host) -> bool:
    if not isinstance(host, str):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No tracing, no real keys or URLs from the environment, no connection beyond loopback."""
    for name in _NETWORK_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in ("LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING", "LANGSMITH_TRACING", "LANGSMITH_TRACING_V2"):
        monkeypatch.setenv(name, "false")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    attempts: list[object] = []
    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            attempts.append(address)
            raise OSError(f"test_langchain: network access to {address!r} is not allowed")

    def connect(sock, address):
        check(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        check(sock, address)
        return real_connect_ex(sock, address)

    def getaddrinfo(host, *args, **kw):
        if host is not None and not _loopback(host.decode() if isinstance(host, bytes) else host):
            attempts.append(host)
            raise socket.gaierror(f"test_langchain: name lookup of {host!r} is not allowed")
        return real_getaddrinfo(host, *args, **kw)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    assert attempts == [], f"something tried to reach the network: {attempts}"


# -- helpers ---------------------------------------------------------------------------------


def llm(proxy, *, api_key: str = API_KEY, headers: bool = True, **kw) -> ChatOpenAI:
    """A ChatOpenAI pointed at the proxy; with ``headers``, seedtape's headers reach response_metadata."""
    return ChatOpenAI(model=MODEL, base_url=proxy.base_url, api_key=api_key, max_retries=kw.pop("max_retries", 0),
                      include_response_headers=headers, **kw)


def hdrs(msg) -> dict:
    return msg.response_metadata["headers"]


def collect(chunks):
    """What LangChain assembles from streamed chunks (AIMessageChunk + AIMessageChunk + ...)."""
    assert chunks, "no chunks"
    return functools.reduce(operator.add, chunks)


def meta(msg) -> dict:
    """response_metadata without the transport headers (they carry seedtape-status, which differs)."""
    return {k: v for k, v in msg.response_metadata.items() if k != "headers"}


def view(msg) -> dict:
    """Everything LangChain made of an answer, except its own run id and the headers."""
    return {"content": msg.content, "tool_calls": msg.tool_calls, "invalid_tool_calls": msg.invalid_tool_calls,
            "usage": msg.usage_metadata, "meta": meta(msg), "additional_kwargs": msg.additional_kwargs}


def chunk_view(chunks) -> list[tuple]:
    """Chunk by chunk: content, tool call fragments, usage, metadata, position."""
    return [(c.content, c.tool_call_chunks, c.usage_metadata, meta(c), c.chunk_position) for c in chunks]


def entry(store: str, key: str, timeout: float = 10.0):
    """The stored entry for ``key``, once the proxy wrote it (a stream is stored after [DONE] passed)."""
    wait_for(lambda: get_entry(store, key) is not None, timeout)
    found = get_entry(store, key)
    assert found is not None, f"no recording for {key}"
    return found


def offline_replay(rec, upstream, proxies, store):
    """Stop the recording proxy and the upstream; a replay-mode proxy on the same store."""
    rec.stop()
    upstream.stop()  # from here on nothing answers at the upstream's address
    return proxies("--mode", "replay", "--store", store, "--upstream", upstream.url)


def chat_bodies(upstream) -> list[dict]:
    return [r["body"] for r in upstream.requests_to("/chat/completions")]


class Counter:
    """HTTP client event hooks: every request the SDK under ChatOpenAI really sends (retries included)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.statuses: list[int] = []

    def _hook(self, request) -> None:
        self.sent.append(f"{request.method} {request.url.path} retry={request.headers.get('x-stainless-retry-count')}")

    def _rhook(self, response) -> None:
        self.statuses.append(response.status_code)

    async def _ahook(self, request) -> None:
        self._hook(request)

    async def _arhook(self, response) -> None:
        self._rhook(response)

    def sync_client(self):
        return sdk_http.Client(event_hooks={"request": [self._hook], "response": [self._rhook]})

    def async_client(self):
        return sdk_http.AsyncClient(event_hooks={"request": [self._ahook], "response": [self._arhook]})


@tool
def lookup_0(query: str, page: int) -> str:
    """Look something up (first source)."""
    return f"source 0, page {page}: {query[:20]}"


@tool
def lookup_1(query: str, page: int) -> str:
    """Look something up (second source)."""
    return f"source 1, page {page}: {query[:20]}"


TOOLS = {"lookup_0": lookup_0, "lookup_1": lookup_1}


def ask(model, messages, fmt: str, **kw):
    """One call in the given format; returns the message (assembled for a stream) and the chunks."""
    if fmt == "invoke":
        return model.invoke(messages, **kw), None
    chunks = list(model.stream(messages, **kw))
    return collect(chunks), chunks


# -- (1) invoke: record, then replay offline ---------------------------------------------------

PROMPT = [SystemMessage("You are terse."), HumanMessage("LangChain says hi: café, 日本語, 😀")]


def test_invoke_records_then_replays_offline_with_a_dummy_key(upstream, store, proxies):
    rec = proxies("--upstream", upstream.url, "--store", store)
    first = llm(rec, temperature=0.7).invoke(PROMPT)
    h = hdrs(first)
    assert h["seedtape-status"] == "recorded" and KEY_RE.fullmatch(h["seedtape-key"])
    assert first.content and first.response_metadata["finish_reason"] == "stop"
    assert first.response_metadata["system_fingerprint"] == "fp_fake_1"
    assert first.usage_metadata["total_tokens"] == 22
    [sent] = chat_bodies(upstream)
    # What ChatOpenAI.invoke really sends (seed added by the proxy): no n, no stream_options.
    assert set(sent) == {"model", "stream", "messages", "temperature", "seed"}, sent
    assert sent["stream"] is False and sent["temperature"] == 0.7 and sent["seed"] == 1234
    assert sent["messages"] == [{"role": "system", "content": "You are terse."},
                                {"role": "user", "content": "LangChain says hi: café, 日本語, 😀"}]
    assert entry(store, h["seedtape-key"]).format == "json"

    rep = offline_replay(rec, upstream, proxies, store)
    again = llm(rep, api_key=DUMMY_KEY, temperature=0.7).invoke(PROMPT)
    assert hdrs(again)["seedtape-status"] == "hit"
    assert hdrs(again)["seedtape-key"] == h["seedtape-key"]
    assert view(again) == view(first)  # content, usage, id, fingerprint, finish_reason: as recorded
    assert again.response_metadata["id"] == first.response_metadata["id"]
    # The default ChatOpenAI (no response headers asked for) gets the same answer.
    plain = llm(rep, api_key=DUMMY_KEY, headers=False, temperature=0.7).invoke(PROMPT)
    assert "headers" not in plain.response_metadata
    assert view(plain) == view(first)
    assert len(upstream.log) == 1  # only the recording call ever reached the upstream


# -- (2) stream: chunk by chunk, and across formats -----------------------------------------


@pytest.mark.parametrize("stream_usage", [False, True], ids=["default", "stream_usage"])
def test_stream_records_and_replays_chunk_by_chunk(upstream, store, proxies, stream_usage):
    prompt = [HumanMessage("Stream me a story, LangChain")]
    rec = proxies("--upstream", upstream.url, "--store", store)
    live = list(llm(rec).stream(prompt, stream_usage=stream_usage))
    h = hdrs(live[0])
    assert h["seedtape-status"] == "recording"
    [sent] = chat_bodies(upstream)
    assert sent["stream"] is True and "n" not in sent
    assert ("stream_options" in sent) == stream_usage
    if stream_usage:
        assert sent["stream_options"] == {"include_usage": True}
    assert len(live) > 12  # the fake streams word by word: LangChain saw every event
    text = "".join(c.content for c in live)
    assert len(text.split(" ")) == 12
    usage = collect(live).usage_metadata
    assert (usage is not None) == stream_usage
    assert entry(store, h["seedtape-key"]).format == "sse"

    rep = offline_replay(rec, upstream, proxies, store)
    again = list(llm(rep, api_key=DUMMY_KEY).stream(prompt, stream_usage=stream_usage))
    assert hdrs(again[0])["seedtape-status"] == "hit"
    assert hdrs(again[0])["seedtape-key"] == h["seedtape-key"]
    assert len(again) == len(live)
    assert chunk_view(again) == chunk_view(live)  # every chunk, in order
    assert "".join(c.content for c in again) == text
    assert collect(again).usage_metadata == usage
    assert collect(again).response_metadata["finish_reason"] == "stop"
    plain = list(llm(rep, api_key=DUMMY_KEY, headers=False).stream(prompt, stream_usage=stream_usage))
    assert chunk_view(plain) == chunk_view(live)
    if stream_usage:  # the usage chunk follows the request: without stream_usage it is left out
        bare = list(llm(rep, api_key=DUMMY_KEY).stream(prompt))
        assert hdrs(bare[0])["seedtape-status"] == "hit"
        assert chunk_view(bare) == [c for c in chunk_view(live) if c[2] is None]
        assert len(bare) == len(live) - 1 and collect(bare).usage_metadata is None
    assert len(upstream.log) == 1


@pytest.mark.parametrize("recorded_as", ["invoke", "stream"])
def test_cross_format_replay_invoke_and_stream(upstream, store, proxies, recorded_as):
    """stream/stream_options are not in the key: each format replays the other's recording (converted)."""
    prompt = [HumanMessage(f"Cross-format, recorded with {recorded_as}")]
    rec = proxies("--upstream", upstream.url, "--store", store)
    first, chunks = ask(llm(rec, temperature=0.3), prompt, recorded_as, **({"stream_usage": True} if recorded_as == "stream" else {}))
    key = hdrs(chunks[0] if chunks else first)["seedtape-key"]
    assert first.content and first.usage_metadata["total_tokens"] == 22
    entry(store, key)
    rep = offline_replay(rec, upstream, proxies, store)

    replay = llm(rep, api_key=DUMMY_KEY, temperature=0.3)
    if recorded_as == "invoke":
        chunks = list(replay.stream(prompt, stream_usage=True))
        h, other = hdrs(chunks[0]), collect(chunks)
        assert h["seedtape-status"] == "hit; converted-from=json"
        assert "".join(c.content for c in chunks) == first.content
    else:
        other = replay.invoke(prompt)
        h = hdrs(other)
        assert h["seedtape-status"] == "hit; converted-from=sse"
    assert h["seedtape-key"] == key
    assert other.content == first.content
    assert other.usage_metadata == first.usage_metadata  # include_usage asked for: usage survives conversion
    for field in ("finish_reason", "system_fingerprint", "model_name"):
        assert other.response_metadata[field] == first.response_metadata[field], field
    assert other.tool_calls == [] and other.invalid_tool_calls == []

    # ChatOpenAI(streaming=True).invoke streams under the hood: it replays the same recording.
    streaming = llm(rep, api_key=DUMMY_KEY, temperature=0.3, streaming=True).invoke(prompt)
    assert streaming.content == first.content
    assert hdrs(streaming)["seedtape-key"] == key
    assert hdrs(streaming)["seedtape-status"] == ("hit; converted-from=json" if recorded_as == "invoke" else "hit")
    assert len(upstream.log) == 1


SCENARIOS = {  # what the fake upstream answers, by prompt and ChatOpenAI options
    "plain": ("Tell me about seedtape", {}),
    "tool_calls": ("[tool] look it up", {}),
    "refusal": ("[refuse] do the bad thing", {}),
    "content_filter": ("[filter] something", {}),
    "length": ("three words only", {"max_tokens": 3}),
    "logprobs": ("with logprobs", {"logprobs": True}),
}


def lc_out(msg) -> dict:
    """What LangChain made of an answer, minus the completion id (two live calls have two ids)."""
    out = view(msg)
    out["meta"] = {k: v for k, v in out["meta"].items() if k != "id"}
    return out


def test_converted_replies_look_to_langchain_like_live_ones(upstream, proxies, tmp_path):
    """Per scenario: what LangChain assembles from a converted reply equals what it assembles from a
    live reply in that format (one store recorded everything with invoke, another with stream)."""
    as_json = proxies("--upstream", upstream.url, "--store", str(tmp_path / "json"))
    as_sse = proxies("--upstream", upstream.url, "--store", str(tmp_path / "sse"))

    def model(proxy, prompt, extra):
        m = llm(proxy, temperature=0.5, **extra)
        return m.bind_tools([lookup_0, lookup_1]) if "[tool]" in prompt else m

    live = {}
    for name, (prompt, extra) in SCENARIOS.items():
        live_json = model(as_json, prompt, extra).invoke(prompt)
        live_chunks = list(model(as_sse, prompt, extra).stream(prompt, stream_usage=True))
        assert (hdrs(live_json)["seedtape-status"], hdrs(live_chunks[0])["seedtape-status"]) == ("recorded", "recording")
        entry(str(tmp_path / "sse"), hdrs(live_chunks[0])["seedtape-key"])
        live[name] = (live_json, collect(live_chunks))
    n_live = len(upstream.log)
    assert n_live == 2 * len(SCENARIOS)
    finishes = {name: sse.response_metadata["finish_reason"] for name, (_, sse) in live.items()}
    assert finishes == {"plain": "stop", "tool_calls": "tool_calls", "refusal": "stop", "content_filter": "content_filter",
                        "length": "length", "logprobs": "stop"}
    assert live["refusal"][0].additional_kwargs["refusal"] == "I can't help with that."
    assert live["logprobs"][0].response_metadata["logprobs"]["content"]
    assert len(live["tool_calls"][1].tool_calls) == 2

    for name, (prompt, extra) in SCENARIOS.items():
        live_json, live_sse = live[name]
        from_json = collect(list(model(as_json, prompt, extra).stream(prompt, stream_usage=True)))
        assert from_json.response_metadata["headers"]["seedtape-status"] == "hit; converted-from=json", name
        assert lc_out(from_json) == lc_out(live_sse), name
        from_sse = model(as_sse, prompt, extra).invoke(prompt)
        assert hdrs(from_sse)["seedtape-status"] == "hit; converted-from=sse", name
        assert lc_out(from_sse) == lc_out(live_json), name
    assert len(upstream.log) == n_live


# -- (3) tool calling ----------------------------------------------------------------------------


def agent_turns(model, fmt: str) -> list[tuple]:
    """Two turns of a tool-calling loop: ask, run the called tools, send their results back."""
    messages = [SystemMessage("Use the tools."), HumanMessage("[tool] find the seedtape docs")]
    turns = []
    for _ in range(2):
        msg, chunks = ask(model, messages, fmt)
        turns.append((msg, chunks))
        messages = messages + [msg] + [
            ToolMessage(TOOLS[tc["name"]].invoke(tc["args"]), tool_call_id=tc["id"]) for tc in msg.tool_calls]
    return turns


def tool_view(msg) -> dict:
    return {"tool_calls": msg.tool_calls, "invalid": msg.invalid_tool_calls, "content": msg.content,
            "finish_reason": msg.response_metadata["finish_reason"]}


@pytest.mark.parametrize("replayed_as", ["invoke", "stream"])
@pytest.mark.parametrize("recorded_as", ["invoke", "stream"])
def test_bind_tools_records_and_replays_tool_calls(upstream, store, proxies, recorded_as, replayed_as):
    rec = proxies("--upstream", upstream.url, "--store", store)
    live = agent_turns(llm(rec).bind_tools([lookup_0, lookup_1]), recorded_as)
    first, first_chunks = live[0]
    calls = first.tool_calls
    assert [tc["name"] for tc in calls] == ["lookup_0", "lookup_1"]
    assert [tc["args"]["page"] for tc in calls] == [0, 1]
    assert calls[0]["args"]["query"] and calls[0]["id"] == "call_0_0" and calls[1]["id"] == "call_0_1"
    assert first.invalid_tool_calls == [] and first.response_metadata["finish_reason"] == "tool_calls"
    if first_chunks:
        assert sum(len(c.tool_call_chunks) for c in first_chunks) > 4  # arguments arrived in fragments
    bodies = chat_bodies(upstream)
    assert len(bodies) == 2
    assert [t["function"]["name"] for t in bodies[0]["tools"]] == ["lookup_0", "lookup_1"]
    assert bodies[0]["stream"] is (recorded_as == "stream")
    sent_back = bodies[1]["messages"]
    assert [m["role"] for m in sent_back] == ["system", "user", "assistant", "tool", "tool"]
    assert [tc["id"] for tc in sent_back[2]["tool_calls"]] == ["call_0_0", "call_0_1"]
    assert [m["tool_call_id"] for m in sent_back[3:]] == ["call_0_0", "call_0_1"]
    keys = [hdrs(chunks[0] if chunks else msg)["seedtape-key"] for msg, chunks in live]
    assert len(set(keys)) == 2
    for key in keys:
        entry(store, key)

    rep = offline_replay(rec, upstream, proxies, store)
    again = agent_turns(llm(rep, api_key=DUMMY_KEY).bind_tools([lookup_0, lookup_1]), replayed_as)
    expected = "hit" if recorded_as == replayed_as else f"hit; converted-from={'json' if recorded_as == 'invoke' else 'sse'}"
    for (msg, chunks), (live_msg, live_chunks), key in zip(again, live, keys):
        h = hdrs(chunks[0] if chunks else msg)
        # The second turn hits too: the replayed tool calls made the very same follow-up request.
        assert (h["seedtape-status"], h["seedtape-key"]) == (expected, key)
        assert tool_view(msg) == tool_view(live_msg)
        if chunks and live_chunks:
            assert chunk_view(chunks) == chunk_view(live_chunks)
    assert len(upstream.log) == 2


# -- (4) async --------------------------------------------------------------------------------------


async def test_ainvoke_and_astream_replay_offline(upstream, store, proxies):
    p_invoke, p_stream = [HumanMessage("async invoke")], [HumanMessage("async stream")]
    rec = proxies("--upstream", upstream.url, "--store", store)
    model = llm(rec)
    first = await model.ainvoke(p_invoke)
    live = [c async for c in model.astream(p_stream)]
    assert hdrs(first)["seedtape-status"] == "recorded" and hdrs(live[0])["seedtape-status"] == "recording"
    sent = upstream.requests_to("/chat/completions")
    assert [r["headers"].get("x-stainless-async") for r in sent] == ["async:asyncio"] * 2  # the SDK's async client
    assert [r["body"]["stream"] for r in sent] == [False, True]
    k_invoke, k_stream = hdrs(first)["seedtape-key"], hdrs(live[0])["seedtape-key"]
    entry(store, k_invoke), entry(store, k_stream)

    rep = offline_replay(rec, upstream, proxies, store)
    model = llm(rep, api_key=DUMMY_KEY)
    again = await model.ainvoke(p_invoke)
    assert (hdrs(again)["seedtape-status"], hdrs(again)["seedtape-key"]) == ("hit", k_invoke)
    assert view(again) == view(first)
    streamed = [c async for c in model.astream(p_stream)]
    assert (hdrs(streamed[0])["seedtape-status"], hdrs(streamed[0])["seedtape-key"]) == ("hit", k_stream)
    assert chunk_view(streamed) == chunk_view(live)
    converted = [c async for c in model.astream(p_invoke)]
    assert hdrs(converted[0])["seedtape-status"] == "hit; converted-from=json"
    assert "".join(c.content for c in converted) == first.content
    # The sync client replays the async recordings: x-stainless-async never enters the key.
    sync = model.invoke(p_invoke)
    assert (hdrs(sync)["seedtape-status"], hdrs(sync)["seedtape-key"]) == ("hit", k_invoke)
    assert sync.content == first.content
    assert len(upstream.log) == 2


# -- (5) a replay miss: a clear error, never retried -----------------------------------------------


async def test_replay_miss_is_an_explained_error_and_is_not_retried(upstream, store, proxies):
    recorded_q = [HumanMessage("What will the weather be like in Paris tomorrow?")]
    changed_q = [HumanMessage("What will the weather be like in Paris today?")]
    rec = proxies("--upstream", upstream.url, "--store", store)
    near = llm(rec, temperature=0.7).invoke(recorded_q)
    near_key = hdrs(near)["seedtape-key"]
    entry(store, near_key)
    rep = offline_replay(rec, upstream, proxies, store)

    misses = {}
    for how in ("invoke", "stream", "ainvoke", "astream"):
        count = Counter()
        model = ChatOpenAI(model=MODEL, base_url=rep.base_url, api_key=DUMMY_KEY, temperature=0.2, max_retries=2,
                           http_client=count.sync_client(), http_async_client=count.async_client())
        with pytest.raises(openai.NotFoundError) as info:
            if how == "invoke":
                model.invoke(changed_q)
            elif how == "stream":
                list(model.stream(changed_q))
            elif how == "ainvoke":
                await model.ainvoke(changed_q)
            else:
                [c async for c in model.astream(changed_q)]
        err = info.value
        msg = str(err)
        # what the LangChain user reads
        assert err.status_code == 404 and err.code == "replay_miss" and err.type == "seedtape_error", how
        assert "seedtape replay miss" in msg, msg
        key = err.response.headers["seedtape-key"]
        assert KEY_RE.fullmatch(key) and key in msg and key != near_key
        assert "To record it, run the proxy with --mode auto or --mode record" in msg, msg
        assert near_key[:12] in msg  # the nearest recording ...
        assert '"…tomorrow?" != "…today?"' in msg and "temperature: 0.7 != 0.2" in msg  # ... and what differs
        assert err.response.headers["seedtape-status"] == "miss"
        assert_openai_error(err, 404, "replay_miss")  # and what the SDK under it saw: no retry
        assert "temperature: 0.7 != 0.2" in err.response.headers["seedtape-miss"]
        # max_retries=2, yet the SDK under ChatOpenAI sent the request once
        assert count.sent == ["POST /v1/chat/completions retry=0"], (how, count.sent)
        assert count.statuses == [404], (how, count.statuses)
        misses[how] = key
    assert len(set(misses.values())) == 1  # stream never enters the key: one request key for all four
    # the proxy saw exactly one request per call
    assert wait_for(lambda: rep.output.count(" miss POST /v1/chat/completions") >= 4), rep.output
    assert rep.output.count(" miss POST /v1/chat/completions") == 4, rep.output
    assert len(upstream.log) == 1


def test_retryable_upstream_errors_are_still_retried_by_langchain(upstream, store, proxies):
    """The control for the test above: the request counter does see the SDK's retries, and a
    retryable upstream error (429) reaches LangChain unchanged and is not recorded."""
    rec = proxies("--upstream", upstream.url, "--store", store)
    upstream.fail_next = [429]
    count = Counter()
    model = ChatOpenAI(model=MODEL, base_url=rec.base_url, api_key=API_KEY, max_retries=2,
                       include_response_headers=True, http_client=count.sync_client())
    answer = model.invoke([HumanMessage("retry me once")])
    assert count.sent == ["POST /v1/chat/completions retry=0", "POST /v1/chat/completions retry=1"]
    assert count.statuses == [429, 200]
    assert len(upstream.requests_to("/chat/completions")) == 2
    assert hdrs(answer)["seedtape-status"] == "recorded" and answer.content
    key = hdrs(answer)["seedtape-key"]
    assert entry(store, key).status == 200
    assert [(e.key, e.fingerprint, e.status) for e in entries(store)] == [(key, "fp_fake_1", 200)]  # no 429 entry


def test_unreachable_upstream_is_a_502_naming_it_and_is_not_retried(upstream, store, proxies):
    url = upstream.url
    upstream.stop()
    p = proxies("--upstream", url, "--store", store)
    count = Counter()
    model = ChatOpenAI(model=MODEL, base_url=p.base_url, api_key=API_KEY, max_retries=2, http_client=count.sync_client())
    with pytest.raises(openai.InternalServerError) as info:
        model.invoke([HumanMessage("is anyone there?")])
    assert_openai_error(info.value, 502, "upstream_unreachable")
    assert url in str(info.value)
    assert count.sent == ["POST /v1/chat/completions retry=0"] and count.statuses == [502]


# -- (6) the seed ------------------------------------------------------------------------------------------


def test_injected_seed_and_client_seed(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    q = [HumanMessage("seed me")]

    def sent_seed():
        return chat_bodies(upstream)[-1].get("seed", "absent")

    unseeded = llm(p).invoke(q)  # ChatOpenAI without a seed sends none: the proxy adds its default
    assert sent_seed() == 1234 and hdrs(unseeded)["seedtape-seed"] == "1234; injected"
    chunks = list(llm(p).stream([HumanMessage("seed my stream")]))
    assert sent_seed() == 1234 and hdrs(chunks[0])["seedtape-seed"] == "1234; injected"

    seven = llm(p, seed=7).invoke(q)  # ChatOpenAI(seed=7): left alone
    assert sent_seed() == 7 and hdrs(seven)["seedtape-seed"] == "7; client"
    assert hdrs(seven)["seedtape-status"] == "recorded" and hdrs(seven)["seedtape-key"] != hdrs(unseeded)["seedtape-key"]
    chunks = list(llm(p, seed=7).stream([HumanMessage("seed my stream")]))
    assert sent_seed() == 7 and hdrs(chunks[0])["seedtape-seed"] == "7; client"
    zero = llm(p, seed=0).invoke(q)  # a falsy seed is still the client's
    assert sent_seed() == 0 and hdrs(zero)["seedtape-seed"] == "0; client"
    with pytest.warns(UserWarning, match="seed"):  # LangChain moves it out of model_kwargs, with a warning
        via_kwargs = llm(p, model_kwargs={"seed": 7})
    again = via_kwargs.invoke(q)
    assert hdrs(again)["seedtape-seed"] == "7; client"
    assert (hdrs(again)["seedtape-status"], hdrs(again)["seedtape-key"]) == ("hit", hdrs(seven)["seedtape-key"])
    assert again.content == seven.content
    n_sent = len(upstream.log)
    assert n_sent == 5

    # The key is taken after injection: an explicit seed=1234 is the unseeded request's key.
    explicit = llm(p, seed=1234).invoke(q)
    assert hdrs(explicit)["seedtape-seed"] == "1234; client"
    assert (hdrs(explicit)["seedtape-status"], hdrs(explicit)["seedtape-key"]) == ("hit", hdrs(unseeded)["seedtape-key"])
    assert explicit.content == unseeded.content
    assert len(upstream.log) == n_sent


# -- more of the real client --------------------------------------------------------------------------


async def test_batch_and_abatch_record_concurrently_and_replay_offline(upstream, store, proxies):
    """ChatOpenAI.batch sends its requests concurrently (a thread pool); abatch replays them."""
    prompts = [[HumanMessage(f"batch question {i}")] for i in range(6)]
    rec = proxies("--upstream", upstream.url, "--store", store)
    live = llm(rec).batch(prompts, config={"max_concurrency": 6})
    assert [hdrs(m)["seedtape-status"] for m in live] == ["recorded"] * 6
    keys = [hdrs(m)["seedtape-key"] for m in live]
    assert len(set(keys)) == 6 and len({m.content for m in live}) == 6
    for key in keys:
        entry(store, key)
    rep = offline_replay(rec, upstream, proxies, store)
    again = await llm(rep, api_key=DUMMY_KEY).abatch(prompts, config={"max_concurrency": 6})
    assert [(hdrs(m)["seedtape-status"], hdrs(m)["seedtape-key"]) for m in again] == [("hit", k) for k in keys]
    assert [view(m) for m in again] == [view(m) for m in live]
    assert len(upstream.log) == 6


def test_fields_on_the_default_ignore_list_do_not_split_langchain_keys(upstream, store, proxies):
    """ChatOpenAI(store=...), model_kwargs user and extra_body metadata are sent, but stay out of the key.
    (model_kwargs={"metadata": ...} would not do: LangChain takes it as its own run metadata.)"""
    rec = proxies("--upstream", upstream.url, "--store", store)
    q = [HumanMessage("ignore my bookkeeping")]
    first = llm(rec).invoke(q)
    assert hdrs(first)["seedtape-status"] == "recorded"
    extra = llm(rec, store=False, model_kwargs={"user": "alice-42"}, extra_body={"metadata": {"run": "ci-7"}}).invoke(q)
    sent = chat_bodies(upstream)
    assert len(sent) == 1
    assert (hdrs(extra)["seedtape-status"], hdrs(extra)["seedtape-key"]) == ("hit", hdrs(first)["seedtape-key"])
    assert extra.content == first.content
    # the same fields reach the upstream when the request is live
    live = llm(rec, store=False, model_kwargs={"user": "alice-42"}, extra_body={"metadata": {"run": "ci-7"}}).invoke(
        [HumanMessage("bookkeeping, live")])
    assert hdrs(live)["seedtape-status"] == "recorded"
    body = chat_bodies(upstream)[-1]
    assert (body["store"], body["user"], body["metadata"]) == (False, "alice-42", {"run": "ci-7"})


def test_per_request_mode_and_namespace_in_the_chatopenai_base_url(upstream, store, proxies):
    """ChatOpenAI keeps the base URL's path: /_seedtape/mode=...,ns=.../v1 routes its requests."""
    p = proxies("--upstream", upstream.url, "--store", store)  # the proxy itself is in auto mode
    q = [HumanMessage("namespaced question")]
    a = ChatOpenAI(model=MODEL, base_url=p.url(namespace="test_a"), api_key=API_KEY, max_retries=0,
                   include_response_headers=True).invoke(q)
    assert hdrs(a)["seedtape-status"] == "recorded"
    assert [r["path"] for r in upstream.log] == ["/v1/chat/completions"]  # the prefix is stripped before forwarding
    replay_a = ChatOpenAI(model=MODEL, base_url=p.url(mode="replay", namespace="test_a"), api_key=DUMMY_KEY,
                          max_retries=0, include_response_headers=True)
    hit = replay_a.invoke(q)
    assert (hdrs(hit)["seedtape-status"], hdrs(hit)["seedtape-key"], hit.content) == ("hit", hdrs(a)["seedtape-key"], a.content)
    chunks = list(replay_a.stream(q))
    assert hdrs(chunks[0])["seedtape-status"] == "hit; converted-from=json"
    with pytest.raises(openai.NotFoundError) as info:  # another namespace: a miss, in replay mode, explained
        ChatOpenAI(model=MODEL, base_url=p.url(mode="replay", namespace="test_b"), api_key=DUMMY_KEY,
                   max_retries=0).invoke(q)
    assert "namespace: test_a != test_b" in str(info.value)
    assert len(upstream.log) == 1


def test_default_chatopenai_shares_recordings_with_the_openai_sdk(upstream, store, proxies):
    """langchain-openai 1.7.4 sends no n by default, so its invoke keys like the plain SDK's."""
    rec = proxies("--upstream", upstream.url, "--store", store)
    sdk = chat(client(rec), "shared with the SDK", model=MODEL)
    assert sdk.headers["seedtape-status"] == "recorded"
    sdk_text = sdk.parse().choices[0].message.content
    entry(store, sdk.headers["seedtape-key"])
    rep = offline_replay(rec, upstream, proxies, store)

    lc = llm(rep, api_key=DUMMY_KEY).invoke([HumanMessage("shared with the SDK")])
    assert (hdrs(lc)["seedtape-status"], hdrs(lc)["seedtape-key"]) == ("hit", sdk.headers["seedtape-key"])
    assert lc.content == sdk_text
    streamed = list(llm(rep, api_key=DUMMY_KEY).stream([HumanMessage("shared with the SDK")]))
    assert hdrs(streamed[0])["seedtape-status"] == "hit; converted-from=json"
    assert "".join(c.content for c in streamed) == sdk_text
    assert collect(streamed).usage_metadata is None  # not asked for (no stream_usage): no usage chunk
    # ChatOpenAI(n=1) sends "n": 1: a different key (n is not ignored by default), explained.
    with pytest.raises(openai.NotFoundError) as info:
        llm(rep, api_key=DUMMY_KEY, n=1).invoke([HumanMessage("shared with the SDK")])
    assert "n: (absent) != 1" in str(info.value)
    assert len(upstream.log) == 1


def test_chatopenai_configured_only_by_environment(upstream, store, proxies, monkeypatch):
    """The README's way: OPENAI_BASE_URL (and OPENAI_API_KEY) point the client at the proxy."""
    rec = proxies("--upstream", upstream.url, "--store", store)
    monkeypatch.setenv("OPENAI_BASE_URL", rec.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    model = ChatOpenAI(model=MODEL, max_retries=0)
    assert str(model.root_client.base_url).rstrip("/") == rec.base_url  # checked before anything is sent
    first = model.invoke([HumanMessage("configured by the environment")])
    chunks = list(model.stream([HumanMessage("configured by the environment")]))
    assert "".join(c.content for c in chunks) == first.content
    bodies = chat_bodies(upstream)
    assert len(bodies) == 1  # the stream replayed the invoke's recording (converted)
    assert "stream_options" not in bodies[0]  # no stream_usage by default behind OPENAI_BASE_URL
    assert upstream.log[0]["headers"].get("authorization") == f"Bearer {API_KEY}"
    assert wait_for(lambda: "hit; converted-from=json POST /v1/chat/completions" in rec.output), rec.output


async def test_openai_embeddings_record_and_replay_offline(upstream, store, proxies):
    rec = proxies("--upstream", upstream.url, "--store", store)
    emb = OpenAIEmbeddings(model="text-embedding-3-small", base_url=rec.base_url, api_key=API_KEY,
                           check_embedding_ctx_length=False, max_retries=0)
    docs = emb.embed_documents(["seedtape records", "seedtape replays"])
    query = await emb.aembed_query("what does it do?")
    assert len(docs) == 2 and all(len(v) == 16 for v in [*docs, query])
    bodies = [r["body"] for r in upstream.requests_to("/embeddings")]
    assert bodies == [
        {"model": "text-embedding-3-small", "input": ["seedtape records", "seedtape replays"], "encoding_format": "base64"},
        {"model": "text-embedding-3-small", "input": ["what does it do?"], "encoding_format": "base64"},
    ]  # no seed on embeddings
    assert wait_for(lambda: len(entries(store)) == 2)
    assert {(e.endpoint, e.request["path"]) for e in entries(store)} == {("embeddings", "/v1/embeddings")}

    rep = offline_replay(rec, upstream, proxies, store)
    emb = OpenAIEmbeddings(model="text-embedding-3-small", base_url=rep.base_url, api_key=DUMMY_KEY,
                           check_embedding_ctx_length=False, max_retries=0)
    assert emb.embed_documents(["seedtape records", "seedtape replays"]) == docs
    assert await emb.aembed_query("what does it do?") == query
    assert emb.embed_query("what does it do?") == query
    assert wait_for(lambda: rep.output.count("hit POST /v1/embeddings") == 3), rep.output
    assert len(upstream.log) == 2
    with pytest.raises(openai.NotFoundError, match="seedtape replay miss"):
        emb.embed_query("never embedded")


def test_recorded_request_is_what_chatopenai_sent_seeded_without_stream(upstream, store, proxies):
    """The canonical request stored for a ChatOpenAI call: the forwarded body (seed added), minus stream;
    max_tokens goes out as max_completion_tokens, and a `length` finish survives conversion to a stream."""
    rec = proxies("--upstream", upstream.url, "--store", store)
    prompt = [SystemMessage("You are terse."), HumanMessage("three words")]
    msg = llm(rec, temperature=0.7, max_tokens=3).invoke(prompt)
    assert msg.response_metadata["finish_reason"] == "length" and len(msg.content.split(" ")) == 3
    [sent] = chat_bodies(upstream)
    assert set(sent) == {"model", "stream", "messages", "temperature", "max_completion_tokens", "seed"}, sent
    stored = entry(store, hdrs(msg)["seedtape-key"])
    assert stored.request["method"] == "POST" and stored.request["path"] == "/v1/chat/completions"
    assert stored.request["body"] == {k: v for k, v in sent.items() if k != "stream"}
    assert stored.request["body"]["seed"] == 1234 and stored.request["body"]["max_completion_tokens"] == 3
    again = list(llm(rec, temperature=0.7, max_tokens=3).stream(prompt))
    assert hdrs(again[0])["seedtape-status"] == "hit; converted-from=json"
    assert collect(again).response_metadata["finish_reason"] == "length"
    assert "".join(c.content for c in again) == msg.content
    assert len(upstream.log) == 1
