"""Volatile values: `--ignore-path PATH` and `--mask REGEX` keep tool call ids and timestamps out of the key.

Unit tests of the rules (seedtape/proxy/key/keyrules.py), of their place in the canonical request
(no key changes without them), of the options that carry them (refused at start when bad), and of
`seedtape explain`, which applies them and says which ones changed the request.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seedtape.proxy import options
from seedtape.proxy.key import canonical, keyrules
from seedtape.proxy.key.canonical import canonicalize
from seedtape.proxy.key.keyrules import MASKED, compile_mask, parse_path
from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.store import Store

REPO = Path(__file__).resolve().parent.parent
ISO = r"\d{4}-\d\d-\d\dT[\d:.]+Z?"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def conversation(call_id="call_abc", when="2025-01-15T09:30:00Z", seed=True):
    """A chat request after one tool call: the call id twice, the tool's JSON output with a timestamp."""
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": "What time is it in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": call_id, "type": "function", "function": {"name": "clock", "arguments": '{"city": "Paris"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": json.dumps({"time": when})},
        ],
    }
    if seed:
        body["seed"] = 1234
    return body


def responses_input(call_id="call_abc", output='{"at": "2025-01-15T09:30:00Z", "run": "1b4e28ba-2fa1-11d2-883f-0016541e9fd2"}'):
    return {
        "model": "gpt-4o",
        "input": [
            {"role": "user", "content": "What time is it in Paris?"},
            {"type": "function_call", "call_id": call_id, "name": "clock", "arguments": "{}"},
            {"type": "function_call_output", "call_id": call_id, "output": output},
        ],
    }


def key(body, paths=(), masks=(), **kw):
    return canonicalize(
        "POST",
        "/v1/chat/completions",
        "",
        body,
        ignored_paths=[parse_path(p) for p in paths],
        masks=[compile_mask(m) for m in masks],
        **kw,
    )


# -- no key changes without the options ------------------------------------------------------------


def test_keys_without_the_options_are_byte_for_byte_those_of_before():
    """Golden keys computed with canonical.py before the rules existed."""
    body = conversation()
    body.update(temperature=1.0, user="u", stream=True)
    c = canonicalize("POST", "/v1//chat/completions/", "b=2&a=1", body, namespace="ns")
    assert c.key == "9e51095c7e08209b3f085fc1904cc14aabcad8d4921bf9bc35e570389132037c"
    assert c.applied == ()
    raw = canonicalize("POST", "/v1/x", "", b"raw", ignored_paths=[parse_path("a")], masks=[compile_mask("r")])
    assert raw.key == "d95a4da05acdd338913dde1b00557fd9ed9c3c0c7af837bfa60d8f10beff6f1b"  # rules act on JSON only
    assert raw.applied == ()


def test_rules_that_reach_nothing_change_no_key_and_are_not_recorded():
    body = conversation()
    c = key(body, paths=["nothing.*.here", "messages.*.absent", "model.deeper", "messages.9"], masks=["never-there"])
    assert c.key == key(body).key and c.applied == ()


def test_the_body_given_is_never_changed():
    body = conversation()
    before = copy.deepcopy(body)
    c = key(body, paths=["messages.*.tool_call_id", "messages.*.tool_calls"], masks=[ISO])
    assert body == before
    assert "tool_call_id" not in c.body["messages"][2]


# -- --ignore-path ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, steps",
    [
        ("messages.*.tool_call_id", ("messages", "*", "tool_call_id")),
        ("messages[*].tool_call_id", ("messages", "*", "tool_call_id")),
        ("messages[*].tool_calls[*].id", ("messages", "*", "tool_calls", "*", "id")),
        ("input[*].call_id", ("input", "*", "call_id")),
        ("tools[0]", ("tools", "0")),
        ("tools.0", ("tools", "0")),
        ('["a.b"].c', ("a.b", "c")),
        ('x["weird key"][2]', ("x", "weird key", "2")),
        ("  user  ", ("user",)),
        ("*", ("*",)),
    ],
)
def test_path_spellings(text, steps):
    assert parse_path(text).steps == steps


