"""Ctrl-C and SIGTERM stop the proxy gracefully (issue 13, point 4).

A real `seedtape serve`, the real openai SDK in a thread in the middle of a live
stream, the signal sent to the process: the stream finishes and is recorded within
--grace; what outlives the grace is cut and named in the last line.
"""

from __future__ import annotations

import signal
import socket
import threading
import time

import pytest
from conftest import client
from proxyproc import wait_for

from seedtape.proxy.tapes.store import Store


class StreamInFlight:
    """A streamed chat completion read in a thread; the upstream holds its last event until released."""

    def __init__(self, proxy, upstream, content: str = "a long story"):
        upstream.gate = threading.Event()
        self.upstream = upstream
        self.chunks: list = []
        self.error: Exception | None = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(proxy, content), daemon=True)
        self.thread.start()
        assert self.started.wait(15), "the stream never started"

    def _read(self, proxy, content: str) -> None:
        try:
            stream = client(proxy).chat.completions.create(
                model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": content}])
            for chunk in stream:
                self.chunks.append(chunk)
                self.started.set()
        except Exception as e:  # the test asserts on it
            self.error = e
        finally:
            self.started.set()

    def release(self) -> None:
        assert self.upstream.gate is not None
        self.upstream.gate.set()

    def join(self) -> None:
        self.thread.join(30)
        assert not self.thread.is_alive()


def _entries(store: str) -> int:
    with Store(store, readonly=True) as st:
        return st.stats()["entries"]


def _last_line(proxy) -> str:
    return proxy.output.strip().splitlines()[-1]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stream_in_flight_finishes_and_is_recorded_after_the_signal(upstream, store, proxies, sig):
    p = proxies("--upstream", upstream.url, "--store", store)
    s = StreamInFlight(p, upstream)
    p.proc.send_signal(sig)
    assert p.logged("stopping: no new connections; waiting up to 5s for 1 exchange in flight")
    s.release()
    s.join()
    assert s.error is None, s.error
    assert s.chunks[-1].choices[0].finish_reason == "stop"  # the whole stream arrived
    assert p.proc.wait(15) == 0
    p.stop()  # drains the log
    assert _last_line(p).endswith("seedtape: stopped; no exchange was cut"), p.output
    assert "recorded POST /v1/chat/completions" in p.output
    assert "Client disconnected" not in p.output and "failed, nothing recorded" not in p.output
    assert _entries(store) == 1


def test_no_new_connection_is_accepted_while_stopping(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    s = StreamInFlight(p, upstream)
    p.proc.send_signal(signal.SIGTERM)
    assert p.logged("waiting up to")

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", p.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    assert wait_for(refused, timeout=5), "the listening socket stayed open"
    s.release()
    s.join()
    assert s.error is None
    assert p.proc.wait(15) == 0


def test_what_outlives_the_grace_is_cut_and_named(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store, "--grace", "0.5")
    s = StreamInFlight(p, upstream)
    p.proc.send_signal(signal.SIGINT)
    assert p.proc.wait(15) == 0
    s.release()
    s.join()
    assert s.error is not None  # the client's stream was cut: it must not look complete
    p.stop()
    cut = [line for line in p.output.splitlines() if "seedtape: stopped after" in line]
    assert len(cut) == 1, p.output
    key_line = cut[0]
    assert "stopped after the 0.5s grace period: 1 exchange cut, nothing recorded for it" in key_line
    assert "POST /v1/chat/completions key=" in key_line and "(recording)" in key_line
    assert "Client disconnected" not in p.output  # the proxy cut it: the client is not blamed
    assert _last_line(p) == key_line
    assert _entries(store) == 0  # a cut stream is never recorded


def test_a_second_signal_stops_at_once(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store, "--grace", "60")
    s = StreamInFlight(p, upstream)
    p.proc.send_signal(signal.SIGINT)
    assert p.logged("Ctrl-C again to stop now")
    t0 = time.monotonic()
    p.proc.send_signal(signal.SIGINT)
    assert p.proc.wait(15) == 0
    assert time.monotonic() - t0 < 10  # not the 60 s grace
    s.release()
    s.join()
    p.stop()
    assert "stopped after a second signal: 1 exchange cut" in p.output
    assert _entries(store) == 0


def test_an_idle_proxy_stops_at_once(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store, "--grace", "60")
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(15) == 0  # nothing in flight: no grace to wait out
    p.stop()
    assert _last_line(p).endswith("seedtape: stopped; no exchange was cut")
