"""Unit and property tests of the one place each untrusted-value rule lives.

wire.header_value (every seedtape-* header value), headers.valid_value (stored upstream
headers), tape.fingerprint_problem, printable.escape / escape_json / LogEscaper (terminal
and log output) and strictjson (request bodies and tape files).
"""

from __future__ import annotations

import json
import logging
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seedtape.proxy import headers, printable, strictjson, wire
from seedtape.proxy.tapes.entry import MAX_FINGERPRINT, fingerprint_problem

UNSAFE_FOR_TERMINALS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")


@given(st.text())
def test_header_value_is_always_visible_ascii_bounded_and_idempotent(text):
    v = wire.header_value(text)
    assert re.fullmatch(r"[\x20-\x7e]*", v)
    assert len(v) <= wire.MAX_HEADER_VALUE
    assert v == v.strip(" ")
    assert wire.header_value(v) == v
    v.encode("latin-1")  # what an HTTP/1 encoder accepts


def test_header_value_escapes_what_could_split_a_response():
    assert wire.header_value("fp_a\r\nset-cookie: pwn=1") == "fp_a\\r\\nset-cookie: pwn=1"
    assert wire.header_value("x\x00y\x1b[2J\u2026\ud800") == "x\\x00y\\x1b[2J\\u2026\\ud800"
    assert wire.header_value("fp_44709d6fcb") == "fp_44709d6fcb"  # an ordinary value is untouched


@pytest.mark.parametrize("value, ok", [
    ("9999", True), ("req_abc", True), ("application/json; charset=utf-8", True), ("", True),
    ("a\x01b", False), ("a\x7f", False), (b"\xff\xfe".decode("utf-8", "surrogateescape"), False),
    ("caf\u00e9", False), ("x" * (headers.MAX_VALUE + 1), False), ("a\r\nb", False),
])
def test_stored_header_values_are_visible_ascii(value, ok):
    assert headers.valid_value(value) is ok
    assert (headers.safe_headers([("x-request-id", value)]) != []) is ok


@pytest.mark.parametrize("name", ["location", "refresh", "access-control-allow-origin", "strict-transport-security",
                                  "cache-control", "content-length", "transfer-encoding", "content-encoding",
                                  "connection", "set-cookie", "authorization", "x-api-key"])
def test_headers_recording_never_keeps_are_refused_by_name(name):
    assert headers.safe_headers([(name, "1")]) == []
    assert name in headers.refusal(name, "1")


def test_headers_recording_keeps_pass():
    for name in ("content-type", "x-request-id", "openai-processing-ms", "x-ratelimit-remaining-tokens"):
        assert headers.refusal(name, "1") is None


@pytest.mark.parametrize("fp, ok", [
    ("fp_44709d6fcb", True), ("fp_ollama", True), ("model:gpt-4o-mini-2024-07-18", True), ("fp_none", True),
    ("", False), ("fp a", False), ("fp_a\r\nx: y", False), ("fp_\x1b[2J", False), ("fp_\u00e9", False),
    ("f" * MAX_FINGERPRINT, True), ("f" * (MAX_FINGERPRINT + 1), False), (None, False), (12, False),
])
def test_fingerprints(fp, ok):
    assert (fingerprint_problem(fp) is None) is ok


@given(st.text())
def test_escape_leaves_nothing_a_terminal_acts_on_and_is_idempotent(text):
    out = printable.escape(text)
    assert not UNSAFE_FOR_TERMINALS.search(out) and "\n" not in out
    assert printable.escape(out) == out
    out.encode("utf-8")  # no lone surrogates left
    kept = printable.escape(text, newlines=True)
    assert kept.count("\n") == text.count("\n") and "\r" not in kept


def test_escape_names_what_it_escaped():
    assert printable.escape("a\x1b]0;T\x07\x9b\r\nb\ud800") == "a\\x1b]0;T\\x07\\x9b\\r\\nb\\ud800"
    assert printable.escape("plain text, ümlauts and emoji 🙂") == "plain text, ümlauts and emoji 🙂"


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(), kids, max_size=3),
                    max_leaves=10))
def test_escape_json_is_still_the_same_json(doc):
    text = printable.escape_json(json.dumps(doc, indent=2, ensure_ascii=False))
    assert not UNSAFE_FOR_TERMINALS.search(text)
    assert json.loads(text) == doc


def test_the_log_escaper_renders_and_escapes_every_record():
    record = logging.LogRecord("seedtape", logging.INFO, __file__, 1, "seedtape: %s fp=%s", ("path\x1b[2J", "a\r\nb\ud800"),
                               None)
    assert printable.LogEscaper().filter(record)
    assert record.getMessage() == "seedtape: path\\x1b[2J fp=a\\r\\nb\\ud800"
    try:
        raise ValueError("bad \ud800 \x1b")
    except ValueError:
        import sys

        record = logging.LogRecord("seedtape", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    printable.LogEscaper().filter(record)
    formatted = logging.Formatter().format(record)
    formatted.encode("utf-8")
    assert "\x1b" not in formatted and "\\ud800" in formatted


@pytest.mark.parametrize("text, why", [
    ('{"a": NaN}', "NaN"), ('{"a": Infinity}', "Infinity"), ('{"a": -Infinity}', "Infinity"),
    ('{"a": 1e999}', "too large"), ('{"a": ' + "9" * 5000 + "}", "5000-digit"),
    ("[" * 900 + "]" * 900, "nested too deeply"), ('{"a": ' + '{"b": ' * 300 + "1" + "}" * 301, "nested too deeply"),
])
def test_strictjson_refuses_what_could_not_be_stored_or_printed(text, why):
    with pytest.raises(ValueError, match=why):
        strictjson.loads(text)


def test_strictjson_duplicate_keys():
    text = '{"status": 200, "headers": [], "status": 302}'
    assert strictjson.loads(text) == {"status": 302, "headers": []}  # request bodies: the last wins, as the API does
    with pytest.raises(ValueError, match='"status" appears twice'):
        strictjson.loads(text, unique_keys=True)  # tape files: what a reviewer reads is what is served


def test_strictjson_keeps_ordinary_documents():
    doc = {"a": [1, 2.5, -3, True, None, "x"], "b": {"c": "\ud800"}, "n": 10 ** 999}
    assert strictjson.loads(json.dumps(doc), unique_keys=True) == doc
    assert strictjson.depth({"a": [[1]]}) == 4