@pytest.mark.parametrize("bad", ["", "  ", "a..b", ".a", "a.", "a[", "a[x]", "a]", "a.[0]", "a[*]b", "a[-1]", '["unclosed]'])
def test_bad_paths_say_what_a_path_looks_like(bad):
    with pytest.raises(ValueError, match=r"is not a body path|empty step|bad bracket|after a step"):
        parse_path(bad)


def test_ignore_path_removes_the_field_in_every_item_and_counts_them():
    a = key(conversation("call_abc"), paths=["messages[*].tool_call_id", "messages.*.tool_calls.*.id"])
    b = key(conversation("call_xyz"), paths=["messages[*].tool_call_id", "messages.*.tool_calls.*.id"])
    assert a.key == b.key != key(conversation("call_abc")).key
    assert [str(u) for u in a.applied] == [
        "--ignore-path 'messages[*].tool_call_id' (1 field)",
        "--ignore-path 'messages.*.tool_calls.*.id' (1 field)",
    ]
    assert a.body["messages"][1]["tool_calls"][0] == {
        "type": "function",
        "function": {"name": "clock", "arguments": '{"city": "Paris"}'},
    }


def test_ignore_path_counts_every_field_it_removes():
    body = {"messages": [{"role": "tool", "tool_call_id": str(i), "content": "x"} for i in range(3)] + [{"role": "user"}]}
    c = canonicalize("POST", "/v1/chat/completions", "", body, ignored_paths=[parse_path("messages.*.tool_call_id")])
    assert [u.to_json() for u in c.applied] == [{"option": "--ignore-path", "value": "messages.*.tool_call_id", "count": 3}]
    assert all("tool_call_id" not in m for m in c.body["messages"])


def test_responses_api_call_ids():
    rules = ["input[*].call_id"]
    assert key(responses_input("call_a"), rules).key == key(responses_input("call_b"), rules).key
    assert key(responses_input("call_a")).key != key(responses_input("call_b")).key


def test_nested_lists_indexes_and_wildcards_over_objects():
    body = {
        "a": [{"b": [{"c": 1, "d": 2}, {"c": 3}]}, {"b": [{"c": 4}]}, {"b": "not a list"}, 7],
        "tools": [{"n": 0}, {"n": 1}, {"n": 2}],
        "labels": {"x": 1, "y": 2},
        "keep": 1,
    }
    c = canonicalize(
        "POST",
        "/p",
        "",
        body,
        ignored_paths=[parse_path(p) for p in ("a.*.b.*.c", "tools.1", "labels.*", "a[9].b", "keep.deeper")],
    )
    assert c.body == {
        "a": [{"b": [{"d": 2}, {}]}, {"b": [{}]}, {"b": "not a list"}, 7],
        "tools": [{"n": 0}, {"n": 2}],
        "labels": {},
        "keep": 1,
    }
    assert [(u.value, u.count) for u in c.applied] == [("a.*.b.*.c", 3), ("tools.1", 1), ("labels.*", 2)]


def test_a_whole_list_and_its_items():
    body = {"tools": [{"n": 0}, {"n": 1}], "messages": [1, 2, 3]}
    c = canonicalize("POST", "/p", "", body, ignored_paths=[parse_path("tools"), parse_path("messages[*]")])
    assert c.body == {"messages": []}
    assert [(u.value, u.count) for u in c.applied] == [("tools", 1), ("messages[*]", 3)]


def test_digit_steps_are_keys_of_objects_too():
    c = canonicalize("POST", "/p", "", {"m": {"0": "a", "1": "b"}}, ignored_paths=[parse_path("m.0")])
    assert c.body == {"m": {"1": "b"}}


def test_paths_come_after_the_top_level_ignore_list():
    body = {"metadata": {"trace": "t1"}, "model": "m"}
    c = canonicalize("POST", "/p", "", body, ignored_paths=[parse_path("metadata.trace")])
    assert c.body == {"model": "m"} and c.applied == ()  # already gone: nothing for the path to do


# -- --mask ----------------------------------------------------------------------------------------


