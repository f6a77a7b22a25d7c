"""Explained misses, `seedtape explain`, `seedtape diff`, and strict tapes (unused recordings)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from conftest import chat, client

from seedtape.proxy.explain import jsondiff
from seedtape.proxy.explain.nearest import NearestIndex, explain
from seedtape.proxy.key.canonical import canonicalize
from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.store import Store

QUESTION = "What will the weather be like in Paris tomorrow"


def body(content=QUESTION, model="gpt-4o", temperature=0.7, history=True, **extra):
    msgs = [{"role": "system", "content": "You are terse."}]
    if history:
        msgs += [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    msgs.append({"role": "user", "content": content})
    return {"model": model, "messages": msgs, "temperature": temperature, "seed": 1234, **extra}


def canon(b, namespace="", path="/v1/chat/completions"):
    return canonicalize("POST", path, "", b, namespace=namespace)


def record(st: Store, c, fingerprint="fp_a"):
    st.put(TapeEntry(key=c.key, fingerprint=fingerprint, endpoint="chat.completions", request=c.to_json(),
                     status=200, headers=[], body=b'{"choices": []}', model=c.body.get("model", "")))
    return c.key


@pytest.fixture
def st(tmp_path):
    with Store(tmp_path / "store") as s:
        yield s


def changes_of(st, c, pinned=None):
    expl = explain(st, NearestIndex(st), c, pinned)
    return expl, [str(ch) for ch in expl.nearest[0].changes] if expl.nearest else []


def test_changed_message_is_named_with_its_path_and_both_values(st):
    record(st, canon(body()))
    expl, changes = changes_of(st, canon(body(content="What will the weather be like in Paris today")))
    assert changes == ['messages[3].content: "…tomorrow" != "…today"']
    assert "Nearest recordings" in expl.text()


def test_temperature_model_and_added_field(st):
    record(st, canon(body()))
    _, changes = changes_of(st, canon(body(temperature=0.2, model="gpt-4o-mini", top_p=0.5)))
    assert changes == ["model: gpt-4o != gpt-4o-mini", "temperature: 0.7 != 0.2", "top_p: (absent) != 0.5"]


def test_namespace_difference(st):
    record(st, canon(body(), namespace="test_a"))
    _, changes = changes_of(st, canon(body(), namespace="test_b"))
    assert changes == ["namespace: test_a != test_b"]


def test_same_request_under_another_fingerprint(st):
    c = canon(body())
    record(st, c, fingerprint="fp_x")
    expl, _ = changes_of(st, c, pinned="fp_y")
    assert expl.text() == "Same request, recorded only under fingerprint fp_x (pinned fp_y)."


def test_nothing_near_says_so(st):
    expl, _ = changes_of(st, canon(body()))
    assert expl.text() == "Nothing recorded for /v1/chat/completions is near this request."
    record(st, canon({"model": "emb", "input": "x"}, path="/v1/embeddings"))  # other endpoints never count
    expl, _ = changes_of(st, canon(body()))
    assert expl.nearest == []


def test_the_nearest_wins_and_at_most_three_are_named(st):
    near = record(st, canon(body(temperature=0.2)))
    record(st, canon(body(content="Tell me a joke about cats", temperature=0.2)))
    record(st, canon(body(content="Explain quantum physics", model="gpt-4o-mini", history=False)))
    record(st, canon(body(content="Something else entirely", history=False, temperature=1.5)))
    expl, changes = changes_of(st, canon(body()))
    assert expl.nearest[0].key == near
    assert changes == ["temperature: 0.2 != 0.7"]
    assert len(expl.nearest) == 3
    assert [n.score for n in expl.nearest] == sorted((n.score for n in expl.nearest), reverse=True)


def test_index_takes_in_recordings_from_other_processes(st, tmp_path):
    index = NearestIndex(st)
    record(st, canon(body(temperature=0.3)))
    assert index.nearest(canon(body()).to_json())  # refresh found it
    script = (  # another process records, as another proxy on the same store would
        "import sys; sys.path.insert(0, 'tests'); from test_explain import *\n"
        f"with Store({str(tmp_path / 'store')!r}) as other: print(record(other, canon(body(top_p=0.9))))"
    )
    k = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                       cwd=Path(__file__).parent.parent).stdout.strip()
    assert index.nearest(canon(body()).to_json())[0][0] == k


def test_long_values_are_shortened_around_the_difference():
    a, b = jsondiff.shorten_pair("Please summarize the following long article about cats",
                                 "Please summarize the following short article about cats")
    assert (a, b) == ('"…long…"', '"…short…"')
    assert jsondiff.shorten_pair("gpt-4o", "gpt-4o-mini") == ("gpt-4o", "gpt-4o-mini")


def test_an_insertion_keeps_the_same_context_on_both_sides():
    text = "Please summarize the following long article about AI calls"
    assert jsondiff.shorten_pair(text, text + "!") == ('"…calls"', '"…calls!"')
    a, b = jsondiff.shorten_pair("!" + text, text)
    assert a.startswith('"!Please') and b.startswith('"Please')


def test_first_departure_names_choice_field_token_and_character():
    rec = [{"index": 0, "content": "The cat sat on the mat."}]
    live = [{"index": 0, "content": "The cat sat on a mat."}]
    d = jsondiff.first_departure(rec, live)
    assert d["path"] == "[0].content" and d["token"] == 8 and d["char"] == 15
    assert (d["recorded_token"], d["live_token"]) == ("the", "a")


# -- end to end --------------------------------------------------------------------------


def test_replay_miss_is_explained_in_error_header_and_log(upstream, store, proxies):
    rec = proxies("--upstream", upstream.url, "--store", store)
    c = client(rec)
    c.chat.completions.create(**body())
    c.chat.completions.create(**body(content="Completely unrelated question about pasta", temperature=1))
    rec.stop()
    rep = proxies("--mode", "replay", "--store", store)
    with pytest.raises(openai.NotFoundError) as info:
        client(rep).chat.completions.create(**body(content="What will the weather be like in Paris today", temperature=0.2))
    msg = str(info.value)
    assert 'messages[3].content: "…tomorrow" != "…today"; temperature: 0.7 != 0.2' in msg
    assert msg.index("…today") < msg.index("#2 ")  # nearest first
    header = info.value.response.headers["seedtape-miss"]
    assert header.startswith("Nearest recordings (recorded != this request): #1 ")
    assert "temperature: 0.7 != 0.2" in header
    assert rep.logged("temperature: 0.7 != 0.2"), rep.output


def test_streaming_and_namespaced_misses_are_explained(upstream, store, proxies):
    rec = proxies("--upstream", upstream.url, "--store", store)
    ns_a = client(rec, default_headers={"seedtape-namespace": "test_a"})
    list(ns_a.chat.completions.create(**body(), stream=True))
    rec.stop()
    rep = proxies("--mode", "replay", "--store", store)
    ns_b = client(rep, default_headers={"seedtape-namespace": "test_b"})
    with pytest.raises(openai.NotFoundError) as info:
        ns_b.chat.completions.create(**body(), stream=True)
    assert "namespace: test_a != test_b" in str(info.value)
    with pytest.raises(openai.NotFoundError) as info:
        client(rep, base_url=rep.url(namespace="test_a")).chat.completions.create(**body(temperature=0.1))
    assert "temperature: 0.7 != 0.1" in str(info.value)


def cli(*args, input=None):
    return subprocess.run([sys.executable, "-m", "seedtape", *args], capture_output=True, text=True, input=input,
                          timeout=60)


def test_explain_command(upstream, store, proxies, tmp_path):
    p = proxies("--upstream", upstream.url, "--store", store)
    raw = client(p).chat.completions.with_raw_response.create(**body())
    key = raw.headers["seedtape-key"]
    p.stop()
    req = tmp_path / "req.json"
    b = body(temperature=0.2)
    b.pop("seed")  # as the client sends it: the proxy would inject the seed
    req.write_text(json.dumps(b))
    r = cli("explain", str(req), "--store", store)
    assert r.returncode == 1 and "would miss" in r.stdout and "temperature: 0.7 != 0.2" in r.stdout
    r = cli("explain", "-", "--store", store, "--json", input=json.dumps(b))
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["replays"] is False
    assert doc["nearest"][0]["key"] == key
    assert doc["nearest"][0]["differences"] == [{"path": "temperature", "a": 0.7, "b": 0.2, "text": "temperature: 0.7 != 0.2"}]
    same = dict(body())
    same.pop("seed")
    req.write_text(json.dumps(same))
    r = cli("explain", str(req), "--store", store)
    assert r.returncode == 0 and f"{key[:12]} replays" in r.stdout
    r = cli("explain", key[:10], "--store", store)
    assert r.returncode == 0 and "replays" in r.stdout


def test_diff_command(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    ka = client(p).chat.completions.with_raw_response.create(**body()).headers["seedtape-key"]
    kb = client(p).chat.completions.with_raw_response.create(**body(temperature=0.2)).headers["seedtape-key"]
    r = cli("diff", ka[:8], kb[:8], "--store", store)
    assert r.returncode == 0, r.stderr
    assert "temperature: 0.7 != 0.2" in r.stdout
    assert "  choices[0].content: " in r.stdout.split("response:")[1]  # the fake answers differ with temperature
    doc = json.loads(cli("diff", ka, kb, "--store", store, "--json").stdout)
    assert doc["request"] == [{"path": "temperature", "a": 0.7, "b": 0.2}]
    assert doc["response"][0]["path"] == "choices[0].content"  # the same paths as the text
    dep = doc["response_departure"]
    assert (dep["path"], dep["choice"], dep["field"]) == ("[0].content", 0, "content")
    assert isinstance(dep["token"], int) and isinstance(dep["char"], int)

    ke = client(p).embeddings.with_raw_response.create(model="text-embedding-3-small", input="hi").headers["seedtape-key"]
    r = cli("diff", ka, ke, "--store", store)
    assert r.returncode == 0, r.stderr
    assert "path: /v1/chat/completions != /v1/embeddings" in r.stdout
    assert r.stdout.split("response:")[1].strip() == "endpoint: chat.completions != embeddings"  # no invented fields


def test_report_unused_lists_exactly_the_unused_and_prune_removes_them(upstream, store, proxies, tmp_path):
    rec = proxies("--upstream", upstream.url, "--store", store)
    c = client(rec)
    for q in ("used one", "used two", "never used", "also never used"):
        chat(c, q)
    rec.stop()
    report = tmp_path / "unused.json"
    rep = proxies("--mode", "replay", "--store", store, "--report-unused", str(report))
    used = {chat(client(rep), q).headers["seedtape-key"] for q in ("used one", "used two", "used one")}
    rep.stop()
    doc = json.loads(report.read_text())
    with Store(store, readonly=True) as st:
        all_keys = set(st.keys())
    assert {e["key"] for e in doc["unused"]} == all_keys - used and len(doc["unused"]) == 2
    r = cli("prune", "--store", store, "--unused-in", str(report), "--dry-run")
    assert r.returncode == 0 and "would prune 2 entries" in r.stdout
    with Store(store, readonly=True) as st:
        assert set(st.keys()) == all_keys  # a dry run, and the report itself, delete nothing
    r = cli("prune", "--store", store, "--unused-in", str(report))
    assert r.returncode == 0
    with Store(store, readonly=True) as st:
        assert set(st.keys()) == used


SAMPLE = Path(__file__).parent / "sample_project"


def test_plugin_strict_fails_the_session_on_unused_recordings(upstream, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(SAMPLE, project, ignore=shutil.ignore_patterns("tapes", "__pycache__"))
    tmp = tmp_path / "tmp"  # the inner sessions' temporary directory, to see what they leave behind
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["TMPDIR"] = str(tmp)
    run = lambda *a, **e: subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *a],
                                         cwd=project, capture_output=True, text=True, timeout=300, env={**env, **e})
    # The first, recording run is strict too: what it just recorded was used by its tests.
    r = run("--seedtape-mode=auto", f"--seedtape-upstream={upstream.url}", "--seedtape-strict", OPENAI_API_KEY="sk-rec")
    assert r.returncode == 0, r.stdout
    assert "every recording in the tapes was used" in r.stdout
    assert "seedtape (auto): 4 recordings made, 1 replayed" in r.stdout  # two tests share one recording
    r = run("--seedtape-mode=replay", "--seedtape-strict")
    assert r.returncode == 0, r.stdout
    assert "every recording in the tapes was used" in r.stdout
    tapes_before = sorted(p.name for p in (project / "tapes").rglob("*.json"))
    r = run("--seedtape-mode=replay", "--seedtape-strict", "-k", "not story")
    assert r.returncode == 1, r.stdout
    assert "recordings no test used" in r.stdout and "1 unused" in r.stdout
    last = r.stdout.strip().splitlines()[-1]
    assert last == ("seedtape: the session FAILED (exit status 1): 1 recording in the tapes used by no test "
                    "(--seedtape-strict)"), last
    assert not list(tmp.glob("seedtape-strict*"))  # the report lives in pytest's rotated temporary directory
    assert sorted(p.name for p in (project / "tapes").rglob("*.json")) == tapes_before  # reported, never deleted
    # The clean-up command it prints, run as printed, removes exactly that recording.
    [command] = [line.strip() for line in r.stdout.splitlines() if "seedtape prune" in line]
    assert f"{sys.executable} -m seedtape prune" in command  # the interpreter running pytest, not a `seedtape` on PATH
    done = subprocess.run(["bash", "-c", command], cwd=project, capture_output=True, text=True, timeout=120,
                          env={**env, "PATH": "/usr/bin:/bin"})  # no venv active: `seedtape` itself is not found
    assert done.returncode == 0, done.stderr
    assert len(sorted(p.name for p in (project / "tapes").rglob("*.json"))) < len(tapes_before)
    r = run("--seedtape-mode=replay", "--seedtape-strict", "-k", "not story")
    assert r.returncode == 0, r.stdout
    assert "every recording in the tapes was used" in r.stdout


def test_report_unused_counts_what_the_run_recorded_as_used(upstream, store, proxies, tmp_path):
    old = proxies("--upstream", upstream.url, "--store", store)
    chat(client(old), "recorded earlier, not used now")
    old.stop()
    report = tmp_path / "unused.json"
    p = proxies("--upstream", upstream.url, "--store", store, "--report-unused", str(report))
    fresh = chat(client(p), "recorded in this run")
    assert fresh.headers["seedtape-status"] == "recorded"
    p.stop()
    doc = json.loads(report.read_text())
    [left] = doc["unused"]
    assert left["key"] != fresh.headers["seedtape-key"]
