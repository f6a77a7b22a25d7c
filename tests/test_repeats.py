"""--repeats sequence: the Nth identical request of a scope is its own recording (issue 14, point 4)."""

from __future__ import annotations

import json

import pytest

from seedtape.proxy.deck import Tapedeck
from seedtape.proxy.modes import Mode
from seedtape.proxy.options import Settings
from seedtape.proxy.tapes.store import Store

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Pick a number"}]}


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as st:
        yield st


def deck(store: Store, mode: Mode = Mode.AUTO, sequence: bool = True) -> Tapedeck:
    return Tapedeck(store, Settings(mode=mode, sequence=sequence))


def answer(text: str) -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
                       "system_fingerprint": "fp_1", "choices": [{"index": 0, "finish_reason": "stop",
                                                                  "message": {"role": "assistant", "content": text}}]}).encode()


def send(d: Tapedeck, body: dict = BODY, path: str = CHAT, headers: dict | None = None, reply: str | None = None):
    ex = d.begin("POST", path, headers or {}, json.dumps(body).encode())
    if ex.goes_live and reply is not None:
        d.finish(ex, 200, [("content-type", "application/json")], answer(reply))
    return ex


def test_without_sequence_identical_requests_share_one_key(store):
    d = deck(store, sequence=False)
    a, b = send(d), send(d)
    assert a.key == b.key and a.occurrence == b.occurrence == 0
    assert "seedtape-occurrence" not in dict(a.headers())


def test_each_occurrence_is_its_own_recording_with_its_own_seed(store):
    plain = send(deck(store, Mode.REPLAY, sequence=False))
    d = deck(store)
    first, second, third = (send(d, reply=f"answer {n}") for n in (1, 2, 3))
    assert first.key == plain.key  # the first keeps the key it has without the option
    assert len({first.key, second.key, third.key}) == 3
    assert [e.occurrence for e in (first, second, third)] == [1, 2, 3]
    assert dict(third.headers())["seedtape-occurrence"] == "3"
    assert first.seed == "1234; injected" and third.seed == "1236; injected"
    assert json.loads(third.forward_body)["seed"] == 1236  # seed + N - 1 goes upstream
    assert all(e.status == "recorded" for e in (first, second, third))
    replay = deck(store, Mode.REPLAY)  # a new run: counting starts again, recordings replay in order
    got = [json.loads(send(replay).reply.body)["choices"][0]["message"]["content"] for _ in range(3)]
    assert got == ["answer 1", "answer 2", "answer 3"]
    fourth = send(replay)
    assert fourth.status == "miss" and fourth.reply.status == 404
    message = json.loads(fourth.reply.body)["error"]["message"]
    assert "recorded 3 times in its scope, this is the 4th" in message


def test_scopes_and_namespaces_count_apart(store):
    d = deck(store)
    a1 = send(d, headers={"seedtape-scope": "test_a"})
    b1 = send(d, headers={"seedtape-scope": "test_b"})
    a2 = send(d, headers={"seedtape-scope": "test_a"})
    assert (a1.occurrence, b1.occurrence, a2.occurrence) == (1, 1, 2) and a1.key == b1.key != a2.key
    routed = d.begin("POST", "/_seedtape/scope=test_b/v1/chat/completions", {}, json.dumps(BODY).encode())
    assert routed.occurrence == 2 and routed.key == a2.key  # the same occurrence means the same key
    ns = send(d, headers={"seedtape-namespace": "other", "seedtape-scope": "test_a"})
    assert ns.occurrence == 1  # another namespace is another request


def test_a_client_seed_is_kept_and_the_occurrence_still_splits_the_key(store):
    d = deck(store)
    body = BODY | {"seed": 7}
    first, second = send(d, body), send(d, body)
    assert second.seed == first.seed == "7; client" and second.forward_body is None
    assert first.key != second.key


def test_apis_without_a_seed_count_occurrences_too(store):
    d = deck(store)
    body = {"model": "gpt-4o-mini", "input": "Pick a number"}
    first, second = send(d, body, "/v1/responses"), send(d, body, "/v1/responses")
    assert first.key != second.key and second.occurrence == 2 and second.forward_body is None
    assert second.canonical.to_json()["occurrence"] == 2 and "seed" not in second.canonical.body


def test_the_pytest_plugin_counts_repeats_per_test(upstream, tmp_path):
    import textwrap

    from test_pytest_plugin import run_pytest

    project = tmp_path / "votes"
    project.mkdir()
    (project / "test_votes.py").write_text(textwrap.dedent('''
        import openai, pytest

        def votes():
            c = openai.OpenAI(max_retries=0)
            return [c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Vote"}])
                    .choices[0].message.content for _ in range(3)]

        @pytest.mark.seedtape
        def test_first():
            v = votes()
            assert len(set(v)) == 3  # three samples, three answers
            print("VOTES", v)

        @pytest.mark.seedtape
        def test_second():
            assert len(set(votes())) == 3  # counts from 1 again: the same three recordings
    '''))
    r = run_pytest(project, "--seedtape-mode=auto", f"--seedtape-upstream={upstream.url}", "--seedtape-repeats=sequence",
                   "-s", env={"OPENAI_API_KEY": "sk-rec"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "seedtape (auto): 3 recordings made, 3 replayed" in r.stdout
    live = next(line for line in r.stdout.splitlines() if line.startswith("VOTES"))
    seeds = [s["body"].get("seed") for s in upstream.requests_to("/chat/completions")]
    assert seeds == [1234, 1235, 1236]
    upstream.stop()
    r = run_pytest(project, "--seedtape-repeats=sequence", "-s", env={"CI": "true"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert next(line for line in r.stdout.splitlines() if line.startswith("VOTES")) == live
