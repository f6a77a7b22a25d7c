"""What a new user trips on (issue 13): replay against a wrong store, log lines of ordinary streams."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import chat, client

from seedtape.proxy.tapes.store import Store

REPO = Path(__file__).resolve().parent.parent


def serve(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """A `seedtape serve` expected to refuse to start."""
    return subprocess.run([sys.executable, "-m", "seedtape", "serve", "--port", "0", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_replay_against_a_store_that_does_not_exist_is_an_error_at_start(tmp_path):
    r = serve("--mode", "replay", "--store", "recordigns", cwd=tmp_path)  # a typo
    assert r.returncode == 2, r.stdout + r.stderr
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0]
    assert "--mode replay serves recordings only, but there is no store at recordigns" in lines[0]
    assert "seedtape import" in lines[0]
    assert not (tmp_path / "recordigns").exists()  # nothing was created under the wrong name


def test_mitmdump_replay_against_a_missing_store_is_one_error_line(tmp_path):
    mitmdump = Path(sys.executable).parent / "mitmdump"
    r = subprocess.run([str(mitmdump), "--mode", "reverse:http://127.0.0.1:9", "--listen-host", "127.0.0.1",
                        "--listen-port", "0", "-s", str(REPO / "seedtape" / "addons" / "recorder.py"),
                        "--set", f"seedtape_store={tmp_path / 'missing'}", "--set", "seedtape_mode=replay",
                        "--set", f"confdir={tmp_path / 'conf'}"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Traceback" not in out, out
    assert len([line for line in out.splitlines() if "no store at" in line]) == 1, out


def test_replay_on_an_empty_store_warns_and_names_no_upstream(tmp_path, proxies):
    Store(tmp_path / "empty").close()
    p = proxies("--mode", "replay", "--store", str(tmp_path / "empty"), "--upstream", "http://127.0.0.1:9")
    assert p.logged("holds no recordings: in replay mode every request will miss")
    start = next(line for line in p.lines if "mode=replay" in line)
    assert "upstream" not in start.replace("the upstream is never contacted", ""), start
    assert "127.0.0.1:9" not in p.output


def test_auto_mode_start_line_names_the_upstream(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    assert p.logged(f"mode=auto store={store} upstream={upstream.url}")


def test_a_recorded_stream_logs_like_any_other_request(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    c = client(p)
    chunks = list(c.chat.completions.create(model="gpt-4o-mini", stream=True,
                                            messages=[{"role": "user", "content": "stream me"}]))
    assert chunks
    key = chat(c, "settle the log").headers["seedtape-key"]  # a later request: the stream's line came before it
    assert p.logged(f"key={key[:12]}")
    stream_lines = [line for line in p.lines if "recorded POST /v1/chat/completions" in line]
    assert any(re.search(r"recorded POST /v1/chat/completions key=[0-9a-f]{12} fp=fp_fake_1 -> 200 [\d.]+ms$",
                         line.strip()) for line in stream_lines), p.output
    assert "Client disconnected" not in p.output and "after the upstream completed" not in p.output
    assert "failed, nothing recorded" not in p.output


def _azure(proxy, api_version: str = "2024-10-21"):
    import openai

    return openai.AzureOpenAI(azure_endpoint=proxy.origin, api_key="azure-key-TEST-0123", api_version=api_version,
                              max_retries=0)


def test_audit_of_azure_recordings_sends_api_key_and_does_not_crash(upstream, store, proxies):
    rec = proxies("--upstream", upstream.url, "--store", store)
    r = _azure(rec).chat.completions.with_raw_response.create(
        model="my-deployment", messages=[{"role": "user", "content": "azure question"}])
    assert r.headers["seedtape-status"] == "recorded"
    rec.stop()
    n = len(upstream.log)
    out = subprocess.run([sys.executable, "-m", "seedtape", "audit", "--store", store, "--upstream", upstream.url,
                          "--repeats", "2", "--api-key-env", "AZURE_OPENAI_API_KEY"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "AZURE_OPENAI_API_KEY": "azure-key-TEST-0123"})
    assert out.returncode == 0, out.stdout + out.stderr
    sent = upstream.log[n:]
    assert len(sent) == 2 and all("/openai/deployments/my-deployment/chat/completions" in s["path"] for s in sent)
    assert all("api-version=2024-10-21" in s["path"] for s in sent)
    assert all(s["headers"].get("api-key") == "azure-key-TEST-0123" for s in sent), sent[0]["headers"]
    assert all("authorization" not in {k.lower() for k in s["headers"]} for s in sent)


def test_one_bad_entry_is_reported_and_skipped_and_an_internal_failure_has_its_own_exit_status(upstream, store,
                                                                                              proxies):
    rec = proxies("--upstream", upstream.url, "--store", store)
    chat(client(rec), "good one")
    rec.stop()
    with Store(store) as st:  # a recording whose request has no path: it cannot be re-sent
        [good] = list(st.entries())
        bad = good.__class__(**{**good.__dict__, "key": "f" * 64, "request": {"body": good.request["body"]}})
        st.put(bad)
    out = subprocess.run([sys.executable, "-m", "seedtape", "audit", "--store", store, "--upstream", upstream.url,
                          "--repeats", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr  # the good entry was audited; the bad one reported
    assert "ffffffffffff" in out.stdout + out.stderr and "skipped" in out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def test_an_internal_failure_of_audit_exits_3_not_the_gate_status(upstream, store, proxies):
    import lmdb

    rec = proxies("--upstream", upstream.url, "--store", store)
    chat(client(rec), "one")
    rec.stop()
    env = lmdb.open(store, max_dbs=8)
    with env.begin(write=True) as txn:  # a corrupt value: the store cannot be read
        txn.put(b"e" * 64 + b"\0fp_x", b"not an entry", db=env.open_db(b"entries", txn=txn))
    env.close()
    out = subprocess.run([sys.executable, "-m", "seedtape", "audit", "--store", store, "--upstream", upstream.url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "seedtape audit: internal error" in out.stderr and "Traceback" not in out.stderr


def test_only_a_true_ci_value_means_ci():
    from seedtape.pytest_plugin import in_ci

    for value in ("true", "1", "yes", "True", "github"):
        assert in_ci({"CI": value}), value
    for value in ("", "0", "false", "False", "no", "off", " "):
        assert not in_ci({"CI": value}), value
    assert not in_ci({})


def _azure_chat(proxy, api_version: str, content: str = "azure question"):
    return _azure(proxy, api_version).chat.completions.with_raw_response.create(
        model="my-deployment", messages=[{"role": "user", "content": content}])


def test_a_changed_api_version_misses_naming_the_query_parameter(upstream, store, proxies):
    import openai
    import pytest

    rec = proxies("--upstream", upstream.url, "--store", store)
    assert _azure_chat(rec, "2024-10-21").headers["seedtape-status"] == "recorded"
    rec.stop()
    rep = proxies("--mode", "replay", "--store", store)
    with pytest.raises(openai.APIStatusError) as e:
        _azure_chat(rep, "2025-04-01-preview")
    text = str(e.value.body)
    assert "query.api-version: 2024-10-21 != 2025-04-01-preview" in text, text
    assert "query[0]" not in text


def test_ignore_query_keeps_api_version_out_of_the_key(upstream, store, proxies):
    rec = proxies("--upstream", upstream.url, "--store", store, "--ignore-query", "api-version")
    first = _azure_chat(rec, "2024-10-21")
    assert first.headers["seedtape-status"] == "recorded"
    rec.stop()
    rep = proxies("--mode", "replay", "--store", store, "--ignore-query", "api-version")
    again = _azure_chat(rep, "2025-04-01-preview")
    assert again.headers["seedtape-status"] == "hit"
    assert again.headers["seedtape-key"] == first.headers["seedtape-key"]
    with Store(store) as st:
        [entry] = list(st.entries())
    assert entry.request["query"] == []  # the ignored parameter is not part of the stored request
    # explain agrees with the proxy when told the same rule
    body = tmp = Path(store).parent / "req.json"
    tmp.write_text('{"model": "my-deployment", "messages": [{"role": "user", "content": "azure question"}]}')
    r = subprocess.run([sys.executable, "-m", "seedtape", "explain", "--store", store, "--path",
                        "/openai/deployments/my-deployment/chat/completions?api-version=2099-01-01",
                        "--ignore-query", "api-version", str(body)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "replays" in r.stdout, r.stdout + r.stderr


def test_audit_sets_an_ignored_query_parameter_again(upstream, store, proxies):
    rec = proxies("--upstream", upstream.url, "--store", store, "--ignore-query", "api-version")
    _azure_chat(rec, "2024-10-21")
    rec.stop()
    n = len(upstream.log)
    out = subprocess.run([sys.executable, "-m", "seedtape", "audit", "--store", store, "--upstream", upstream.url,
                          "--repeats", "1", "--query", "api-version=2025-01-01"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OPENAI_API_KEY": "k"})
    assert out.returncode == 0, out.stdout + out.stderr
    [sent] = upstream.log[n:]
    assert sent["path"].endswith("/chat/completions?api-version=2025-01-01"), sent["path"]
    bad = subprocess.run([sys.executable, "-m", "seedtape", "audit", "--store", store, "--query", "api-version"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "NAME=VALUE" in bad.stderr


def _sample_project(tmp_path: Path) -> Path:
    import shutil

    dest = tmp_path / "project"
    shutil.copytree(REPO / "tests" / "sample_project", dest, ignore=shutil.ignore_patterns("tapes", "__pycache__"))
    return dest


def test_the_plugin_placeholder_key_never_reaches_the_upstream(upstream, tmp_path):
    from test_pytest_plugin import run_pytest

    project = _sample_project(tmp_path)
    r = run_pytest(project, "--seedtape-mode=auto", f"--seedtape-upstream={upstream.url}")  # no OPENAI_API_KEY
    assert r.returncode == 1, r.stdout + r.stderr
    assert "set OPENAI_API_KEY" in r.stdout and "placeholder API key" in r.stdout, r.stdout
    assert "Incorrect API key" not in r.stdout
    assert upstream.log == []  # nothing, and so no placeholder key, reached the upstream
    written = {p.name for p in (project / "tapes").rglob("*") if p.is_file()}
    assert written <= {"seedtape-tapes.json", ".gitattributes"}, written  # no recording, at most an empty tape dir


def test_a_real_key_records_and_the_placeholder_then_replays(upstream, tmp_path):
    from test_pytest_plugin import run_pytest

    project = _sample_project(tmp_path)
    r = run_pytest(project, "--seedtape-mode=auto", f"--seedtape-upstream={upstream.url}",
                   env={"OPENAI_API_KEY": "sk-real"})
    assert r.returncode == 0, r.stdout + r.stderr
    n = len(upstream.log)
    assert all(s["headers"].get("authorization") == "Bearer sk-real" for s in upstream.log)
    r = run_pytest(project, "--seedtape-mode=auto", f"--seedtape-upstream={upstream.url}")  # hits only: no key needed
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(upstream.log) == n


def test_two_proxies_recording_one_key_with_different_answers_flag_a_divergence(upstream, store, proxies):
    from concurrent.futures import ThreadPoolExecutor

    upstream.noise = True  # every answer differs
    upstream.latency = 0.5  # both requests are in flight at once: both miss, both record
    one = proxies("--upstream", upstream.url, "--store", store)
    two = proxies("--upstream", upstream.url, "--store", store)
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda p: chat(client(p), "same question"), (one, two)))
    assert [a.headers["seedtape-status"] for a in answers] == ["recorded", "recorded"]
    assert answers[0].headers["seedtape-key"] == answers[1].headers["seedtape-key"]
    flagged = [a for a in answers if a.headers.get("seedtape-divergence", "").startswith("nondeterminism")]
    assert len(flagged) == 1, [a.headers.get("seedtape-divergence") for a in answers]
    one.stop()
    two.stop()
    r = subprocess.run([sys.executable, "-m", "seedtape", "events", "--store", store, "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert '"verdict": "nondeterminism"' in r.stdout and '"source": "proxy"' in r.stdout, r.stdout
