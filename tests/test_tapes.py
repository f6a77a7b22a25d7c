"""Portable tapes (`seedtape export` / `import`, seedtape.proxy.tapefile) and `seedtape prune`."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from conftest import API_KEY, client

from seedtape.cli.main import cli
from seedtape.proxy.key.canonical import canonicalize
from seedtape.proxy.tapes import tapefile
from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.store import Store

T0 = 1_700_000_000.123457  # recorded_at of the first entries; later ones count up from it


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def canonical(text: str, *, namespace: str = "", model: str = "gpt-4o-mini"):
    body = {"model": model, "messages": [{"role": "user", "content": text}], "seed": 1234}
    return canonicalize("POST", "/v1/chat/completions", "", body, namespace=namespace)


def json_answer(reply: str, fp: str, model: str = "gpt-4o-mini") -> bytes:
    """Pretty, non-ASCII as UTF-8: like the real API."""
    return json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model, "system_fingerprint": fp,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
    }, indent=2, ensure_ascii=False).encode()


def sse_answer(reply: str, fp: str, model: str = "gpt-4o-mini", usage: bool = False) -> bytes:
    base = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1, "model": model, "system_fingerprint": fp}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    chunks += [{**base, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in reply.split()]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if usage:
        chunks.append({**base, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
    events = [f"data: {json.dumps(c, ensure_ascii=False, separators=(',', ':'))}\n\n" for c in chunks]
    return ("".join(events) + "data: [DONE]\n\n").encode()


def put(st: Store, text: str, *, fp: str = "fp_a", fmt: str = "json", namespace: str = "", model: str = "gpt-4o-mini",
        reply: str = "an answer", at: float = T0, body: bytes | None = None, headers: list | None = None,
        request: dict | None = None, snapshot: str | None = None, **kw) -> TapeEntry:
    """Record one chat completion; ``snapshot`` is the model the response names (default: the requested one)."""
    c = canonical(text, namespace=namespace, model=model)
    if body is None:
        body = sse_answer(reply, fp, model) if fmt == "sse" else json_answer(reply, fp, model)
    return st.put(TapeEntry(
        key=c.key, fingerprint=fp, endpoint="chat.completions", request=request or c.to_json(), status=200,
        headers=headers if headers is not None else [["content-type", "application/json"], ["x-request-id", "req_1"]],
        body=body, format=fmt, model=snapshot or model, namespace=namespace, recorded_at=at, **kw))


def fill(st: Store) -> dict[str, TapeEntry]:
    """A store with what a tape must carry: both formats, several fingerprints, namespaces, non-ASCII, odd bytes."""
    e = {}
    e["paris_a"] = put(st, "Capital of France?", fp="fp_44709d6fcb", reply="Paris — naïve café ✓ 東京", upstream_ms=812.25)
    e["paris_b"] = put(st, "Capital of France?", fp="fp_b7f2", fmt="sse", reply="Paris is the capital", at=T0 + 60,
                       headers=[["content-type", "text/event-stream; charset=utf-8"], ["x-request-id", "req_2"],
                                ["x-ratelimit-remaining-tokens", "9000"]],
                       extra={"gaps": [[131, 0.0012], [262, 0.0419871]], "include_usage": False})
    e["ns"] = put(st, "Capital of France?", namespace="suite-α/test_one", fmt="sse",
                  body=sse_answer("Paris again", "fp_44709d6fcb", usage=True), fp="fp_44709d6fcb",
                  extra={"gaps": [], "include_usage": True}, at=T0 + 1.5)
    e["weird_fp"] = put(st, "Odd fingerprints", fp="Backend-7/v:*", reply="odd", at=T0 + 2)
    e["upper_fp"] = put(st, "Odd fingerprints", fp="FP_A", reply="upper", at=T0 + 3)
    e["lower_fp"] = put(st, "Odd fingerprints", fp="fp_a", reply="lower", at=T0 + 4)
    # JSON the API may send that is not UTF-8 JSON text (recording parses it as json.loads(bytes) does)
    e["binary"] = put(st, "binary please", fp="fp_bin", body=json_answer("utf-16", "fp_bin").decode().encode("utf-16"),
                      at=T0 + 5)
    e["not_json"] = put(st, "text please", fp="fp_txt", body=b"\xef\xbb\xbf" + json_answer("a BOM", "fp_txt") + b"\n",
                        at=T0 + 6)
    e["crlf_sse"] = put(st, "crlf stream", fp="fp_crlf", fmt="sse", at=1_700_000_007.9572887,  # time.time() precision
                        body=b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
                             b'"system_fingerprint":"fp_crlf"}\r\n\r\ndata: [DONE]\r\n\r\n')
    e["surrogate"] = put(st, "lone \ud800 surrogate", fp="fp_sur", reply="ok", at=T0 + 8)
    e["recorded_twice"] = put(st, "twice", fp="fp_a", at=T0 + 9)
    e["recorded_twice"] = put(st, "twice", fp="fp_a", at=T0 + 10.000001, reply="second time")
    e["int_time"] = put(st, "whole second", fp="fp_a", at=1_700_000_100)
    return e


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def everything(st: Store) -> dict:
    """All entries and each key's newest fingerprint: what replay can serve."""
    return {"entries": {(e.key, e.fingerprint): e for e in st.entries()},
            "newest": {k: st.latest_fingerprint(k) for k in st.keys()}}  # noqa: SIM118 - Store is not iterable


