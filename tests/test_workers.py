"""`seedtape serve --workers N`: several proxy processes on one port and one store (issue 15, point 3)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import API_KEY, FakeUpstream, chat, client, wait_for

from seedtape.proxy.tapes.store import Store

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreads connections on Linux")

HEADERS = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}


def body(text: str, **kw) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **kw}


def post(proxy, payload: dict, timeout: float = 20.0) -> httpx.Response:
    """One request on a connection of its own (so the kernel picks a worker for each)."""
    return httpx.post(f"{proxy.base_url}/chat/completions", json=payload, headers=HEADERS, timeout=timeout)


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def workers_of(proxy, n: int = 2) -> list[int]:
    pids = children(proxy.proc.pid)
    assert len(pids) == n, proxy.output
    return pids


def entries(store: str) -> list:
    with Store(store) as st:
        return list(st.entries())


def test_workers_share_the_port_and_store_record_once_replay_offline_and_stop_on_sigint(proxies, store):
    up = FakeUpstream().__enter__()
    try:
        p = proxies("--workers", "2", "--store", store, "--upstream", up.url)
        pids = workers_of(p)
        # sessions of their own: a terminal's Ctrl-C reaches the supervisor only, which forwards it once
        assert all(os.getsid(pid) == pid != os.getsid(p.proc.pid) for pid in pids)
        prompts = [f"prompt {i}" for i in range(48)]
        errors: list[BaseException] = []

        def sdk_thread(texts: list[str]) -> None:
            try:
                c = client(p)  # one keep-alive connection per thread
                for t in texts:
                    assert chat(c, t).headers["seedtape-status"] == "recorded"
            except BaseException as e:  # reported below
                errors.append(e)

        def raw_thread(texts: list[str]) -> None:
            try:
                for t in texts:
                    r = post(p, body(t))
                    assert r.status_code == 200 and r.headers["seedtape-status"] == "recorded", r.text
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=sdk_thread, args=(prompts[i:48:16],)) for i in range(8)]
        threads += [threading.Thread(target=raw_thread, args=(prompts[i:48:16],)) for i in range(8, 16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert len(up.log) == 48  # each went upstream once
        assert wait_for(lambda: len(entries(store)) == 48)
        assert all(e.times_recorded == 1 for e in entries(store))
        assert p.logged("[worker 1]") and p.logged("[worker 2]")  # both workers served
    finally:
        up.__exit__(None, None, None)
    # the upstream is gone: everything replays, whichever worker answers
    for t in prompts[:16]:
        r = post(p, body(t))
        assert r.status_code == 200 and r.headers["seedtape-status"] == "hit"
    assert p.output.count("OPENAI_BASE_URL=") == 1
    assert p.output.count("seedtape: mode=auto") == 1  # what every worker says at start, said once
    assert p.stop(signal.SIGINT) == 0
    assert not any(alive(pid) for pid in pids)
    assert p.output.count("stopped; no exchange was cut") == 2
    assert "all 2 workers stopped" in p.output


def test_a_second_signal_stops_every_worker_at_once(proxies, store, upstream):
    upstream.latency = 30
    p = proxies("--workers", "2", "--store", store, "--upstream", upstream.url, "--grace", "60")
    pids = workers_of(p)

    def send_slow() -> None:
        with contextlib.suppress(httpx.HTTPError):  # cut at the second signal
            post(p, body("slow"), timeout=60)

    slow = threading.Thread(target=send_slow, daemon=True)
    slow.start()
    assert wait_for(lambda: len(upstream.log) == 1)
    p.proc.send_signal(signal.SIGTERM)
    assert p.logged("waiting up to 60s for 1 exchange in flight")
    time.sleep(0.3)
    assert p.proc.poll() is None  # the graceful stop waits for the slow exchange
    start = time.monotonic()
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(10) == 0
    assert time.monotonic() - start < 20  # not the 30 s the upstream would take
    assert "after a second signal: 1 exchange cut" in p.output
    assert not any(alive(pid) for pid in pids)


def test_report_unused_is_one_report_of_what_all_workers_served(proxies, store, upstream, tmp_path):
    rec = proxies("--workers", "2", "--store", store, "--upstream", upstream.url, "--quiet")
    for i in range(20):
        assert post(rec, body(f"q{i}")).headers["seedtape-status"] == "recorded"
    keys = {e.key: e for e in entries(store)}
    assert rec.stop() == 0
    report = tmp_path / "unused.json"
    p = proxies("--workers", "2", "--store", store, "--mode", "replay", "--report-unused", str(report))
    used = set()
    for i in range(10):
        r = post(p, body(f"q{i}"))
        assert r.headers["seedtape-status"] == "hit"
        used.add(r.headers["seedtape-key"])
    miss = post(p, body("q0 but different"))
    assert miss.status_code == 404 and "q0" in miss.json()["error"]["message"]  # misses are explained by every worker
    assert p.logged("[worker 1]") and p.logged("[worker 2]")  # both served some
    assert p.stop() == 0
    doc = json.loads(report.read_text())
    assert {e["key"] for e in doc["unused"]} == set(keys) - used
    assert doc["served"] == 10
    assert p.output.count("recordings were not used") == 1
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith("unused")] == ["unused.json"]


def test_repeats_sequence_counts_across_workers(proxies, store, upstream):
    args = ("--workers", "2", "--store", store, "--repeats", "sequence", "--quiet")
    p = proxies(*args, "--upstream", upstream.url)
    got = [post(p, body("Pick a number")) for _ in range(6)]  # a connection each: both workers see some
    assert [r.headers["seedtape-occurrence"] for r in got] == ["1", "2", "3", "4", "5", "6"]
    assert all(r.headers["seedtape-status"] == "recorded" for r in got)
    assert [e["body"]["seed"] for e in upstream.log] == [1234, 1235, 1236, 1237, 1238, 1239]
    assert p.stop() == 0
    assert sorted(e.times_recorded for e in entries(store)) == [1] * 6
    replay = proxies(*args, "--mode", "replay")
    again = [post(replay, body("Pick a number")) for _ in range(7)]
    assert [r.headers["seedtape-status"] for r in again] == ["hit"] * 6 + ["miss"]
    assert [r.json()["choices"][0]["message"]["content"] for r in again[:6]] == [
        r.json()["choices"][0]["message"]["content"] for r in got
    ]


def test_paced_stream_replay_with_workers(proxies, store, upstream):
    upstream.chunk_delay = 0.05
    rec = proxies("--workers", "2", "--store", store, "--upstream", upstream.url, "--quiet")
    c = client(rec)
    recorded = "".join(
        ch.choices[0].delta.content or "" for ch in c.chat.completions.create(**body("tell"), stream=True) if ch.choices
    )
    assert rec.stop() == 0
    p = proxies("--workers", "2", "--store", store, "--mode", "replay", "--replay-pace", "1", "--quiet")
    for _ in range(3):  # whichever worker answers, through its own pacer
        start = time.monotonic()
        got = "".join(
            ch.choices[0].delta.content or ""
            for ch in client(p).chat.completions.create(**body("tell"), stream=True)
            if ch.choices
        )
        assert got == recorded and time.monotonic() - start > 0.2


def test_a_worker_that_dies_stops_the_others_and_the_supervisor_says_so(proxies, store, upstream):
    p = proxies("--workers", "2", "--store", store, "--upstream", upstream.url, "--quiet")
    first, second = workers_of(p)
    os.kill(second, signal.SIGKILL)
    assert p.proc.wait(15) == 1
    assert f"worker 2 (pid {second}) was killed by SIGKILL unexpectedly; stopping the other" in p.output or (
        f"(pid {second}) was killed by SIGKILL unexpectedly" in p.output
    )
    assert not alive(first) and not alive(second)


def test_a_start_failure_is_said_once_with_its_status(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "seedtape",
            "serve",
            "--port",
            "0",
            "--workers",
            "2",
            "--mode",
            "replay",
            "--store",
            str(tmp_path / "none"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    text = out.stdout + out.stderr
    assert text.count("no store at") == 1, text
    assert "OPENAI_BASE_URL" not in text
