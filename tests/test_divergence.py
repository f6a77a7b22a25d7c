"""Divergence: what is compared, how it is classified, how similarity is measured."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from seedtape.proxy.audit.divergence import (
    classify,
    compare,
    cosine_distance,
    edit_similarity,
    mean_pairwise_similarity,
    outputs,
    tokens,
)
from seedtape.proxy.dialects import CHAT


def completion(content="hello there", fp="fp_a", finish="stop", **extra) -> bytes:
    return json.dumps({
        "id": extra.get("id", "chatcmpl-1"), "created": extra.get("created", 1), "object": "chat.completion",
        "model": "gpt-4o", "system_fingerprint": fp,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None,
                                             **({"tool_calls": extra["tool_calls"]} if "tool_calls" in extra else {})},
                     "logprobs": None, "finish_reason": finish}],
        "usage": extra.get("usage", {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}),
    }).encode()


def test_ids_timestamps_usage_and_fingerprint_are_not_compared():
    a = outputs("chat.completions", "json", completion(id="x", created=1, usage={"total_tokens": 1}, fp="fp_a"))
    b = outputs("chat.completions", "json", completion(id="y", created=2, usage={"total_tokens": 9}, fp="fp_b"))
    assert a == b


def test_content_finish_reason_refusal_and_tool_arguments_are_compared():
    base = outputs("chat.completions", "json", completion())
    assert outputs("chat.completions", "json", completion(content="hello world")) != base
    assert outputs("chat.completions", "json", completion(finish="length")) != base
    call = lambda args: [{"id": "c", "type": "function", "function": {"name": "f", "arguments": args}}]
    assert (outputs("chat.completions", "json", completion(tool_calls=call('{"a":1}')))
            != outputs("chat.completions", "json", completion(tool_calls=call('{"a":2}'))))


def test_stream_and_json_of_the_same_answer_compare_equal():
    body = completion(content="one two three")
    stream = CHAT.to_stream(body, include_usage=True)
    assert outputs("chat.completions", "sse", stream) == outputs("chat.completions", "json", body)


def test_every_verdict_is_assigned_correctly():
    assert classify(True, "fp_a", "fp_a") == "match"
    assert classify(False, "fp_a", "fp_a") == "nondeterminism"
    assert classify(False, "fp_a", "fp_b") == "drift"
    assert classify(True, "fp_a", "fp_b") == "fingerprint-only"
    same = outputs("chat.completions", "json", completion())
    other = outputs("chat.completions", "json", completion(content="hello world"))
    assert compare(same, "fp_a", same, "fp_a").verdict == "match"
    assert compare(same, "fp_a", same, "fp_a").similarity == 1.0
    d = compare(same, "fp_a", other, "fp_a")
    assert d.verdict == "nondeterminism" and 0 < d.similarity < 1
    assert d.header().startswith("nondeterminism; similarity=0.")


def _levenshtein(a: list[str], b: list[str]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


words = st.lists(st.sampled_from(["a", "b", "c", "d", "the", "cat", "."]), max_size=25).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(words, words)
def test_edit_similarity_matches_a_plain_levenshtein(a, b):
    ta, tb = tokens(a), tokens(b)
    expected = 1.0 if not ta and not tb else 1 - _levenshtein(ta, tb) / max(len(ta), len(tb))
    assert abs(edit_similarity(a, b) - expected) < 1e-9
    assert abs(edit_similarity(a, b) - edit_similarity(b, a)) < 1e-9


def test_similarity_examples():
    assert edit_similarity("the cat sat", "the cat sat") == 1.0
    assert edit_similarity("a b c d", "a c d") == 0.75
    assert edit_similarity("", "something") == 0.0
    assert mean_pairwise_similarity(["a b", "a b", "a c"]) == (1.0 + 0.5 + 0.5) / 3
    assert mean_pairwise_similarity(["only one"]) is None


def test_cosine_distance():
    assert cosine_distance([1, 0], [1, 0]) == 0.0
    assert abs(cosine_distance([1, 0], [0, 1]) - 1.0) < 1e-12
    assert abs(cosine_distance([1, 0], [-1, 0]) - 2.0) < 1e-12
    assert cosine_distance([0, 0], [1, 0]) == 1.0