@pytest.fixture
def filled(tmp_path) -> tuple[Path, dict[str, TapeEntry]]:
    path = tmp_path / "store"
    with Store(path) as st:
        entries = fill(st)
    return path, entries


# -- format -----------------------------------------------------------------------------------------


def test_layout_entry_file_and_exact_bodies(filled, tmp_path):
    store, e = filled
    out = tmp_path / "tapes"
    with Store(store) as st:
        result = tapefile.export(st, out)
    assert (result.keys, result.entries, result.written, result.unchanged, result.removed) == (9, 12, 12, 0, 0)

    paris = out / e["paris_a"].key[:2] / e["paris_a"].key
    assert sorted(p.name for p in paris.iterdir()) == [
        "fp_44709d6fcb.body.json", "fp_44709d6fcb.entry.json", "fp_b7f2.body.sse", "fp_b7f2.entry.json", "request.json"]
    assert (paris / "fp_44709d6fcb.body.json").read_bytes() == e["paris_a"].body  # the bytes as recorded
    assert (paris / "fp_b7f2.body.sse").read_bytes() == e["paris_b"].body
    assert "Paris — naïve café ✓ 東京" in (paris / "fp_44709d6fcb.body.json").read_text("utf-8")  # readable, not escaped

    text = (paris / "fp_b7f2.entry.json").read_text("utf-8")
    doc = json.loads(text)
    assert text.endswith("}\n") and text == tapefile.dumps_pretty(doc).decode()
    assert list(doc) == sorted(doc)
    assert '\n  "headers": [\n    ["content-type", "text/event-stream; charset=utf-8"],\n' in text
    assert doc["key"] == e["paris_b"].key and doc["fingerprint"] == "fp_b7f2"
    assert (doc["endpoint"], doc["model"], doc["namespace"], doc["format"], doc["status"]) == (
        "chat.completions", "gpt-4o-mini", "", "sse", 200)
    assert doc["recorded_at"] == "2023-11-14T22:14:20.123457Z"
    assert tapefile.parse_time(doc["recorded_at"]) == e["paris_b"].recorded_at
    assert doc["times_recorded"] == 1 and doc["upstream_ms"] is None
    assert doc["extra"] == {"gaps": [[131, 0.0012], [262, 0.0419871]], "include_usage": False}
    assert doc["body"] == {"file": "fp_b7f2.body.sse", "sha256": hashlib.sha256(e["paris_b"].body).hexdigest(),
                           "size": len(e["paris_b"].body)}

    request = json.loads((paris / "request.json").read_text("utf-8"))
    assert request == e["paris_a"].request and request["body"]["messages"][0]["content"] == "Capital of France?"

    binary = out / e["binary"].key[:2] / e["binary"].key
    assert (binary / "fp_bin.body.bin").read_bytes() == e["binary"].body
    assert (out / e["not_json"].key[:2] / e["not_json"].key / "fp_txt.body.bin").exists()
    assert (out / e["crlf_sse"].key[:2] / e["crlf_sse"].key / "fp_crlf.body.sse").read_bytes() == e["crlf_sse"].body

    odd = sorted(p.name for p in (out / e["weird_fp"].key[:2] / e["weird_fp"].key).glob("*.entry.json"))
    assert len(odd) == 3 and "fp_a.entry.json" in odd  # FP_A and fp_a do not collide on a case-insensitive disk
    assert all(n.isascii() and n == n.lower() and " " not in n and "/" not in n and ":" not in n for n in odd)

    marker = json.loads((out / "seedtape-tapes.json").read_text())
    assert marker["format"] == "seedtape-tapes" and marker["version"] == 1
    assert "*.sse -text" in (out / ".gitattributes").read_text()


def test_file_stems_are_safe_and_distinct():
    fps = ["fp_44709d6fcb", "fp_none", "FP_A", "fp_a", "fp a", "fp/a", "fp\\a", "../../etc", "", "ü", "con", "a" * 300,
           "fp.a", ".hidden", "-x"]
    stems = [tapefile.file_stem(fp) for fp in fps]
    assert stems[:2] == ["fp_44709d6fcb", "fp_none"]  # real fingerprints keep their name
    assert len({s.lower() for s in stems}) == len(fps)
    for s in stems:
        assert tapefile._ENTRY_FILE.fullmatch(f"{s}.entry.json")
        assert len(s) <= 64 and s not in ("con", "..")
    assert tapefile.file_stem("Backend 7/ü:*") == tapefile.file_stem("Backend 7/ü:*")  # stable


@pytest.mark.parametrize("ts", [0.0, 1.0, 1_700_000_000.0, T0, 1_764_000_000.0000002, 1e-7, time.time(), -0.5])
def test_times_round_trip_exactly(ts):
    text = tapefile.iso_time(ts)
    assert text.endswith("Z") and "T" in text
    assert tapefile.parse_time(text) == ts


