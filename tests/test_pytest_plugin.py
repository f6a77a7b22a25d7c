"""The pytest plugin and the Python API, used by a sample project as a new user would.

tests/sample_project is a tiny app with its own tests that only know the openai
SDK. It is recorded once against the fake upstream (tapes exported into its
tapes/ directory), then replayed from those tapes (imported into an empty
store) with the upstream stopped and no API key set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import openai
import pytest

import seedtape
from seedtape.proxy.tapes.store import Store

SAMPLE = Path(__file__).parent / "sample_project"


def run_pytest(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "CI", "SEEDTAPE_UPSTREAM")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=project,
                          capture_output=True, text=True, timeout=300, env={**clean, **(env or {})})


@pytest.fixture
def project(tmp_path):
    dest = tmp_path / "project"
    shutil.copytree(SAMPLE, dest, ignore=shutil.ignore_patterns("tapes", "__pycache__"))
    return dest


def tape_files(project: Path) -> set[str]:
    return {str(p.relative_to(project / "tapes")) for p in (project / "tapes").rglob("*") if p.is_file()}


def test_record_once_then_replay_offline_without_a_key(upstream, project, tmp_path):
    r = run_pytest(project, "--seedtape-mode=auto", f"--seedtape-upstream={upstream.url}",
                   env={"OPENAI_API_KEY": "sk-recording-key"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 passed" in r.stdout
    recorded = tape_files(project)
    assert recorded
    # Identical requests in two tests share one recording; the namespaced test keeps its own.
    assert len(upstream.requests_to("/chat/completions")) == 4
    assert not any("sk-recording-key" in (project / "tapes" / f).read_text(errors="replace") for f in recorded)
    upstream.stop()

    # On CI: replay is the default, the upstream is gone, no key at all.
    r = run_pytest(project, env={"CI": "true"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 passed" in r.stdout
    assert tape_files(project) == recorded  # replay wrote nothing

    # The tapes import into an empty store as well, with the CLI.
    empty = tmp_path / "fresh-store"
    imp = subprocess.run([sys.executable, "-m", "seedtape", "import", str(project / "tapes"), "--store", str(empty)],
                         capture_output=True, text=True)
    assert imp.returncode == 0, imp.stderr
    with Store(empty, readonly=True) as st:
        assert st.stats()["request_keys"] == 4  # summarize x2 prompts, story, namespaced summarize


def test_a_replay_miss_fails_the_test_and_says_how_to_record(upstream, project):
    assert run_pytest(project, "--seedtape-mode=auto", f"--seedtape-upstream={upstream.url}",
                      env={"OPENAI_API_KEY": "sk-recording-key"}).returncode == 0
    upstream.stop()
    (project / "test_new.py").write_text(
        "import pytest\nfrom app import summarize\n\n@pytest.mark.seedtape\n"
        "def test_never_recorded():\n    assert summarize('a brand new question')\n"
    )
    r = run_pytest(project, env={"CI": "1"})
    assert r.returncode == 1
    assert "1 failed, 4 passed" in r.stdout
    assert "seedtape replay miss" in r.stdout
    assert "--seedtape-mode=auto" in r.stdout
    assert "pytest --seedtape-mode=auto 'test_new.py::test_never_recorded'" in r.stdout


def test_marker_mode_overrides_the_session(upstream, project):
    (project / "test_record.py").write_text(
        "import pytest\nfrom app import summarize\n\n@pytest.mark.seedtape(mode='record')\n"
        "def test_always_live():\n    assert summarize('always live')\n"
    )
    args = ("--seedtape-mode=replay", f"--seedtape-upstream={upstream.url}", "test_record.py")
    key = {"OPENAI_API_KEY": "sk-recording-key"}
    assert run_pytest(project, *args, env=key).returncode == 0
    assert run_pytest(project, *args, env=key).returncode == 0
    assert len(upstream.requests_to("/chat/completions")) == 2  # record mode went live both times


def test_python_api_serves_tapes(upstream, tmp_path):
    tapes = tmp_path / "tapes"
    with seedtape.serve("auto", tapes=tapes, upstream=upstream.url) as proxy:
        c = openai.OpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0)
        first = c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "api"}])
    assert proxy.proc.returncode is not None  # stopped when the block ended
    assert any(tapes.rglob("*"))  # exported on the way out
    upstream.stop()
    with seedtape.serve("replay", tapes=tapes) as proxy:
        c = openai.OpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0)
        again = c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "api"}])
        assert again.choices[0].message.content == first.choices[0].message.content
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "not taped"}])
        ns = openai.OpenAI(base_url=proxy.url(namespace="other"), api_key="sk-x", max_retries=0)
        with pytest.raises(openai.NotFoundError):  # another namespace has no recording of it
            ns.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "api"}])


def test_python_api_warns_when_replay_has_no_tapes_directory(tmp_path):
    missing = tmp_path / "no-such-tapes"
    with pytest.warns(UserWarning, match="no tapes directory at .*no-such-tapes.*every request will miss"), \
            seedtape.serve("replay", tapes=missing) as proxy:
        assert proxy.base_url