def test_mask_reaches_nested_strings_and_json_inside_strings():
    a = key(conversation(when="2025-01-15T09:30:00Z"), masks=[ISO])
    b = key(conversation(when="2026-02-01T23:59:59.123Z"), masks=[ISO])
    assert a.key == b.key
    assert a.body["messages"][2]["content"] == json.dumps({"time": MASKED})
    assert [str(u) for u in a.applied] == [r"--mask '\d{4}-\d\d-\d\dT[\d:.]+Z?' (1 match)"]


def test_mask_in_a_function_call_output_and_at_any_depth():
    body = responses_input()
    body["metadata_like"] = {"deep": [[{"when": "2024-05-06T07:08:09Z and 2024-05-06T07:08:10Z"}]]}
    c = canonicalize("POST", "/v1/responses", "", body, masks=[compile_mask(ISO), compile_mask(UUID)])
    assert c.body["input"][2]["output"] == f'{{"at": "{MASKED}", "run": "{MASKED}"}}'
    assert c.body["metadata_like"]["deep"][0][0]["when"] == f"{MASKED} and {MASKED}"
    assert [(u.option, u.value, u.count) for u in c.applied] == [("--mask", ISO, 3), ("--mask", UUID, 1)]
    other = responses_input(output='{"at": "1999-12-31T23:59:59Z", "run": "00000000-0000-0000-0000-000000000000"}')
    other["metadata_like"] = {"deep": [[{"when": "2000-01-01T00:00:00Z and 2000-01-01T00:00:01Z"}]]}
    assert canonicalize("POST", "/v1/responses", "", other, masks=[compile_mask(ISO), compile_mask(UUID)]).key == c.key


def test_mask_leaves_keys_numbers_and_other_values_alone():
    body = {"2025-01-01T00:00:00Z": 1, "n": 20250101, "t": True, "z": None, "f": 1.0}
    c = canonicalize("POST", "/p", "", body, masks=[compile_mask(r"\d+")])
    assert c.body == {"2025-01-01T00:00:00Z": 1, "n": 20250101, "t": True, "z": None, "f": 1} and c.applied == ()


def test_masks_apply_in_the_order_given():
    body = {"s": "id-123"}
    first = canonicalize("POST", "/p", "", body, masks=[compile_mask(r"id-\d+"), compile_mask(r"\d+")])
    second = canonicalize("POST", "/p", "", body, masks=[compile_mask(r"\d+"), compile_mask(r"id-\d+")])
    assert first.body == {"s": MASKED} and [u.value for u in first.applied] == [r"id-\d+"]
    assert second.body == {"s": f"id-{MASKED}"} and [u.value for u in second.applied] == [r"\d+"]


def test_zero_width_matches_mask_nothing():
    c = canonicalize("POST", "/p", "", {"s": "a b"}, masks=[compile_mask(r"\b"), compile_mask(r"(?=b)")])
    assert c.body == {"s": "a b"} and c.applied == ()