def test_export_twice_is_byte_identical_and_writes_nothing(filled, tmp_path):
    store, _ = filled
    out = tmp_path / "tapes"
    with Store(store) as st:
        tapefile.export(st, out)
        first = tree(out)
        mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
        again = tapefile.export(st, out)
    assert tree(out) == first
    assert (again.written, again.unchanged, again.removed) == (0, 12, 0)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes  # nothing rewritten
    other = tmp_path / "elsewhere"
    with Store(store, readonly=True) as st:
        tapefile.export(st, other)
    assert tree(other) == first  # the tree depends on the store only


def test_export_import_export_is_byte_identical_and_replays_the_same(filled, tmp_path):
    store, _ = filled
    one, two = tmp_path / "one", tmp_path / "two"
    with Store(store) as st:
        tapefile.export(st, one)
        before = everything(st)
    with Store(tmp_path / "fresh") as fresh:
        result = tapefile.import_(fresh, one)
        assert (result.keys, result.entries, result.imported, result.updated, result.unchanged, result.kept) == (
            9, 12, 12, 0, 0, 0)
        tapefile.export(fresh, two)
        after = everything(fresh)
        for (key, fp), e in before["entries"].items():
            got = fresh.get(key, fp)
            assert got == e, (key, fp)  # timestamps, counts, headers, extra: all of it
            assert got.body == e.body  # what replay serves, byte for byte
        for key, fp in before["newest"].items():
            assert fresh.get(key).fingerprint == fp  # replay serves the same fingerprint
    assert tree(two) == tree(one)
    assert after == before
    twice = after["entries"][(canonical("twice").key, "fp_a")]
    assert (twice.times_recorded, twice.first_recorded_at, twice.recorded_at) == (2, T0 + 9, T0 + 10.000001)


def test_import_is_idempotent(filled, tmp_path):
    store, _ = filled
    with Store(store) as st:
        tapefile.export(st, tmp_path / "tapes")
    with Store(tmp_path / "fresh") as fresh:
        tapefile.import_(fresh, tmp_path / "tapes")
        state = everything(fresh)
        again = tapefile.import_(fresh, tmp_path / "tapes")
        assert (again.imported, again.updated, again.unchanged, again.kept) == (0, 0, 12, 0)
        assert everything(fresh) == state
    with Store(store) as st:  # into the store it came from: nothing to do either
        back = tapefile.import_(st, tmp_path / "tapes")
    assert back.unchanged == 12


def test_merge_keeps_the_newer_recording(tmp_path):
    tapes = tmp_path / "tapes"
    with Store(tmp_path / "src") as src:
        old_here = put(src, "same question", fp="fp_a", reply="tape answer", at=T0 + 100)
        put(src, "same question", fp="fp_b", reply="tape fp_b", at=T0 + 50)
        put(src, "other question", fp="fp_a", reply="tape other", at=T0)
        tapefile.export(src, tapes)
    with Store(tmp_path / "dst") as dst:
        put(dst, "same question", fp="fp_a", reply="store answer, older", at=T0 + 10)
        put(dst, "same question", fp="fp_b", reply="store fp_b, newer", at=T0 + 500)
        put(dst, "other question", fp="fp_a", reply="store other, same time", at=T0)
        result = tapefile.import_(dst, tapes)
        assert (result.imported, result.updated, result.unchanged, result.kept) == (0, 1, 0, 2)
        assert result.outcomes[(old_here.key, "fp_a")] == "updated"
        assert b"tape answer" in dst.get(old_here.key, "fp_a").body  # the tape's is newer: it wins
        assert b"store fp_b, newer" in dst.get(old_here.key, "fp_b").body  # the store's is newer: it stays
        other = canonical("other question").key
        assert b"store other, same time" in dst.get(other, "fp_a").body  # a tie keeps the store's
        assert dst.latest_fingerprint(old_here.key) == "fp_b"  # newest recorded_at is served


def test_import_of_a_newer_fingerprint_becomes_the_newest(tmp_path):
    tapes = tmp_path / "tapes"
    with Store(tmp_path / "src") as src:
        e = put(src, "q", fp="fp_new", reply="new backend", at=T0 + 1000)
        tapefile.export(src, tapes)
    with Store(tmp_path / "dst") as dst:
        put(dst, "q", fp="fp_old", reply="old backend", at=T0)
        assert dst.latest_fingerprint(e.key) == "fp_old"
        tapefile.import_(dst, tapes)
        assert dst.latest_fingerprint(e.key) == "fp_new"
        assert b"new backend" in dst.get(e.key).body


# -- git friendliness ---------------------------------------------------------------------------------


