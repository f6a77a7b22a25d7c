"""`seedtape import` of a hostile tape directory (one from a pull request): refused whole, in one line, quickly.

Every case starts from a good export of a small store and alters one thing. The import must exit
non-zero within seconds, print exactly one escaped line naming the file (no traceback), leave the store
as it was, and never show anything of a file outside the tape directory. Symlinks, FIFOs and devices run
the real CLI in a subprocess with a timeout (a regression would hang); tapes of regular files run it
in-process, which is faster.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_tapes import T0, everything, put, sse_answer

from seedtape.cli.main import cli
from seedtape.proxy.tapes import tapefile
from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.store import Store

SECRET = b"OUTSIDE-SECRET-" * 282 + b"!!!!!!!!!!!!"  # 4242 bytes, both must never show
SECRET_SIZE = str(len(SECRET))
ONLY_REGULAR = "import reads only regular files inside the tape directory"
assert len(SECRET) == 4242


def seedtape(*args: str, timeout: float = 20) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEEDTAPE_")}
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "seedtape", *args], capture_output=True, text=True, timeout=timeout,
                         env=env, errors="surrogateescape")
    return out, time.monotonic() - t0


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[Path, dict[str, TapeEntry]]:
    """A good export: a JSON answer and a stream, each under its own key."""
    base = tmp_path_factory.mktemp("good")
    with Store(base / "store") as st:
        e = {
            "json": put(st, "hello json", fp="fp_json", reply="hi there", at=T0, upstream_ms=812.25,
                        headers=[["content-type", "application/json"], ["x-request-id", "req_1"]]),
            "sse": put(st, "hello stream", fp="fp_sse", fmt="sse", at=T0 + 1, upstream_ms=100.5,
                       body=sse_answer("streamed answer", "fp_sse", usage=True),
                       headers=[["content-type", "text/event-stream; charset=utf-8"]],
                       extra={"gaps": [[100, 0.0], [250, 0.25]], "include_usage": True}),
        }
        tapefile.export(st, base / "tapes")
    return base / "tapes", e


class Tape:
    """A copy of the good export to spoil, with the paths of its files."""

    def __init__(self, root: Path, entries: dict[str, TapeEntry], outside: Path):
        self.root, self.e, self.outside = root, entries, outside

    def kdir(self, which: str = "json") -> Path:
        k = self.e[which].key
        return self.root / k[:2] / k

    def request(self, which: str = "json") -> Path:
        return self.kdir(which) / "request.json"

    def entry(self, which: str = "json") -> Path:
        return self.kdir(which) / f"fp_{which}.entry.json"

    def body(self, which: str = "json") -> Path:
        return self.kdir(which) / json.loads(self.entry(which).read_text())["body"]["file"]

    def edit_text(self, f: Path, old: str, new: str) -> None:
        text = f.read_text()
        assert re.search(old, text), (old, text)
        f.write_text(re.sub(old, lambda m: new, text, count=1))

    def edit(self, which: str, change) -> None:
        doc = json.loads(self.entry(which).read_text())
        change(doc)
        self.entry(which).write_bytes(tapefile.dumps_pretty(doc))

    def set_body(self, which: str, data: bytes) -> None:
        """A new body, with its size and sha256 in the entry file: only the body itself is wrong."""
        self.body(which).write_bytes(data)
        self.edit(which, lambda d: d["body"].update(size=len(data), sha256=hashlib.sha256(data).hexdigest()))

    def replace(self, f: Path, make) -> None:
        """Put something else where ``f`` was (a symlink, a FIFO, ...)."""
        shutil.rmtree(f) if f.is_dir() and not f.is_symlink() else f.unlink()
        make(f)

    def symlink_out(self, f: Path) -> None:
        """``f`` as a symlink to a copy of itself outside the tape: it would import if the symlink were followed."""
        target = self.outside / "copies" / f.name
        target.parent.mkdir(exist_ok=True)
        shutil.copytree(f, target, symlinks=True) if f.is_dir() else shutil.copyfile(f, target)
        self.replace(f, lambda f: f.symlink_to(target))

    def secret(self) -> Path:
        return self.outside / "secret.txt"


@pytest.fixture
def tape(good, tmp_path) -> Tape:
    root, entries = good
    shutil.copytree(root, tmp_path / "tapes", symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    return Tape(tmp_path / "tapes", entries, outside)


@pytest.fixture
def existing(tmp_path) -> tuple[Path, dict]:
    path = tmp_path / "existing"
    with Store(path) as st:
        put(st, "already here", fp="fp_old", at=T0)
        return path, everything(st)


def _fifo(f: Path) -> None:
    os.mkfifo(f)


def _device(f: Path) -> None:
    try:
        os.mknod(f, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # what /dev/zero is
    except OSError:
        pytest.skip("cannot create a device file here")


def _socket(f: Path) -> None:
    old = os.getcwd()
    os.chdir(f.parent)  # a socket path is limited to ~100 bytes: bind by a relative name
    try:
        s = socket.socket(socket.AF_UNIX)
        s.bind(f.name)
        s.close()
    finally:
        os.chdir(old)


def _dup_key(t: Tape) -> None:
    """A reviewer reads the first "status", a parser keeps the last."""
    t.edit_text(t.entry(), r'\n  "status": 200,\n', '\n  "status": 200,\n  "status": 302,\n')


FILESYSTEM = {  # name: (spoil the tape, the file the error names)
    "request_symlink": (lambda t: t.replace(t.request(), lambda f: f.symlink_to(t.secret())), Tape.request),
    "entry_symlink": (lambda t: t.replace(t.entry(), lambda f: f.symlink_to(t.secret())), Tape.entry),
    "body_symlink": (lambda t: t.replace(t.body(), lambda f: f.symlink_to(t.secret())), Tape.body),
    "body_symlink_to_a_good_copy": (lambda t: t.symlink_out(t.body()), Tape.body),
    "request_symlink_to_a_good_copy": (lambda t: t.symlink_out(t.request()), Tape.request),
    "key_dir_symlink": (lambda t: t.symlink_out(t.kdir()), Tape.kdir),
    "prefix_dir_symlink": (lambda t: t.symlink_out(t.kdir().parent), lambda t: t.kdir().parent),
    "marker_symlink": (lambda t: t.symlink_out(t.root / tapefile.MARKER), lambda t: t.root / tapefile.MARKER),
    "stray_symlink_in_key_dir": (lambda t: (t.kdir() / "notes.txt").symlink_to(t.secret()),
                                 lambda t: t.kdir() / "notes.txt"),
    "body_symlink_to_dev_zero": (lambda t: t.replace(t.body(), lambda f: f.symlink_to("/dev/zero")), Tape.body),
    "body_fifo": (lambda t: t.replace(t.body(), _fifo), Tape.body),
    "request_fifo": (lambda t: t.replace(t.request(), _fifo), Tape.request),
    "entry_fifo": (lambda t: t.replace(t.entry(), _fifo), Tape.entry),
    "marker_fifo": (lambda t: t.replace(t.root / tapefile.MARKER, _fifo), lambda t: t.root / tapefile.MARKER),
    "body_device": (lambda t: t.replace(t.body(), _device), Tape.body),
    "socket_in_key_dir": (lambda t: _socket(t.kdir() / "s"), lambda t: t.kdir() / "s"),
    "directory_as_request": (lambda t: t.replace(t.request(), lambda f: f.mkdir()), Tape.request),
}

CONTENT = {  # name: (spoil the tape, the file the error names, words the error holds)
    # what recording would never have stored
    **{f"header_{h}": (lambda t, h=h: t.edit("json", lambda d: d["headers"].append([h, "x"])), Tape.entry, h)
       for h in ("location", "refresh", "access-control-allow-origin", "strict-transport-security", "cache-control",
                 "set-cookie", "content-length", "transfer-encoding", "content-encoding", "connection")},
    "header_value_crlf": (lambda t: t.edit("json", lambda d: d["headers"].append(["x-request-id", "a\r\nset-cookie: b"])),
                          Tape.entry, "x-request-id"),
    "header_secret_lookalike": (lambda t: t.edit("json", lambda d: d["headers"].append(["x-ratelimit-session", "1"])),
                                Tape.entry, "secret"),
    **{f"status_{s}": (lambda t, s=s: t.edit("json", lambda d: d.update(status=s)), Tape.entry, f"status {s}")
       for s in (101, 204, 304, 302, 500)},
    "endpoint_unknown": (lambda t: t.edit("json", lambda d: d.update(endpoint="files.upload")), Tape.entry, "endpoint"),
    "endpoint_not_the_requests": (lambda t: t.edit("json", lambda d: d.update(endpoint="embeddings")), Tape.entry,
                                  "not what request.json asks for"),
    "headers_many": (lambda t: t.edit("json", lambda d: d.update(headers=[["x-ratelimit-a", "1"]] * 1000)), Tape.entry,
                     "1000 headers"),
    "embeddings_as_stream": (lambda t: t.edit("sse", lambda d: d.update(endpoint="embeddings")),
                             lambda t: t.entry("sse"), "never streams"),
    "fingerprint_10000": (lambda t: t.edit("json", lambda d: d.update(fingerprint="f" * 10_000)), Tape.entry,
                          "10000 characters"),
    "fingerprint_crlf": (lambda t: t.edit("json", lambda d: d.update(fingerprint="fp\r\nseedtape-status: hit")),
                         Tape.entry, "control characters"),
    "fingerprint_esc": (lambda t: t.edit("json", lambda d: d.update(fingerprint="fp\x1b]0;owned\x07")),
                        Tape.entry, "control characters"),
    "model_esc": (lambda t: t.edit("json", lambda d: d.update(model="gpt\x1b[2J")), Tape.entry, "model"),
    "namespace_long": (lambda t: t.edit("json", lambda d: d.update(namespace="n" * 2000)), Tape.entry, "namespace"),
    "namespace_not_the_requests": (lambda t: t.edit("json", lambda d: d.update(namespace="other")), Tape.entry,
                                   "namespace"),
    "recorded_in_the_future": (lambda t: t.edit("json", lambda d: d.update(
        recorded_at=tapefile.iso_time(time.time() + 3 * 86400))), Tape.entry, "in the future"),
    "recorded_in_1970": (lambda t: t.edit("json", lambda d: d.update(recorded_at="1970-01-01T00:00:01Z",
                                                                     first_recorded_at="1970-01-01T00:00:01Z")),
                         Tape.entry, "before 2020"),
    "first_after_last": (lambda t: t.edit("json", lambda d: d.update(first_recorded_at=tapefile.iso_time(T0 + 5))),
                         Tape.entry, "first_recorded_at"),
    "times_recorded_0": (lambda t: t.edit("json", lambda d: d.update(times_recorded=0)), Tape.entry, "times_recorded"),
    "upstream_ms_negative": (lambda t: t.edit("json", lambda d: d.update(upstream_ms=-5)), Tape.entry, "upstream_ms"),
    "extra_on_json": (lambda t: t.edit("json", lambda d: d.update(extra={"gaps": []})), Tape.entry, "extra"),
    "extra_unknown_key": (lambda t: t.edit("sse", lambda d: d["extra"].update(evil=1)), lambda t: t.entry("sse"),
                          "extra"),
    "extra_include_usage_string": (lambda t: t.edit("sse", lambda d: d["extra"].update(include_usage="yes")),
                                   lambda t: t.entry("sse"), "include_usage"),
    **{f"extra_gaps_{n}": (lambda t, g=g: t.edit("sse", lambda d: d["extra"].update(gaps=g)), lambda t: t.entry("sse"),
                           "extra.gaps")
       for n, g in (("string", "x"), ("short_pair", [[1]]), ("negative", [[-1, 0.0]]), ("days", [[10, 1e9]]),
                    ("string_offset", [["1", 0.1]]), ("backwards", [[200, 0.1], [100, 0.2]]))},
    "json_body_not_an_object": (lambda t: t.set_body("json", b"[1, 2, 3]\n"), Tape.body, "JSON object"),
    "json_body_error": (lambda t: t.set_body("json", b'{"error": {"message": "rate limited"}}'), Tape.body, "error"),
    "sse_body_cut": (lambda t: t.set_body("sse", t.body("sse").read_bytes().split(b"\n\n")[0] + b"\n\n"),
                     lambda t: t.body("sse"), "finish_reason"),
    "sse_body_error_event": (lambda t: t.set_body("sse", b'data: {"error": {"message": "x"}}\n\ndata: [DONE]\n\n'),
                             lambda t: t.body("sse"), "error event"),
    "body_declared_huge": (lambda t: t.edit("json", lambda d: d["body"].update(size=300 << 20)), Tape.entry, "MiB"),
    # what a reviewer reads must be what replay serves
    "duplicate_key": (_dup_key, Tape.entry, "appears twice"),
    "duplicate_key_in_request": (lambda t: t.edit_text(t.request(), r'\n  "method": "POST",\n',
                                                       '\n  "method": "POST",\n  "method": "DELETE",\n'),
                                 Tape.request, "appears twice"),
    "duplicate_key_in_marker": (lambda t: t.edit_text(t.root / tapefile.MARKER, r'\n  "version": 1\n',
                                                      '\n  "version": 1,\n  "version": 2\n'),
                                lambda t: t.root / tapefile.MARKER, "appears twice"),
    "nan": (lambda t: t.edit_text(t.entry(), r'"upstream_ms": [^,\n]+', '"upstream_ms": NaN'), Tape.entry, "NaN"),
    "infinity": (lambda t: t.edit_text(t.entry("sse"), r'"upstream_ms": [^,\n]+', '"upstream_ms": -Infinity'),
                 lambda t: t.entry("sse"), "Infinity"),
    "int_5000_digits": (lambda t: t.edit_text(t.entry(), r'"times_recorded": 1', '"times_recorded": ' + "9" * 5000),
                        Tape.entry, "5000-digit"),
    "deep_extra": (lambda t: t.edit_text(t.entry(), r'"extra": \{\}', '"extra": {"gaps": ' + "[" * 900 + "]" * 900 + "}"),
                   Tape.entry, "nested too deeply"),
    "deep_request": (lambda t: t.edit_text(t.request(), r'"seed": 1234', '"seed": ' + "[" * 900 + "]" * 900),
                     Tape.request, "nested too deeply"),
    "request_does_not_hash": (lambda t: t.edit_text(t.request(), "hello json", "delete the database"), Tape.request,
                              "does not hash to its key directory"),
    # what already held
    "body_file_dotdot": (lambda t: t.edit("json", lambda d: d["body"].update(file="../../../outside/secret.txt")),
                         Tape.entry, "body file"),
    "body_file_absolute": (lambda t: t.edit("json", lambda d: d["body"].update(file="/etc/passwd")), Tape.entry,
                           "body file"),
    "checksum_mismatch": (lambda t: t.body().write_bytes(t.body().read_bytes().replace(b"hi there", b"hi thera")),
                          Tape.body, "sha256"),
}


def in_process(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    """The CLI without a new interpreter: for tapes of regular files only, which cannot hang it."""
    t0 = time.monotonic()
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr), time.monotonic() - t0


def assert_refused(tape: Tape, existing, named: Path, *words: str, run=seedtape) -> str:
    store, before = existing
    r, took = run("import", str(tape.root), "--store", str(store))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert took < 10
    assert "Traceback" not in r.stderr + r.stdout and r.stdout == ""
    line = r.stderr.removesuffix("\n")
    assert line.splitlines() == [line] and line.startswith("Error: "), r.stderr
    assert str(named) in line, (str(named), line)
    for w in words:
        assert w in line, (w, line)
    assert not re.search("[\x00-\x1f\x7f-\x9f]", line)  # escaped: no terminal control, no forged line
    assert len(line) < 600 + len(str(tape.root))  # tape values are shortened
    assert "OUTSIDE-SECRET" not in line and SECRET_SIZE not in line and str(tape.outside) not in line
    with Store(store, readonly=True) as st:
        assert everything(st) == before  # nothing imported
    return line


@pytest.mark.parametrize("case", sorted(FILESYSTEM))
def test_import_reads_only_regular_files_inside_the_tape(tape, existing, case):
    spoil, named = FILESYSTEM[case]
    target = named(tape)  # before spoiling: the path of a file that then is a symlink, FIFO, ...
    spoil(tape)
    assert_refused(tape, existing, target, ONLY_REGULAR)
    with pytest.raises(tapefile.TapeFileError) as err:  # in-process too: the same one error
        tapefile.load(tape.root)
    assert err.value.file == str(target)


@pytest.mark.parametrize("case", sorted(CONTENT))
def test_import_refuses_what_recording_would_never_have_stored(tape, existing, case):
    spoil, named, word = CONTENT[case]
    target = named(tape)
    spoil(tape)
    line = assert_refused(tape, existing, target, word, run=in_process)
    assert "f" * 100 not in line  # the 10,000-character fingerprint is not repeated


def test_a_duplicate_key_is_named_with_its_line(tape, existing):
    _dup_key(tape)
    line = assert_refused(tape, existing, tape.entry(), run=in_process)
    second = tape.entry().read_text().splitlines().index('  "status": 302,') + 1
    assert f": line {second}: the key \"status\" appears twice" in line


def test_a_file_name_from_the_tape_is_escaped(tape, existing):
    (tape.kdir() / "\x1b]0;owned\x07\r").symlink_to(tape.secret())
    line = assert_refused(tape, existing, tape.kdir(), ONLY_REGULAR)
    assert "/\\x1b]0;owned\\x07\\r: import reads only" in line


def test_import_holds_at_most_so_much_in_memory(tape, monkeypatch):
    monkeypatch.setattr(tapefile, "MAX_TOTAL", 3000)  # the good tape's files add up to more
    with pytest.raises(tapefile.TapeFileError, match=r"add up to over .*: import it in parts"):
        tapefile.load(tape.root)


def test_a_new_store_is_not_even_created(tape, tmp_path):
    tape.replace(tape.body(), _fifo)
    r, took = seedtape("import", str(tape.root), "--store", str(tmp_path / "new"))
    assert r.returncode == 1 and took < 10
    assert not (tmp_path / "new").exists()


def test_the_good_tape_imports(tape, existing):
    """The cases above fail for what they change, not for the tape they start from."""
    store, _before = existing
    r, _ = seedtape("import", str(tape.root), "--store", str(store))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"imported 2 request keys, 2 entries from {tape.root}: 2 imported, 0 updated, 0 unchanged, " \
                       "0 kept (newer in the store)\n"


def test_unrelated_files_beside_the_tape_are_not_read(tape, existing):
    """Outside the <2 hex> directories nothing is read, so a symlink there is no concern."""
    (tape.root / "README.md").symlink_to(tape.secret())
    os.mkfifo(tape.root / "pipe")
    store, _ = existing
    r, took = seedtape("import", str(tape.root), "--store", str(store))
    assert r.returncode == 0 and took < 10, r.stderr


def test_a_scrubbed_request_is_imported_and_named(good, tmp_path):
    """A scrubbed request cannot hash to its key: accepted, but the summary says which it could not check."""
    root, e = good
    with Store(tmp_path / "src") as st:
        tapefile.import_(st, root)
        tapefile.export(st, tmp_path / "scrubbed", scrub_fields=["request.body.messages.*.content"])
    r, _ = seedtape("import", str(tmp_path / "scrubbed"), "--store", str(tmp_path / "fresh"))
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    assert first.startswith("imported 2 request keys, 2 entries")
    keys = sorted(x.key[:12] for x in e.values())
    assert second == ("2 requests with scrubbed fields could not be checked against their keys: "
                      f"{keys[0]} (body.messages[0].content), {keys[1]} (body.messages[0].content)")
    with Store(tmp_path / "fresh") as st:
        got = st.get(e["json"].key, "fp_json")
        assert got.request["body"]["messages"][0]["content"] == "[scrubbed]"
        result = tapefile.import_(st, tmp_path / "scrubbed")
    assert result.unchecked == {x.key: ["body.messages[0].content"] for x in e.values()}


def test_a_scrubbed_request_still_cannot_hide_other_damage(tape, existing):
    tape.edit_text(tape.request(), "hello json", "[scrubbed]")
    tape.edit("json", lambda d: d.update(status=302))
    assert_refused(tape, existing, tape.entry(), "status 302", run=in_process)


def test_the_good_tape_round_trips_byte_identical(good, tmp_path):
    root, _ = good
    with Store(tmp_path / "s") as st:
        tapefile.import_(st, root)
        tapefile.export(st, tmp_path / "again")
    files = lambda d: {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
    assert files(tmp_path / "again") == files(root)


@pytest.mark.parametrize("which", ["prefix", "key"])
def test_export_never_writes_or_deletes_through_a_symlinked_directory(good, tmp_path, which):
    """A checkout can hold a symlinked <2 hex> or key directory: export refuses it instead of writing outside."""
    root, e = good
    tapes = tmp_path / "tapes"
    shutil.copytree(root, tapes)
    victim = tmp_path / "victim"
    kdir = tapes / e["json"].key[:2] / e["json"].key
    linked = kdir.parent if which == "prefix" else kdir
    shutil.copytree(linked, victim)
    shutil.rmtree(linked)
    linked.symlink_to(victim)
    (victim / "keep.txt").write_text("not a tape file")
    before = {p.name: p.read_bytes() for p in sorted(victim.rglob("*")) if p.is_file()}
    with Store(tmp_path / "store") as st:
        tapefile.import_(st, root)
        with pytest.raises(tapefile.TapeFileError, match="is not a plain directory"):
            tapefile.export(st, tapes)
        for k in list(st.fingerprints(e["json"].key)):  # its removal must not follow the link either
            st.delete(e["json"].key, k)
        tapefile.export(st, tapes)  # nothing left to write there; stale files behind a link are not touched
    assert {p.name: p.read_bytes() for p in sorted(victim.rglob("*")) if p.is_file()} == before


def test_export_replaces_a_symlinked_tape_file_instead_of_reading_or_writing_its_target(good, tmp_path):
    root, e = good
    tapes = tmp_path / "tapes"
    shutil.copytree(root, tapes)
    entry = tapes / e["json"].key[:2] / e["json"].key / "fp_json.entry.json"
    outside = tmp_path / "outside.json"
    outside.write_bytes(entry.read_bytes())  # the same bytes: a naive export would call it unchanged
    entry.unlink()
    entry.symlink_to(outside)
    with Store(tmp_path / "store") as st:
        tapefile.import_(st, root)
        tapefile.export(st, tapes)
    assert not entry.is_symlink() and entry.read_bytes() == outside.read_bytes()

