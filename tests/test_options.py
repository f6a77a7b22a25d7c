"""Each option declared once (seedtape/proxy/options.py): the table, both front ends made from it, the docs held
against it, every bad value refused in one line, and the embedding distance for streamed answers too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import chat, client, wait_for

from seedtape.proxy import options
from seedtape.proxy.key.canonical import DEFAULT_IGNORED_FIELDS
from seedtape.proxy.modes import Mode
from seedtape.proxy.tapes.store import Store

REPO = Path(__file__).resolve().parent.parent


def test_names_are_unique_and_front_ends_are_known():
    names = [o.name for o in options.OPTIONS]
    assert len(names) == len(set(names))
    assert all(o.where <= {"serve", "mitmproxy"} and o.where for o in options.OPTIONS)
    assert {o.name for o in options.offered("mitmproxy")} >= {"store", "mode", "seed", "redact_field", "map_size"}
    assert "upstream" not in {o.name for o in options.offered("mitmproxy")}  # mitmproxy has --mode reverse:URL


@pytest.mark.parametrize("name, bad, says", [
    ("mode", "bogus", "is not one of auto, replay, record, audit, passthrough"),
    ("replay_pace", -1.0, "below the smallest allowed value, 0"),
    ("port", 70000, "above the largest allowed value, 65535"),
    ("redact_field", ["foo"], "is not a field path"),
    ("upstream", "ftp://x", "must start with http:// or https://"),
])
def test_validate_says_what_is_allowed(name, bad, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        options.BY_NAME[name].validate(bad)


def test_numbers_travel_as_text_through_mitmproxy():
    seed, pace = options.BY_NAME["seed"], options.BY_NAME["replay_pace"]
    assert seed.to_text(7) == "7" and seed.from_text("7") == 7
    assert pace.from_text(pace.to_text(0.5)) == 0.5
    with pytest.raises(ValueError, match="'abc' is not a whole number"):
        seed.from_text("abc")
    assert options.BY_NAME["store"].to_text("x") == "x"


def test_settings_from_values_and_defaults():
    s = options.settings({"mode": "replay", "seed_injection": False, "redact_header": ["X-A"]}, "http://up")
    assert s.mode is Mode.REPLAY and not s.seed.inject and s.upstream == "http://up"
    assert s.redact_headers == frozenset({"x-a"}) and s.ignored_fields == frozenset(DEFAULT_IGNORED_FIELDS)
    assert options.settings({}, "u") == options.Settings(upstream="u")


def test_serve_help_is_made_from_the_table():
    out = subprocess.run([sys.executable, "-m", "seedtape", "serve", "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    for o in options.offered("serve"):
        assert o.cli_flag in out, o.name
    assert "request.body.metadata" not in out  # metadata is never stored: an example that did nothing


def test_docs_name_every_option_of_each_front_end():
    page = (REPO / "docs" / "options.md").read_text()
    rows = set(re.findall(r"^\| `(--[a-z-]+)", page, re.M))
    assert rows == {o.cli_flag for o in options.offered("serve")}
    mitm = (REPO / "docs" / "mitmdump.md").read_text()
    assert set(re.findall(r"`(seedtape_[a-z_]+)`", mitm)) == {o.mitmproxy_name for o in options.offered("mitmproxy")}


BAD_MITMDUMP_VALUES = {
    "seedtape_mode": ("bogus", "is not one of auto, replay"),
    "seedtape_seed": ("abc", "is not a whole number"),
    "seedtape_replay_pace": ("-1", "below the smallest allowed value"),
    "seedtape_upstream_timeout": ("soon", "is not a number"),
    "seedtape_max_body": ("0", "below the smallest allowed value, 1"),
    "seedtape_redact_field": ("foo", "is not a field path"),
    "seedtape_map_size": ("12", "below the smallest allowed value, 4096"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BAD_MITMDUMP_VALUES))
def test_mitmdump_refuses_a_bad_value_in_one_line(name, tmp_path):
    value, says = BAD_MITMDUMP_VALUES[name]
    mitmdump = Path(sys.executable).parent / "mitmdump"
    cmd = [str(mitmdump), "--mode", "reverse:http://127.0.0.1:9", "--listen-host", "127.0.0.1", "--listen-port", "0",
           "-s", str(REPO / "seedtape" / "addons" / "recorder.py"), "--set", f"seedtape_store={tmp_path / 'store'}",
           "--set", f"confdir={tmp_path / 'conf'}", "--set", f"{name}={value}"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if name in line]
    assert len(lines) == 1 and says in lines[0], out
    assert "OPENAI_BASE_URL" not in r.stdout


@pytest.mark.parametrize("args, says", [
    (["--replay-pace", "-1"], "--replay-pace"),
    (["--mode", "bogus"], "--mode"),
    (["--redact-field", "foo"], "is not a field path"),
    (["--upstream", "ftp://x"], "must start with http:// or https://"),
])
def test_serve_refuses_a_bad_value_in_one_error_line(args, says, tmp_path):
    r = subprocess.run([sys.executable, "-m", "seedtape", "serve", "--port", "0", "--store", str(tmp_path / "s"), *args],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and says in errors[0], r.stderr
    assert not (tmp_path / "s").exists()


def test_serve_creates_no_store_but_the_one_it_was_given(tmp_path):
    """The options reach the addon before it opens a store: no ./.seedtape appears beside --store."""
    proc = subprocess.Popen([sys.executable, "-m", "seedtape", "serve", "--port", "0", "--store", "mine"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    try:
        assert any("OPENAI_BASE_URL=" in line for line in proc.stdout)
    finally:
        proc.terminate()
        proc.wait(30)
    assert (tmp_path / "mine" / "data.mdb").exists()
    assert not (tmp_path / ".seedtape").exists()


def _events(store: str) -> list[dict]:
    with Store(store, readonly=True) as st:
        return st.events()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_audit_mode_embedding_distance_for_plain_and_streamed_answers(upstream, store, proxies, stream):
    rec = proxies("--upstream", upstream.url, "--store", store)
    chat(client(rec), "how far apart")
    rec.stop()
    upstream.noise = True  # the live answer differs from the recording
    p = proxies("--upstream", upstream.url, "--store", store, "--mode", "audit",
                "--embedding-model", "text-embedding-3-small")
    c = client(p)
    if stream:
        chunks = list(c.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                messages=[{"role": "user", "content": "how far apart"}]))
        assert chunks
    else:
        chat(c, "how far apart")
    assert wait_for(lambda: _events(store))
    [ev] = _events(store)
    assert ev["verdict"] == "nondeterminism"
    assert ev["embedding_distance"] is not None and 0 < ev["embedding_distance"] <= 2
    assert [r["body"]["model"] for r in upstream.requests_to("/embeddings")] == ["text-embedding-3-small"]
    if not stream:  # a stream's verdict comes after its log line; its event carries the distance
        assert p.logged("embedding_distance=")