def test_a_new_recording_only_adds_files(filled, tmp_path):
    store, e = filled
    out = tmp_path / "tapes"
    with Store(store) as st:
        tapefile.export(st, out)
        before = tree(out)
        new_key = put(st, "a brand new question", fp="fp_44709d6fcb", at=T0 + 3600)
        new_fp = put(st, "Capital of France?", fp="fp_c0ffee", fmt="sse", at=T0 + 3600)
        result = tapefile.export(st, out)
    after = tree(out)
    assert {p: after[p] for p in before} == before  # no existing file changed
    added = sorted(set(after) - set(before))
    k, p = new_key.key, new_fp.key
    assert added == sorted([
        f"{k[:2]}/{k}/request.json", f"{k[:2]}/{k}/fp_44709d6fcb.entry.json", f"{k[:2]}/{k}/fp_44709d6fcb.body.json",
        f"{p[:2]}/{p}/fp_c0ffee.entry.json", f"{p[:2]}/{p}/fp_c0ffee.body.sse"])
    assert p == e["paris_a"].key
    assert (result.written, result.unchanged, result.removed) == (2, 12, 0)


def test_export_removes_only_tape_files_of_gone_entries(filled, tmp_path):
    store, e = filled
    out = tmp_path / "tapes"
    with Store(store) as st:
        tapefile.export(st, out)
    unrelated = {
        "README.md": b"my tapes\n",
        ".gitattributes": b"# mine\n",
        "notes/fp_a.entry.json": b"not in a key directory\n",
        "ab/not-a-key/request.json": b"{}\n",
        f"{e['paris_a'].key[:2]}/{e['paris_a'].key}/NOTES.md": b"reviewed\n",
        f"{e['binary'].key[:2]}/{e['binary'].key}/keep.txt": b"mine\n",
    }
    for rel, data in unrelated.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    gone = out / e["not_json"].key[:2] / e["not_json"].key
    (gone / ".fp_txt.entry.json.4242.tmp").write_bytes(b"left by a killed export")
    with Store(store) as st:
        assert st.delete(e["paris_a"].key, "fp_44709d6fcb")
        assert st.delete(e["binary"].key, "fp_bin")
        assert st.delete(e["not_json"].key, "fp_txt")
        result = tapefile.export(st, out)
    assert result.removed == 3 and result.entries == 9
    files = tree(out)
    for rel, data in unrelated.items():
        assert files[rel] == data  # never touched
    paris = out / e["paris_a"].key[:2] / e["paris_a"].key
    assert sorted(p.name for p in paris.iterdir()) == ["NOTES.md", "fp_b7f2.body.sse", "fp_b7f2.entry.json",
                                                       "request.json"]
    binary = out / e["binary"].key[:2] / e["binary"].key
    assert sorted(p.name for p in binary.iterdir()) == ["keep.txt"]  # its directory stays for the unrelated file
    assert not gone.exists()  # nothing else in it: gone, with its empty parent when that empties too
    with Store(tmp_path / "fresh") as fresh:  # the unrelated files do not disturb an import
        assert tapefile.import_(fresh, out).entries == 9


# -- corrupt input ---------------------------------------------------------------------------------------


def _entry_file(out: Path, e: TapeEntry) -> Path:
    return out / e.key[:2] / e.key / f"{tapefile.file_stem(e.fingerprint)}.entry.json"


def _break_json(out: Path, e: TapeEntry) -> tuple[Path, str]:
    f = _entry_file(out, e)
    lines = f.read_text().splitlines(keepends=True)
    n = next(i for i, line in enumerate(lines) if line.startswith('  "format"'))
    lines[n] = lines[n].replace('",', '"')  # a missing comma: the error is on the next line
    f.write_text("".join(lines))
    return f, f"line {n + 2}"


def _truncate_entry(out: Path, e: TapeEntry) -> tuple[Path, str]:
    f = _entry_file(out, e)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    return f, f"line {data[: len(data) // 2].count(b'\n') + 1}"


def _conflict(out: Path, e: TapeEntry) -> tuple[Path, str]:
    f = _entry_file(out, e)
    lines = f.read_text().splitlines(keepends=True)
    lines[3:3] = ["<<<<<<< HEAD\n", '  "model": "a",\n', "=======\n", '  "model": "b",\n', ">>>>>>> branch\n"]
    f.write_text("".join(lines))
    return f, "line 4"


def _flip_body_byte(out: Path, e: TapeEntry) -> tuple[Path, str]:
    f = out / e.key[:2] / e.key / json.loads(_entry_file(out, e).read_text())["body"]["file"]
    data = bytearray(f.read_bytes())
    data[10] ^= 0x01
    f.write_bytes(bytes(data))
    return f, "sha256"


def _truncate_body(out: Path, e: TapeEntry) -> tuple[Path, str]:
    f = out / e.key[:2] / e.key / json.loads(_entry_file(out, e).read_text())["body"]["file"]
    f.write_bytes(f.read_bytes()[:100])
    return f, "truncated"


def _crlf_body(out: Path, e: TapeEntry) -> tuple[Path, str]:
    f = out / e.key[:2] / e.key / json.loads(_entry_file(out, e).read_text())["body"]["file"]
    f.write_bytes(f.read_bytes().replace(b"\n", b"\r\n"))  # what git's autocrlf would do
    return f, "line ends"