@pytest.mark.parametrize(
    "bad, says",
    [
        ("a(", "is not a regular expression"),
        ("[", "is not a regular expression"),
        ("x*", "matches the empty string"),
        ("", "matches the empty string"),
        ("(?m)^", "matches the empty string"),
        ("a|", "matches the empty string"),
    ],
)
def test_bad_masks_are_refused(bad, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        compile_mask(bad)


def test_masks_and_paths_compare_by_their_text():
    assert compile_mask(ISO) == compile_mask(ISO) and parse_path("a.*") == parse_path("a.*")
    assert options.settings({"mask": [ISO]}, "u") == options.settings({"mask": [ISO]}, "u")


def test_a_mask_that_runs_too_long_fails_the_request(monkeypatch):
    if keyrules._regex is None:
        pytest.skip("the regex module (its timeout) is not installed")
    monkeypatch.setattr(keyrules, "MASK_TIMEOUT", 0.2)
    slow = compile_mask(r"(x+x+)+y")
    with pytest.raises(keyrules.MaskTimeout, match=r"--mask '\(x\+x\+\)\+y' ran longer than 0.2 s"):
        canonicalize("POST", "/p", "", {"s": "x" * 5000}, masks=[slow])


def test_without_the_regex_module_plain_re_does_the_same(monkeypatch):
    with_regex = key(conversation(), masks=[ISO])
    monkeypatch.setattr(keyrules, "_regex", None)
    m = compile_mask(ISO)
    assert isinstance(m.pattern, re.Pattern)
    plain = canonicalize("POST", "/v1/chat/completions", "", conversation(), masks=[m])
    assert plain.key == with_regex.key and plain.applied == with_regex.applied


# -- the record of what applied ---------------------------------------------------------------------


def test_applied_is_kept_outside_the_key():
    c = key(conversation(), paths=["messages.*.tool_call_id"], masks=[ISO])
    assert len(c.applied) == 2
    assert "applied" not in json.dumps(c.to_json())
    bare = canonical.CanonicalRequest(c.method, c.path, c.query, c.body)
    assert bare == c and bare.key == c.key  # not compared, not hashed


def test_canonical_body_takes_the_rules_too():
    """What deck.py's --repeats sequence path calls: the same body as canonicalize's."""
    body = conversation()
    paths, masks = (parse_path("messages.*.tool_call_id"),), (compile_mask(ISO),)
    got = canonical.canonical_body(body, frozenset(), ignored_paths=paths, masks=masks)
    assert got == canonicalize("POST", "/p", "", body, ignored_fields=frozenset(), ignored_paths=paths, masks=masks).body
    assert canonical.canonical_body(body, frozenset()) == canonicalize("POST", "/p", "", body, ignored_fields=frozenset()).body


# -- properties ------------------------------------------------------------------------------------

NAME_LIST = ["messages", "tool_call_id", "content", "id", "a", "0"]
NAMES = st.sampled_from(NAME_LIST)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet="ab-:0123456789TZcl_ ", max_size=30),
    st.sampled_from(
        ["2025-01-15T09:30:00Z", "call_abc", '{"time": "2025-01-15T09:30:00.5Z"}', "1b4e28ba-2fa1-11d2-883f-0016541e9fd2"]
    ),
)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(NAMES, inner, max_size=4), max_leaves=25)
BODIES = st.dictionaries(NAMES, JSON, max_size=5)
PATHS = st.lists(st.sampled_from([*NAME_LIST, "*"]), min_size=1, max_size=4).map(".".join)
MASKS = st.sampled_from([ISO, UUID, r"\d+", r"call_\w+", r"[0-9a-f]{8}"])  # none matches inside <masked>
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(body=BODIES, paths=st.lists(PATHS, max_size=3), masks=st.lists(MASKS, max_size=3))
def test_property_rules_are_idempotent(body, paths, masks):
    """Applying the rules to a body they already shaped changes nothing more (and records nothing).

    Not for a path that ends in an array index: it removes that item, and the next one moves up into its place."""
    paths = [p for p in paths if not p.rsplit(".", 1)[-1].isdigit()]
    ps, ms = [parse_path(p) for p in paths], [compile_mask(m) for m in masks]
    once, used = canonical.rules_body(body, frozenset(), ignored_paths=ps, masks=ms)
    twice, again = canonical.rules_body(once, frozenset(), ignored_paths=ps, masks=ms)
    assert twice == once and again == ()
    assert all(u.count > 0 for u in used)


@PROPERTY
@given(body=BODIES, masks=st.lists(MASKS, min_size=1, max_size=3))
def test_property_masked_strings_keep_no_match(body, masks):
    ms = [compile_mask(m) for m in masks]
    out, _ = canonical.rules_body(body, frozenset(), masks=ms)

    def strings(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for v in node.values():
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)

    assert not any(m.pattern.search(s) for s in strings(out) for m in ms[-1:])  # the last mask leaves no match


