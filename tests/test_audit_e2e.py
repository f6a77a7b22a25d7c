"""Drift audit end to end: `serve --mode audit`, flags in record mode, `seedtape audit`, `seedtape events`."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import chat, client, wait_for

from seedtape.proxy.tapes.store import Store


def events(store: str) -> list[dict]:
    with Store(store, readonly=True) as st:
        return st.events()


def entry_bodies(store: str) -> dict:
    with Store(store, readonly=True) as st:
        return {(e.key, e.fingerprint): e.body for e in st.entries()}


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "seedtape", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def recorded(upstream, store, proxies):
    """Three requests recorded under fp_fake_1; returns their prompts."""
    p = proxies("--upstream", upstream.url, "--store", store)
    prompts = ["first question", "second question", "third question"]
    for q in prompts:
        assert chat(client(p), q).headers["seedtape-status"] == "recorded"
    p.stop()
    return prompts


@pytest.mark.parametrize("fingerprint, noise, verdict", [
    ("fp_fake_1", False, "match"),
    ("fp_fake_1", True, "nondeterminism"),
    ("fp_fake_2", True, "drift"),
    ("fp_fake_2", False, "fingerprint-only"),
])
def test_audit_mode_assigns_each_verdict(upstream, store, proxies, recorded, fingerprint, noise, verdict):
    before = entry_bodies(store)
    upstream.fingerprint, upstream.noise = fingerprint, noise
    p = proxies("--upstream", upstream.url, "--store", store, "--mode", "audit")
    raw = chat(client(p), recorded[0])
    assert raw.headers["seedtape-status"] == "live"
    header = raw.headers["seedtape-divergence"]
    assert header.startswith(verdict + "; similarity=")
    sim = float(header.split("=")[1])
    assert (sim == 1.0) == (verdict in ("match", "fingerprint-only"))
    [ev] = events(store)
    assert ev["verdict"] == verdict and ev["key"] == raw.headers["seedtape-key"]
    assert ev["recorded_fingerprint"] == "fp_fake_1" and ev["live_fingerprint"] == fingerprint
    assert ev["model"] == "gpt-4o-mini" and ev["source"] == "proxy"
    assert ev["recorded_output"][0]["content"] and ev["live_output"][0]["content"]
    assert p.logged(f"divergence={verdict}"), p.output
    assert entry_bodies(store) == before  # audit mode never changes what replay serves


def test_audit_mode_without_a_recording_says_nothing_and_stores_nothing(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store, "--mode", "audit")
    raw = chat(client(p), "never recorded")
    assert raw.headers["seedtape-status"] == "live" and "seedtape-divergence" not in raw.headers
    assert events(store) == [] and entry_bodies(store) == {}


def test_record_mode_flags_a_disagreeing_answer(upstream, store, proxies, recorded):
    upstream.noise = True
    p = proxies("--upstream", upstream.url, "--store", store, "--mode", "record")
    raw = chat(client(p), recorded[1])
    assert raw.headers["seedtape-status"] == "recorded"
    assert raw.headers["seedtape-divergence"].startswith("nondeterminism")
    assert [e["verdict"] for e in events(store)] == ["nondeterminism"]
    upstream.noise = False
    raw = chat(client(p), recorded[2])  # agrees: flagged as a match in the header, no event
    assert raw.headers["seedtape-divergence"].startswith("match")
    assert len(events(store)) == 1


def test_streamed_audit_is_stored_as_an_event(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    c = client(p)
    list(c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "stream audit"}], stream=True))
    assert wait_for(lambda: len(entry_bodies(store)) == 1)
    p.stop()
    upstream.fingerprint, upstream.noise = "fp_fake_2", True
    a = proxies("--upstream", upstream.url, "--store", store, "--mode", "audit")
    list(client(a).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "stream audit"}], stream=True))
    assert wait_for(lambda: events(store))
    [ev] = events(store)
    assert ev["verdict"] == "drift"


def test_audit_mode_embedding_distance(upstream, store, proxies, recorded):
    upstream.noise = True
    p = proxies("--upstream", upstream.url, "--store", store, "--mode", "audit", "--embedding-model", "text-embedding-3-small")
    chat(client(p), recorded[0])
    [ev] = events(store)
    assert ev["embedding_distance"] is not None and 0 < ev["embedding_distance"] <= 2
    assert upstream.requests_to("/embeddings")[0]["body"]["model"] == "text-embedding-3-small"


def test_audit_command_reports_json_html_and_passes(upstream, store, recorded, tmp_path):
    out_json, out_html = tmp_path / "audit.json", tmp_path / "audit.html"
    before = entry_bodies(store)
    r = cli("audit", "--store", store, "--upstream", upstream.url, "--repeats", "3", "--concurrency", "4",
            "--json", str(out_json), "--html", str(out_html), "--fail-on", "drift=0", "--fail-on", "nondeterminism=0")
    assert r.returncode == 0, r.stderr
    report = json.loads(out_json.read_text())
    assert report["samples"] == 9 and report["errors"] == 0
    assert report["verdict_shares"] == {"match": 1.0, "nondeterminism": 0.0, "drift": 0.0, "fingerprint-only": 0.0}
    assert report["identical_share"] == 1.0
    assert len(report["requests"]) == 3
    rr = report["requests"][0]
    for field in ("key", "model", "fingerprints_seen", "identical_share", "mean_similarity_to_recording",
                  "mean_pairwise_similarity", "samples", "verdicts"):
        assert field in rr
    assert rr["fingerprints_seen"] == ["fp_fake_1"] and rr["mean_pairwise_similarity"] == 1.0
    assert len(upstream.log) == 3 + 9
    assert entry_bodies(store) == before  # samples are events, not recordings
    assert len(events(store)) == 9 and {e["source"] for e in events(store)} == {"audit"}
    html = out_html.read_text()
    assert 'id="similarity-chart"' in html and 'id="fingerprint-chart"' in html
    data = json.loads(re.search(r'id="seedtape-audit-data">(.*?)</script>', html, re.S).group(1))
    assert len(data["report"]["requests"]) == 3
    assert {p["kind"] for p in data["fingerprint_points"]} == {"recorded", "sample"}
    assert "first question" in r.stdout  # the terminal table names the prompts


def test_audit_command_fails_on_thresholds(upstream, store, recorded, tmp_path):
    upstream.noise = True
    r = cli("audit", "--store", store, "--upstream", upstream.url, "--repeats", "2", "--fail-on", "nondeterminism=0.5")
    assert r.returncode == 1 and "nondeterminism" in r.stderr
    upstream.fingerprint = "fp_fake_2"
    out = tmp_path / "drift.json"
    r = cli("audit", "--store", store, "--upstream", upstream.url, "--repeats", "2", "--json", str(out),
            "--fail-on", "drift=10%")
    assert r.returncode == 1 and "drift: 100.0% of samples > 10.0%" in r.stderr
    rep = json.loads(out.read_text())
    assert rep["verdict_shares"]["drift"] == 1.0
    assert rep["requests"][0]["fingerprints_seen"] == ["fp_fake_2"]
    assert rep["requests"][0]["mean_pairwise_similarity"] < 1.0  # noisy samples differ among themselves


def test_audit_command_retries_429_and_5xx(upstream, store, recorded, tmp_path):
    upstream.fail_next = [429, 500, 503]
    out = tmp_path / "a.json"
    r = cli("audit", "--store", store, "--upstream", upstream.url, "--repeats", "1", "--concurrency", "1",
            "--key", "", "--json", str(out))
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    assert rep["errors"] == 0
    assert sum(s["attempts"] for rr in rep["requests"] for s in rr["samples"]) == 3 + 3


def test_audit_command_filters_and_errors(upstream, store, recorded, tmp_path):
    r = cli("audit", "--store", store, "--upstream", upstream.url, "--model", "no-such-model")
    assert r.returncode == 2 and "nothing to audit" in r.stderr
    r = cli("audit", "--store", store, "--upstream", upstream.url, "--older-than", "1d")
    assert r.returncode == 2
    r = cli("audit", "--store", store, "--upstream", "http://127.0.0.1:9", "--max-retries", "0", "--repeats", "1",
            env={"OPENAI_API_KEY": ""})
    assert r.returncode == 2 and "every sample failed" in r.stderr
    assert "http://127.0.0.1:9/v1/" in r.stderr  # the error names the upstream it could not reach
    assert "$OPENAI_API_KEY is not set" in r.stderr
    r = cli("audit", "--store", store, "--fail-on", "bogus=1")
    assert r.returncode == 2 and "nondeterminism, drift, fingerprint-only" in r.stderr


def test_events_command(upstream, store, proxies, recorded):
    upstream.noise = True
    p = proxies("--upstream", upstream.url, "--store", store, "--mode", "audit")
    chat(client(p), recorded[0])
    upstream.noise = False
    chat(client(p), recorded[1])
    r = cli("events", "--store", store, "--json")
    rows = json.loads(r.stdout)
    assert [e["verdict"] for e in rows] == ["nondeterminism", "match"]
    r = cli("events", "--store", store, "--json", "--verdict", "nondeterminism")
    assert [e["verdict"] for e in json.loads(r.stdout)] == ["nondeterminism"]
    r = cli("events", "--store", store, "--json", "--since", "1h", "--model", "gpt-4o-mini", "--source", "proxy")
    assert len(json.loads(r.stdout)) == 2
    r = cli("events", "--store", store, "--json", "--until", "1h")
    assert json.loads(r.stdout) == []
    r = cli("events", "--store", store)
    assert r.returncode == 0 and "nondeterminism" in r.stdout and "fp_fake_1 -> fp_fake_1" in r.stdout