def _truncate_request(out: Path, e: TapeEntry) -> tuple[Path, str]:
    f = out / e.key[:2] / e.key / "request.json"
    data = f.read_bytes()[:45]
    f.write_bytes(data)
    return f, f"line {data.count(b'\n') + 1}"


@pytest.mark.parametrize("damage", [_break_json, _truncate_entry, _conflict, _flip_body_byte, _truncate_body,
                                    _crlf_body, _truncate_request])
def test_a_damaged_tape_imports_nothing_and_names_the_file(filled, tmp_path, damage):
    store, e = filled
    out = tmp_path / "tapes"
    with Store(store) as st:
        tapefile.export(st, out)
    bad, where = damage(out, e["paris_b"])  # one file of many: the sound ones must not be imported either
    with pytest.raises(tapefile.TapeFileError) as err:
        tapefile.load(out)
    assert str(bad) in str(err.value) and where in str(err.value)
    assert err.value.file == str(bad)

    fresh = tmp_path / "fresh"
    r = run("import", str(out), "--store", str(fresh))
    assert r.exit_code == 1
    assert str(bad) in r.stderr and where in r.stderr
    assert "Traceback" not in r.output
    assert not fresh.exists()  # checked before the store was even created

    with Store(tmp_path / "existing") as st:
        put(st, "already here")
        state = everything(st)
    r = run("import", str(out), "--store", str(tmp_path / "existing"))
    assert r.exit_code == 1
    with Store(tmp_path / "existing") as st:
        assert everything(st) == state


def test_the_error_for_bad_json_is_one_clear_line(filled, tmp_path):
    store, e = filled
    out = tmp_path / "tapes"
    with Store(store) as st:
        tapefile.export(st, out)
    bad, where = _truncate_entry(out, e["paris_a"])
    r = run("import", str(out), "--store", str(tmp_path / "fresh"))
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith(f"Error: {bad}: {where}: column ")
    assert "invalid JSON" in r.stderr and "truncated?" in r.stderr


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(status="200"), "status"),
    (lambda d: d.update(recorded_at="yesterday"), "recorded_at"),
    (lambda d: d.update(format="xml"), "format"),
    (lambda d: d.update(fingerprint="fp_other"), "belongs in fp_other.entry.json"),
    (lambda d: d.pop("headers"), "missing field(s) headers"),
    (lambda d: d.update(surprise=1), "unknown field(s) surprise"),
    (lambda d: d["body"].update(file="../../../etc/passwd"), "body file"),
])
def test_an_invalid_entry_file_is_refused(tmp_path, edit, message):
    with Store(tmp_path / "src") as st:
        e = put(st, "q")
        tapefile.export(st, tmp_path / "tapes")
    f = _entry_file(tmp_path / "tapes", e)
    doc = json.loads(f.read_text())
    edit(doc)
    f.write_bytes(tapefile.dumps_pretty(doc))
    with pytest.raises(tapefile.TapeFileError) as err:
        tapefile.load(tmp_path / "tapes")
    assert str(f) in str(err.value) and message in str(err.value) and ": line " in str(err.value)


def test_import_needs_a_tape_directory(tmp_path):
    r = run("import", str(tmp_path / "missing"), "--store", str(tmp_path / "s"))
    assert r.exit_code == 1 and "no such tape directory" in r.stderr
    (tmp_path / "plain").mkdir()
    r = run("import", str(tmp_path / "plain"), "--store", str(tmp_path / "s"))
    assert r.exit_code == 1 and "not a seedtape tape directory (no seedtape-tapes.json)" in r.stderr
    assert not (tmp_path / "s").exists()
    (tmp_path / "plain" / "seedtape-tapes.json").write_text('{"format": "seedtape-tapes", "version": 99}\n')
    r = run("import", str(tmp_path / "plain"), "--store", str(tmp_path / "s"))
    assert r.exit_code == 1 and "version 99" in r.stderr
    r = run("export", str(tmp_path / "plain"), "--store", str(tmp_path / "s"))  # no store to export
    assert r.exit_code == 1 and "no seedtape store at" in r.stderr


def test_an_orphan_body_file_is_refused(tmp_path):
    with Store(tmp_path / "src") as st:
        e = put(st, "q")
        tapefile.export(st, tmp_path / "tapes")
    orphan = tmp_path / "tapes" / e.key[:2] / e.key / "fp_gone.body.json"
    orphan.write_text("{}")
    with pytest.raises(tapefile.TapeFileError, match="no entry file refers to this body"):
        tapefile.load(tmp_path / "tapes")


# -- secrets and scrubbing ---------------------------------------------------------------------------------