@PROPERTY
@given(body=BODIES, path=PATHS, value=JSON)
def test_property_an_ignored_path_never_splits_a_key(body, path, value):
    """Whatever an ignored path holds, the key is the same: set the value at every place the path names."""
    p = parse_path(path)

    def put(node, steps):  # ``value`` at every place the path reaches, and where its last step would add a key
        head, rest = steps[0], steps[1:]
        if isinstance(node, dict):
            keys = list(node) if head == "*" else [head] if head in node or not rest else []
        elif isinstance(node, list):
            keys = list(range(len(node))) if head == "*" else [int(head)] if head.isdigit() and int(head) < len(node) else []
        else:
            return
        for k in keys:
            if rest:
                put(node[k], rest)
            else:
                node[k] = value

    changed = copy.deepcopy(body)
    put(changed, p.steps)
    a = canonicalize("POST", "/p", "", body, ignored_fields=frozenset(), ignored_paths=[p])
    b = canonicalize("POST", "/p", "", changed, ignored_fields=frozenset(), ignored_paths=[p])
    assert a.key == b.key


# -- the options ------------------------------------------------------------------------------------


def test_settings_carry_the_parsed_rules():
    s = options.settings({"ignore_path": ["messages[*].tool_call_id"], "mask": [ISO]}, "u")
    assert [(p.text, p.steps) for p in s.ignored_paths] == [("messages[*].tool_call_id", ("messages", "*", "tool_call_id"))]
    assert [m.text for m in s.masks] == [ISO]
    assert options.settings({}, "u").ignored_paths == () and options.settings({}, "u").masks == ()


