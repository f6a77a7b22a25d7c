"""The `seedtape` CLI on real stores, and the addon loaded into plain mitmdump."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import pytest
from click.testing import CliRunner
from conftest import API_KEY, chat

from seedtape.cli.main import cli
from seedtape.proxy.deck import Tapedeck
from seedtape.proxy.modes import Mode
from seedtape.proxy.options import Settings
from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.store import Store

REPO = Path(__file__).resolve().parents[1]
CHAT = "/v1/chat/completions"
DATE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ")


def answer(text: str, fingerprint: str, model: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": model, "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }).encode()


def record(store: Path, messages: list[dict], *, fingerprint: str = "fp_a", model: str = "gpt-4o-mini",
           reply: str = "an answer", headers: dict | None = None) -> str:
    """Record one chat completion into ``store`` through the Tapedeck; returns its request key."""
    with Store(store) as st:
        deck = Tapedeck(st, Settings(mode=Mode.RECORD))
        ex = deck.begin("POST", CHAT, headers or {}, json.dumps({"model": model, "messages": messages}).encode())
        deck.finish(ex, 200, [("content-type", "application/json"), ("x-request-id", "req_cli"),
                              ("set-cookie", "secret=1")], answer(reply, fingerprint, model))
        assert ex.status == "recorded"
        return ex.key


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def recorded(store) -> dict[str, str]:
    """Three request keys; 'drift' is recorded under two fingerprints."""
    keys = {
        "paris": record(store, user("What is the capital of France? Answer in one word please."), reply="Paris"),
        "conversation": record(store, [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "first question here"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": [{"type": "text", "text": "second question in parts"}]},
        ], model="gpt-4o"),
        "drift": record(store, user("drifting request"), fingerprint="fp_a", reply="old"),
    }
    assert record(store, user("drifting request"), fingerprint="fp_b", reply="new") == keys["drift"]
    return keys


def run(*args: str, env: dict | None = None):
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result


# -- ls ----------------------------------------------------------------------------------------------


def test_ls_table(store, recorded):
    r = run("ls", "--store", str(store))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["KEY", "MODEL", "FMT", "NAMESPACE", "FINGERPRINTS", "RECORDED", "PROMPT"]
    assert len(lines) == 1 + 3
    rows = {k: next(line for line in lines if line.startswith(key[:12])) for k, key in recorded.items()}
    assert "gpt-4o-mini" in rows["paris"] and "fp_a" in rows["paris"]
    assert rows["paris"].split()[2:4] == ["json", "-"]  # format, no namespace
    assert DATE.search(rows["paris"])
    # the first words (8) of the last user message
    assert rows["paris"].endswith("What is the capital of France? Answer in …")
    assert rows["conversation"].endswith("second question in parts")
    assert "first question" not in rows["conversation"]
    assert "gpt-4o " in rows["conversation"]
    assert "fp_a,fp_b" in rows["drift"]


def test_ls_json(store, recorded):
    r = run("ls", "--store", str(store), "--json")
    assert r.exit_code == 0, r.output
    rows = {row["key"]: row for row in json.loads(r.stdout)}
    assert set(rows) == set(recorded.values())
    paris = rows[recorded["paris"]]
    assert paris["model"] == "gpt-4o-mini"
    assert paris["fingerprints"] == ["fp_a"]
    assert paris["prompt"] == "What is the capital of France? Answer in …"
    assert DATE.fullmatch(paris["recorded_at"])
    assert paris["endpoint"] == "chat.completions"
    assert rows[recorded["conversation"]]["prompt"] == "second question in parts"
    assert rows[recorded["conversation"]]["model"] == "gpt-4o"
    assert sorted(rows[recorded["drift"]]["fingerprints"]) == ["fp_a", "fp_b"]


def test_ls_newest_first(store):
    keys = []
    with Store(store) as st:
        for i, at in enumerate((1_700_000_000.0, 1_700_000_300.0, 1_700_000_100.0)):
            deck = Tapedeck(st, Settings(mode=Mode.RECORD))
            ex = deck.begin("POST", CHAT, {}, json.dumps({"model": "m", "messages": user(f"q{i}")}).encode())
            st.put(TapeEntry(
                key=ex.key, fingerprint="fp", endpoint="chat.completions", request=ex.canonical.to_json(),
                status=200, headers=[], body=answer("a", "fp", "m"), model="m", recorded_at=at))
            keys.append(ex.key)
    rows = json.loads(run("ls", "--store", str(store), "--json").stdout)
    assert [r["key"] for r in rows] == [keys[1], keys[2], keys[0]]
    assert rows[0]["recorded_at"] == "2023-11-14 22:18:20Z"


def test_ls_empty_store(store):
    Store(store).close()
    r = run("ls", "--store", str(store))
    assert r.exit_code == 0
    assert "no recordings in" in r.stdout
    assert json.loads(run("ls", "--store", str(store), "--json").stdout) == []


def test_store_from_environment(store, recorded):
    r = run("ls", "--json", env={"SEEDTAPE_STORE": str(store)})
    assert r.exit_code == 0
    assert len(json.loads(r.stdout)) == 3


# -- show ----------------------------------------------------------------------------------------------


def test_show_by_prefix(store, recorded):
    key = recorded["paris"]
    r = run("show", "--store", str(store), key[:10])
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert key in out
    assert "fp_a" in out and "gpt-4o-mini" in out and "chat.completions" in out
    assert "What is the capital of France?" in out  # the request
    assert "response: 200" in out and '"Paris"' in out  # the response body
    assert DATE.search(out)
    assert run("show", "--store", str(store), key[:10].upper()).stdout == out  # prefixes are case-insensitive


def test_show_json(store, recorded):
    key = recorded["paris"]
    r = run("show", "--store", str(store), key[:8], "--json")
    assert r.exit_code == 0, r.output
    e = json.loads(r.stdout)
    assert e["key"] == key and e["fingerprint"] == "fp_a" and e["model"] == "gpt-4o-mini"
    assert e["times_recorded"] == 1 and DATE.fullmatch(e["recorded_at"])
    assert e["request"]["body"]["messages"] == user("What is the capital of France? Answer in one word please.")
    assert e["request"]["body"]["seed"] == 1234
    assert e["response"]["status"] == 200
    assert e["response"]["body"]["choices"][0]["message"]["content"] == "Paris"  # parsed, not an escaped string
    assert e["response"]["headers"]["x-request-id"] == "req_cli"
    assert "set-cookie" not in e["response"]["headers"]


def test_show_every_fingerprint_or_one(store, recorded):
    key = recorded["drift"]
    both = json.loads(run("show", "--store", str(store), key, "--json").stdout)
    assert isinstance(both, list)
    assert {e["fingerprint"]: e["response"]["body"]["choices"][0]["message"]["content"] for e in both} == {
        "fp_a": "old", "fp_b": "new"}
    one = json.loads(run("show", "--store", str(store), key, "--json", "--fingerprint", "fp_a").stdout)
    assert one["fingerprint"] == "fp_a"
    r = run("show", "--store", str(store), key, "--fingerprint", "fp_zzz")
    assert r.exit_code != 0 and "fp_zzz" in r.stderr


def test_show_unknown_prefix(store, recorded):
    r = run("show", "--store", str(store), "zzzz")
    assert r.exit_code != 0
    assert r.stdout == ""
    assert "no recording has a key starting with 'zzzz'" in r.stderr
    assert "seedtape ls" in r.stderr  # the next step


def test_show_ambiguous_prefix(store):
    keys = [record(store, user(f"question number {i}")) for i in range(17)]  # 17 keys, 16 hex digits: two share one
    first = [k[0] for k in keys]
    shared = next(c for c in first if first.count(c) > 1)
    r = run("show", "--store", str(store), shared)
    assert r.exit_code != 0
    assert r.stdout == ""
    assert f"'{shared}' matches {first.count(shared)} keys" in r.stderr
    assert "give more characters" in r.stderr
    matching = [k for k in keys if k[0] == shared]
    assert all(k[:12] in r.stderr for k in matching[:5])


# -- stats -----------------------------------------------------------------------------------------------


def test_stats(store, recorded):
    r = run("stats", "--store", str(store))
    assert r.exit_code == 0, r.output
    fields = dict(line.split(None, 1) for line in r.stdout.splitlines())
    assert fields["entries"] == "4"
    assert fields["request_keys"] == "3"
    assert fields["fingerprints"] == "2"
    assert fields["events"] == "0"
    assert int(fields["size_bytes"]) > 0
    assert fields["path"] == str(store)
    s = json.loads(run("stats", "--store", str(store), "--json").stdout)
    assert (s["entries"], s["request_keys"], s["fingerprints"]) == (4, 3, 2)
    assert s["size_bytes"] > 0 and s["schema_version"] == 3


# -- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["ls"], ["ls", "--json"], ["show", "abc"], ["stats"]])
def test_missing_store_is_a_clear_error(tmp_path, command):
    missing = tmp_path / "no-store-here"
    r = CliRunner().invoke(cli, [*command, "--store", str(missing)])
    assert r.exit_code == 1
    assert r.stdout == ""
    assert f"no seedtape store at {missing}" in r.stderr
    assert "Traceback" not in r.output
    assert not missing.exists()  # reading never creates a store


def test_cli_runs_as_a_module(store, recorded):
    p = subprocess.run([sys.executable, "-m", "seedtape", "stats", "--store", str(store), "--json"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["entries"] == 4
    p = subprocess.run([sys.executable, "-m", "seedtape", "show", "--store", str(store), "zzzz"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert p.stderr.strip() == "Error: no recording has a key starting with 'zzzz': `seedtape ls` lists the keys"


def _schema(store: Path, value: bytes) -> None:
    Store(store).close()
    env = lmdb.open(str(store), max_dbs=8)
    try:
        with env.begin(write=True) as txn:
            txn.put(b"schema", value, db=env.open_db(b"meta", txn=txn))
    finally:
        env.close()


def serve_briefly(store: Path, cwd: Path, port: int = 0) -> subprocess.CompletedProcess:
    """A `seedtape serve` expected to refuse to start (killed after 60 s if it does start)."""
    cmd = [sys.executable, "-m", "seedtape", "serve", "--port", str(port), "--store", str(store),
           "--upstream", "http://127.0.0.1:9"]
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         text=True)
    try:
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def test_serve_refuses_a_store_with_an_unknown_schema(store, tmp_path):
    _schema(store, b"99")
    p = serve_briefly(store, tmp_path)
    assert p.returncode != 0
    assert "schema version 99" in p.stdout + p.stderr
    assert "OPENAI_BASE_URL" not in p.stdout  # it never started listening


def test_serve_unknown_schema_is_one_line_without_traceback(store, tmp_path):
    _schema(store, b"99")
    p = serve_briefly(store, tmp_path)
    out = (p.stdout + p.stderr).strip()
    assert p.returncode != 0
    assert "Traceback" not in out
    assert len(out.splitlines()) == 1
    assert "schema version 99" in out


def test_serve_store_that_cannot_be_created_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    p = serve_briefly(blocker / "store", tmp_path)
    out = (p.stdout + p.stderr).strip()
    assert p.returncode == 2 and "Traceback" not in out
    assert out.splitlines() == [f"seedtape: cannot create the store directory {blocker / 'store'}: Not a directory"]


def test_serve_on_a_port_in_use_names_seedtapes_own_option(store, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = serve_briefly(store, tmp_path, port=port)
    out = p.stdout + p.stderr
    assert p.returncode == 2 and "Traceback" not in out
    assert f"cannot listen on 127.0.0.1:{port}" in out and "--port" in out
    assert "--mode reverse" not in out  # not mitmproxy's advice
    assert "OPENAI_BASE_URL" not in out


# -- the addon in plain mitmdump --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_accepting(proc: subprocess.Popen, port: int, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mitmdump exited with {proc.returncode}: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"mitmdump did not listen on {port}: {log.read_text()}")


def test_addon_loads_into_plain_mitmdump(upstream, store, tmp_path):
    import openai

    mitmdump = Path(sys.executable).parent / "mitmdump"
    port = free_port()
    log = tmp_path / "mitmdump.log"
    cmd = [
        str(mitmdump), "--mode", f"reverse:{upstream.url}", "--listen-host", "127.0.0.1", "--listen-port", str(port),
        "-s", str(REPO / "seedtape" / "addons" / "recorder.py"),
        "--set", f"seedtape_store={store}", "--set", "seedtape_mode=auto", "--set", "connection_strategy=lazy",
        "--set", f"confdir={tmp_path / 'mitmproxy-conf'}",  # keep mitmproxy's CA out of the home directory
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
    try:
        wait_until_accepting(proc, port, log)
        assert "error in script" not in log.read_text(), log.read_text()
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0)
        first = chat(c, "through mitmdump")
        assert first.headers["seedtape-status"] == "recorded"
        assert first.headers["seedtape-seed"] == "1234; injected"
        second = chat(c, "through mitmdump")
        assert second.headers["seedtape-status"] == "hit"
        assert second.headers["seedtape-key"] == first.headers["seedtape-key"]
        assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
        assert len(upstream.requests_to("/chat/completions")) == 1  # the hit never reached the upstream
        assert upstream.requests_to("/chat/completions")[0]["body"]["seed"] == 1234
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert not (tmp_path / ".seedtape").exists()  # the store option was honoured from the start
    with Store(store, readonly=True) as st:
        assert st.stats()["entries"] == 1


def test_mitmdump_on_every_interface_needs_a_token(store, tmp_path):
    """mitmdump listens on all interfaces unless told otherwise: the addon refuses that without a token."""
    mitmdump = Path(sys.executable).parent / "mitmdump"
    base = [str(mitmdump), "--mode", "reverse:http://127.0.0.1:9", "--listen-port", "0",
            "-s", str(REPO / "seedtape" / "addons" / "recorder.py"),
            "--set", f"seedtape_store={store}", "--set", f"confdir={tmp_path / 'mitmproxy-conf'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    refused = subprocess.run(base, cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env,
                             stdin=subprocess.DEVNULL)
    assert refused.returncode != 0
    assert "add --listen-host 127.0.0.1, or --set seedtape_auth_token=TOKEN" in refused.stdout + refused.stderr
    assert "OPENAI_BASE_URL" not in refused.stdout
    # With a token it serves, and prints a URL this machine can use.
    proc = subprocess.Popen([*base, "--set", "seedtape_auth_token=tok"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, stdin=subprocess.DEVNULL)
    try:
        line = next(x for x in proc.stdout if "OPENAI_BASE_URL=" in x)
        assert re.fullmatch(r"OPENAI_BASE_URL=http://127\.0\.0\.1:\d+/v1", line.strip()), line
    finally:
        proc.terminate()
        proc.wait(15)