def test_secrets_never_reach_an_export(upstream, tmp_path, proxies):
    """Recorded through a real proxy with the API key; the upstream sends an organization and a cookie too."""
    store = tmp_path / "store"
    p = proxies("--upstream", upstream.url, "--store", str(store))
    c = client(p, default_headers={"OpenAI-Organization": "org-client-secret", "OpenAI-Project": "proj_secret",
                                   "x-api-key": API_KEY, "Cookie": "session=client-secret"})
    c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "secret test"}])
    list(c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "stream test"}],
                                   stream=True))
    c.embeddings.create(model="text-embedding-3-small", input="embed me")
    time.sleep(0.3)
    p.stop()
    with Store(store) as st:  # and one that a buggy recorder might have written: defence in depth
        put(st, "leaky", headers=[["content-type", "application/json"], ["Authorization", f"Bearer {API_KEY}"],
                                  ["set-cookie", "a=secret-cookie"], ["api-key", API_KEY],
                                  ["x-goog-api-key", API_KEY], ["openai-organization", "org-secret-fake"],
                                  ["x-ratelimit-remaining-tokens", "42"]])
        assert st.stats()["entries"] == 4
    out = tmp_path / "tapes"
    r = run("export", str(out), "--store", str(store))
    assert r.exit_code == 0, r.output
    blob = b"\n".join(tree(out).values()).lower()
    for secret in (API_KEY, "org-client-secret", "proj_secret", "client-secret", "org-secret-fake", "secret-cookie",
                   "authorization", "set-cookie", "openai-organization", "openai-project", "api-key", "cookie"):
        assert secret.lower().encode() not in blob, secret
    assert b"x-ratelimit-remaining-tokens" in blob  # safe headers stay


def test_scrub_header(filled, tmp_path):
    store, e = filled
    out = tmp_path / "tapes"
    r = run("export", str(out), "--store", str(store), "--scrub-header", "X-Request-ID",
            "--scrub-header", "x-ratelimit-remaining-tokens")
    assert r.exit_code == 0, r.output
    assert "scrubbed 0 field values, 13 headers" in r.stdout
    blob = b"".join(tree(out).values())
    assert b"x-request-id" not in blob and b"x-ratelimit-remaining-tokens" not in blob
    doc = json.loads(_entry_file(out, e["paris_b"]).read_text())
    assert doc["headers"] == [["content-type", "text/event-stream; charset=utf-8"]]
    with Store(tmp_path / "fresh") as fresh:
        tapefile.import_(fresh, out)
        assert fresh.get(e["paris_b"].key, "fp_b7f2").headers == [["content-type", "text/event-stream; charset=utf-8"]]
        assert fresh.get(e["paris_b"].key, "fp_b7f2").body == e["paris_b"].body  # bodies untouched


def test_scrub_field(filled, tmp_path):
    store, e = filled
    out = tmp_path / "tapes"
    r = run("export", str(out), "--store", str(store), "--scrub-field", "request.body.messages.*.content",
            "--scrub-field", "response.id", "--scrub-field", "response.choices.0.message.content",
            "--scrub-field", "response.no.such.field")
    assert r.exit_code == 0, r.output
    kdir = out / e["paris_a"].key[:2] / e["paris_a"].key
    request = json.loads((kdir / "request.json").read_text())
    assert request["body"]["messages"] == [{"role": "user", "content": "[scrubbed]"}]
    assert request["body"]["model"] == "gpt-4o-mini" and request["body"]["seed"] == 1234

    answer = json.loads((kdir / "fp_44709d6fcb.body.json").read_text())
    assert answer["id"] == "[scrubbed]" and answer["choices"][0]["message"]["content"] == "[scrubbed]"
    assert answer["system_fingerprint"] == "fp_44709d6fcb" and answer["model"] == "gpt-4o-mini"
    assert "Paris" not in (kdir / "fp_44709d6fcb.body.json").read_text()

    stream = (kdir / "fp_b7f2.body.sse").read_bytes()
    original = e["paris_b"].body.split(b"\n")
    scrubbed = stream.split(b"\n")
    assert len(scrubbed) == len(original)
    for before, after in zip(original, scrubbed):
        if before.startswith(b"data: {"):
            assert json.loads(after[6:])["id"] == "[scrubbed]"
            assert json.loads(after[6:])["choices"] == json.loads(before[6:])["choices"]
        else:
            assert after == before  # blank lines and [DONE] as recorded
    doc = json.loads((kdir / "fp_b7f2.entry.json").read_text())
    assert doc["body"]["sha256"] == hashlib.sha256(stream).hexdigest()  # the hash is of what was exported

    binary = out / e["binary"].key[:2] / e["binary"].key / "fp_bin.body.bin"
    assert binary.read_bytes() == e["binary"].body  # not JSON: nothing to scrub
    # the scrubbed tape is still a tape: it imports, under the same keys, and replay finds it
    with Store(tmp_path / "fresh") as fresh:
        assert tapefile.import_(fresh, out).imported == 12
        got = fresh.get(e["paris_a"].key, "fp_44709d6fcb")
        assert json.loads(got.body)["id"] == "[scrubbed]" and got.request == request


@pytest.mark.parametrize("bad", ["body.user", "request", "response.", "response..id", "headers.x"])
def test_scrub_field_syntax_errors_are_usage_errors(filled, tmp_path, bad):
    store, _ = filled
    r = run("export", str(tmp_path / "tapes"), "--store", str(store), "--scrub-field", bad)
    assert r.exit_code == 2
    assert "--scrub-field" in r.stderr and "request." in r.stderr
    assert not (tmp_path / "tapes").exists()