@pytest.mark.parametrize(
    "name, bad, says",
    [
        ("ignore_path", ["ok.path", "a..b"], "'a..b' has an empty step"),
        ("mask", [ISO, "a("], "'a(' is not a regular expression"),
        ("mask", ["\\d*"], "matches the empty string"),
    ],
)
def test_options_check_every_value(name, bad, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        options.BY_NAME[name].validate(bad)


def serve(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """A `seedtape serve` expected to refuse to start."""
    return subprocess.run(
        [sys.executable, "-m", "seedtape", "serve", "--port", "0", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    "args, says",
    [
        (
            ["--ignore-path", "messages..tool_call_id"],
            "Invalid value for --ignore-path: 'messages..tool_call_id' has an empty step",
        ),
        (
            ["--ignore-path", "ok", "--ignore-path", "messages[x]"],
            "Invalid value for --ignore-path: 'messages[x]' has a bad bracket",
        ),
        (["--mask", "(unclosed"], "Invalid value for --mask: '(unclosed' is not a regular expression"),
        (["--mask", "x*"], "Invalid value for --mask: 'x*' matches the empty string"),
    ],
)
def test_serve_refuses_a_bad_rule_at_start_in_one_line(args, says, tmp_path):
    r = serve("--store", str(tmp_path / "s"), *args, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and says in errors[0], r.stderr
    assert not (tmp_path / "s").exists()


# -- seedtape explain -------------------------------------------------------------------------------

FP = "fp_44709d6fcb"
RULES = ["--ignore-path", "messages[*].tool_call_id", "--ignore-path", "messages[*].tool_calls[*].id", "--mask", ISO]


def cli(*args, cwd=None, input=None):
    return subprocess.run(
        [sys.executable, "-m", "seedtape", *args], capture_output=True, text=True, input=input, timeout=60, cwd=cwd
    )


def put(st: Store, c) -> str:
    st.put(
        TapeEntry(
            key=c.key,
            fingerprint=FP,
            endpoint="chat.completions",
            request=c.to_json(),
            status=200,
            headers=[],
            body=b'{"choices": []}',
            format="json",
            model="gpt-4o",
        )
    )
    return c.key


@pytest.fixture
def recorded(tmp_path):
    """A store with one tool-call conversation recorded without rules, and the next run's request in req.json."""
    with Store(str(tmp_path / ".seedtape")) as st:
        old = put(st, canonicalize("POST", "/v1/chat/completions", "", conversation()))
    (tmp_path / "req.json").write_text(json.dumps(conversation("call_xyz", "2025-01-15T09:31:12Z", seed=False), indent=1))
    return tmp_path, old


def test_explain_names_the_volatile_values(recorded):
    where, old = recorded
    r = cli("explain", "req.json", cwd=where)
    assert r.returncode == 1, r.stderr
    assert f"#1 {old[:12]}: messages[1].tool_calls[0].id: call_abc != call_xyz;" in r.stdout
    assert "messages[2].tool_call_id: call_abc != call_xyz." in r.stdout
    assert "Rules" not in r.stdout  # no rules given, none mentioned


def test_explain_with_the_rules_says_which_applied_and_finds_the_old_recording(recorded):
    where, old = recorded
    r = cli("explain", "req.json", *RULES, "--mask", "never-there", cwd=where)
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1] == (
        "Rules applied: --ignore-path 'messages[*].tool_call_id' (1 field), --ignore-path 'messages[*].tool_calls[*].id' "
        r"(1 field), --mask '\d{4}-\d\d-\d\dT[\d:.]+Z?' (1 match)."
    )
    assert lines[2] == "Rules that changed nothing here: --mask never-there."
    assert lines[-1].startswith(f"With these rules {old[:12]} is this same request, recorded before they applied")

    doc = json.loads(cli("explain", "req.json", *RULES, "--mask", "never-there", "--json", cwd=where).stdout)
    assert doc["rules_applied"] == [
        {"option": "--ignore-path", "value": "messages[*].tool_call_id", "count": 1},
        {"option": "--ignore-path", "value": "messages[*].tool_calls[*].id", "count": 1},
        {"option": "--mask", "value": ISO, "count": 1},
    ]
    assert doc["rules_unused"] == [{"option": "--mask", "value": "never-there"}]
    assert doc["same_under_rules"] == [old]


def test_recorded_under_the_rules_every_next_run_replays(recorded):
    where, _ = recorded
    rules = dict(
        ignored_paths=[parse_path("messages[*].tool_call_id"), parse_path("messages[*].tool_calls[*].id")],
        masks=[compile_mask(ISO)],
    )
    with Store(str(where / ".seedtape")) as st:  # what the proxy records once it runs with the rules
        new = put(st, canonicalize("POST", "/v1/chat/completions", "", conversation(), **rules))
    r = cli("explain", "req.json", *RULES, cwd=where)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == f"{new[:12]} replays: recorded under {FP}."
    assert r.stdout.splitlines()[1].startswith("Rules applied: --ignore-path")
    doc = json.loads(cli("explain", "-", *RULES, "--json", cwd=where, input=(where / "req.json").read_text()).stdout)
    assert doc["replays"] is True and doc["key"] == new and len(doc["rules_applied"]) == 3
    stored = json.loads(cli("show", new, "--json", cwd=where).stdout)
    assert MASKED in json.dumps(stored) and "call_abc" not in json.dumps(stored["request"])  # not stored either


def test_explain_of_a_recorded_key_takes_it_as_it_is(recorded):
    where, old = recorded
    r = cli("explain", old[:10], *RULES, cwd=where)
    assert r.returncode == 0, r.stderr
    assert "Rules not applied: --ignore-path and --mask apply to a request body" in r.stdout


@pytest.mark.parametrize(
    "args, says",
    [
        (["--ignore-path", "a..b"], "Invalid value for '--ignore-path': 'a..b' has an empty step"),
        (["--mask", "a("], "Invalid value for '--mask': 'a(' is not a regular expression"),
    ],
)
def test_explain_refuses_a_bad_rule(recorded, args, says):
    where, _ = recorded
    r = cli("explain", "req.json", *args, cwd=where)
    assert r.returncode == 2 and says in r.stderr, r.stderr


def test_the_readme_example_prints_what_it_shows(recorded):
    """README.md's "Volatile values" walk-through, run against the store it describes."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_docs import output_matches, trimmed

    where, _ = recorded
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Volatile values", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    blocks = re.findall(r"^```\n(.*?)^```", section, re.M | re.S)
    assert len(blocks) == 2
    for block in blocks:
        command, *expected = block.splitlines()
        assert command.startswith("$ seedtape explain req.json")
        r = cli(*shlex.split(command)[2:], cwd=where)
        assert r.returncode == 1, r.stderr
        assert output_matches(trimmed(expected), trimmed(r.stdout.splitlines())), r.stdout