# -- end to end: replay from an imported store -------------------------------------------------------------


def test_replay_from_an_imported_store_is_byte_identical(upstream, tmp_path, proxies):
    store, fresh, out = tmp_path / "store", tmp_path / "fresh", tmp_path / "tapes"
    rec = proxies("--upstream", upstream.url, "--store", str(store))
    headers = {"authorization": f"Bearer {API_KEY}"}
    calls = [
        ("/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Grüße, 世界!"}]}),
        ("/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "stream it"}], "stream": True,
                               "stream_options": {"include_usage": True}}),
        ("/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "once upon", "stream": True}),
        ("/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"]}),
    ]
    live = []
    for path, body in calls:
        r = httpx.post(rec.base_url + path, json=body, headers=headers, timeout=30)
        assert r.status_code == 200 and r.headers["seedtape-status"] in ("recorded", "recording"), r.text
        live.append(r.content)
    sdk_live = client(rec).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "sdk"}],
                                                   extra_headers={"seedtape-namespace": "suite-a"})
    time.sleep(0.3)
    rec.stop()
    assert run("export", str(out), "--store", str(store)).exit_code == 0
    r = run("import", str(out), "--store", str(fresh))
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"imported 5 request keys, 5 entries from {out}: 5 imported, 0 updated, 0 unchanged, " \
                               "0 kept (newer in the store)"
    upstream.stop()  # offline from here on

    rep = proxies("--mode", "replay", "--store", str(fresh), "--upstream", upstream.url)
    for (path, body), recorded in zip(calls, live):
        r = httpx.post(rep.base_url + path, json=body, headers={"authorization": "Bearer sk-anything"}, timeout=30)
        assert r.headers["seedtape-status"] == "hit", r.text
        assert r.content == recorded  # byte for byte what the upstream sent while recording
    raw = client(rep).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "sdk"}], extra_headers={"seedtape-namespace": "suite-a"})
    assert raw.headers["seedtape-status"] == "hit"
    assert raw.parse().model_dump() == sdk_live.model_dump()
    assert raw.parse()._request_id == sdk_live._request_id
    n_live = len(upstream.log)
    assert n_live == 5  # and nothing reached the stopped upstream


# -- the CLI -------------------------------------------------------------------------------------------------


def test_cli_export_import_summaries_and_environment(filled, tmp_path):
    store, _ = filled
    out = tmp_path / "tapes"
    r = run("export", str(out), env={"SEEDTAPE_STORE": str(store)})
    assert r.exit_code == 0, r.output
    assert r.stdout == f"exported 9 request keys, 12 entries to {out}: 12 written, 0 unchanged, 0 removed\n"
    r = run("export", str(out), "--store", str(store))
    assert r.stdout == f"exported 9 request keys, 12 entries to {out}: 0 written, 12 unchanged, 0 removed\n"
    r = run("import", str(out), "--store", str(tmp_path / "new"))  # a new store is created
    assert r.exit_code == 0, r.output
    assert r.stdout == (f"imported 9 request keys, 12 entries from {out}: 12 imported, 0 updated, 0 unchanged, "
                        "0 kept (newer in the store)\n")
    r = run("import", str(out), env={"SEEDTAPE_STORE": str(tmp_path / "new")})
    assert "0 imported, 0 updated, 12 unchanged" in r.stdout
    (tmp_path / "file").write_text("x")
    r = run("export", str(tmp_path / "file"), "--store", str(store))
    assert r.exit_code == 2  # click: PATH must be a directory


def test_export_of_an_empty_store(tmp_path):
    Store(tmp_path / "s").close()
    r = run("export", str(tmp_path / "tapes"), "--store", str(tmp_path / "s"))
    assert r.exit_code == 0 and "0 request keys, 0 entries" in r.stdout
    assert sorted(tree(tmp_path / "tapes")) == [".gitattributes", "seedtape-tapes.json"]
    r = run("import", str(tmp_path / "tapes"), "--store", str(tmp_path / "t"))
    assert r.exit_code == 0 and "0 entries" in r.stdout


# -- prune ---------------------------------------------------------------------------------------------------


@pytest.fixture
def aged(tmp_path) -> tuple[Path, dict[str, TapeEntry]]:
    now = time.time()
    path = tmp_path / "store"
    with Store(path) as st:
        e = {
            "old_mini": put(st, "old question", fp="fp_a", model="gpt-4o-mini", at=now - 10 * 86400),
            "old_mini_newer_fp": put(st, "old question", fp="fp_b", model="gpt-4o-mini", at=now - 9 * 86400),
            "new_mini": put(st, "new question", fp="fp_a", model="gpt-4o-mini", at=now - 60),
            "old_4o": put(st, "4o question", fp="fp_a", model="gpt-4o", at=now - 3 * 3600, namespace="ns"),
            "new_4o_fp": put(st, "4o question", fp="fp_z", model="gpt-4o", at=now - 30, namespace="ns"),
        }
    return path, e


def prune_lines(store: Path, *args: str):
    r = run("prune", "--store", str(store), *args)
    return r, [line for line in r.stdout.splitlines() if line[:12].isalnum() and len(line.split()) >= 4]


def remaining(store: Path) -> set[tuple[str, str]]:
    with Store(store, readonly=True) as st:
        return {(e.key, e.fingerprint) for e in st.entries()}


def ids(*entries: TapeEntry) -> set[tuple[str, str]]:
    return {(e.key, e.fingerprint) for e in entries}


@pytest.mark.parametrize("args, goes", [
    (["--older-than", "7d"], ["old_mini", "old_mini_newer_fp"]),
    (["--older-than", "2h"], ["old_mini", "old_mini_newer_fp", "old_4o"]),
    (["--older-than", "1w"], ["old_mini", "old_mini_newer_fp"]),
    (["--older-than", "30m", "--model", "gpt-4o"], ["old_4o"]),
    (["--not-newest"], ["old_mini", "old_4o"]),
    (["--model", "gpt-4o-mini"], ["old_mini", "old_mini_newer_fp", "new_mini"]),
    (["--not-newest", "--model", "gpt-4o"], ["old_4o"]),
    (["--key", "KEYOF:old_4o"], ["old_4o", "new_4o_fp"]),
    (["--key", "KEYOF:old_4o", "--not-newest"], ["old_4o"]),
    (["--model", "gpt-4o", "--older-than", "1d"], []),
])
def test_prune_filters(aged, args, goes):
    store, e = aged
    args = [e[a[6:]].key[:10].upper() if a.startswith("KEYOF:") else a for a in args]
    before = remaining(store)

    r, lines = prune_lines(store, *args, "--dry-run")
    assert r.exit_code == 0, r.output
    assert remaining(store) == before  # a dry run changes nothing
    listed = {(line.split()[0], line.split()[1]) for line in lines}
    assert listed == {(e[g].key[:12], e[g].fingerprint) for g in goes}
    for g in goes:
        line = next(x for x in lines if x.startswith(e[g].key[:12]) and x.split()[1] == e[g].fingerprint)
        assert e[g].model in line and time.strftime("%Y-", time.gmtime(e[g].recorded_at)) in line
    if goes:
        assert f"would prune {len(goes)} {'entry' if len(goes) == 1 else 'entries'}" in r.stdout
        assert "nothing changed" in r.stdout
    else:
        assert "nothing to prune" in r.stdout

    r, lines = prune_lines(store, *args)
    assert r.exit_code == 0, r.output
    assert remaining(store) == before - ids(*(e[g] for g in goes))
    if goes:
        assert f"pruned {len(goes)} {'entry' if len(goes) == 1 else 'entries'}" in r.stdout


def test_prune_keeps_the_newest_pointer_right(tmp_path):
    store = tmp_path / "store"
    with Store(store) as st:  # the response names a model snapshot: one key, two models
        old = put(st, "q", fp="fp_old", model="gpt-4o", snapshot="gpt-4o-2024-05-13", reply="old", at=T0)
        put(st, "q", fp="fp_new", model="gpt-4o", snapshot="gpt-4o-2024-08-06", reply="new", at=T0 + 10)
        assert st.get(old.key).fingerprint == "fp_new"
    r = run("prune", "--store", str(store), "--model", "gpt-4o-2024-08-06")
    assert r.exit_code == 0 and "pruned 1 entry of 1 request key; 1 entry left" in r.stdout
    with Store(store, readonly=True) as st:  # replay falls back to the next newest
        assert st.latest_fingerprint(old.key) == "fp_old"
        assert b"old" in st.get(old.key).body
    r = run("prune", "--store", str(store), "--older-than", "1d")
    assert r.exit_code == 0
    with Store(store, readonly=True) as st:
        assert st.get(old.key) is None and st.keys() == []


def test_prune_without_a_filter_refuses(aged):
    store, _ = aged
    before = remaining(store)
    for extra in ([], ["--dry-run"]):
        r = run("prune", "--store", str(store), *extra)
        assert r.exit_code == 2
        assert "prune needs at least one filter" in r.stderr and "never empties a store" in r.stderr
    assert remaining(store) == before


def test_prune_usage_and_store_errors(aged, tmp_path):
    store, _ = aged
    r = run("prune", "--store", str(store), "--older-than", "soon")
    assert r.exit_code == 2 and "is not an age" in r.stderr
    r = run("prune", "--store", str(tmp_path / "nowhere"), "--not-newest")
    assert r.exit_code == 1 and "no seedtape store at" in r.stderr
    assert not (tmp_path / "nowhere").exists()


def test_prune_then_export_removes_the_pruned_files(aged, tmp_path):
    store, e = aged
    out = tmp_path / "tapes"
    assert run("export", str(out), "--store", str(store)).exit_code == 0
    assert run("prune", "--store", str(store), "--not-newest").exit_code == 0
    r = run("export", str(out), "--store", str(store))
    assert r.stdout.endswith("0 written, 3 unchanged, 2 removed\n")
    assert not _entry_file(out, e["old_mini"]).exists()
    assert _entry_file(out, e["old_mini_newer_fp"]).exists()
