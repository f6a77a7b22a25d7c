"""Portable tapes: a store written out as a directory of text files, made for git.

Layout, format version 1::

    PATH/seedtape-tapes.json                        format marker (format name, version)
    PATH/.gitattributes                             written once, if absent: no line-end conversion of tapes
    PATH/<key[:2]>/<key>/request.json               the canonical request (the same for every fingerprint)
    PATH/<key[:2]>/<key>/<fp>.entry.json            one tape entry's metadata, with its body's sha256 and size
    PATH/<key[:2]>/<key>/<fp>.body.json|.sse|.bin   the body, exactly the bytes recorded

One directory per request key, so branches that record different requests never
touch the same file. ``<fp>`` is the fingerprint itself when it is a safe file
name (lower-case letters, digits, ``_``, ``-``), else a slug of it plus 10 hex
digits of its sha256. The body file is ``.json`` for a JSON answer, ``.sse`` for
a recorded stream, ``.bin`` for bytes that are not UTF-8 (or a "json" body that
does not parse). JSON files seedtape writes are UTF-8 with sorted keys, indented
by 2 (arrays of plain values on one line) and end with a newline; times are
ISO-8601 UTC with as many fractional digits as the stored float needs to come
back exactly. Exporting an unchanged store rewrites nothing.

Export writes only files whose bytes change and removes the tape files (the names
above, inside ``<2 hex>/<64 hex>/`` directories) of entries the store no longer
has; it never touches any other file. It writes only the response headers
recording keeps and replay serves (never a secret one).

A tape directory may come from a pull request: import treats it as untrusted and
reads and checks every file before it writes anything (one bad file imports
nothing; the error is one escaped, shortened line naming the file):

- Files: only regular files inside the directory, opened relative to directories
  opened without following symlinks, without blocking, size checked before reading
  (JSON files at most 16 MiB; a body exactly its declared size, at most 256 MiB;
  1 GiB for all files). A symlink, FIFO, socket or device as the marker, as a
  ``<2 hex>`` directory or in one, or in a key directory is refused, without a
  word about what it is or points to. Nothing else in the tape directory is read.
- JSON files (marker, ``request.json``, entry files) parse strictly: no duplicate
  keys (a reviewer reads the first, a parser keeps the last), no NaN/Infinity, no
  integers over 1000 digits, no nesting deeper than 200.
- ``request.json`` hashes to its key directory's name, so the request a reviewer
  reads is the one the entries answer; a request holding ``"[scrubbed]"`` (a
  scrubbed export, or recorded with --redact-field) cannot be checked and is
  named in the import summary instead.
- Entries hold only what recording stores: a fingerprint of visible ASCII (at most
  200 characters), a known endpoint (the one ``request.json`` asks for), a 2xx
  status other than 204/205, only allow-listed headers with plain values (at most
  100), a JSON body that is an object without ``"error"`` or a complete stream
  (``[DONE]`` or a clean end, a finish_reason), ``extra`` only as a stream records
  it (``gaps``, ``include_usage``), model and namespace short and free of control
  characters, ``recorded_at`` after 2020 and not in the future (a tape cannot win
  every later merge), sane counts and times; each body's size and sha256 match
  its entry file.

It then merges in one transaction, where for a (key, fingerprint) already in the
store the entry with the later ``recorded_at`` wins (the store's on a tie).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from itertools import groupby
from pathlib import Path

from seedtape.proxy import dialects, strictjson
from seedtape.proxy.headers import is_secret, refusal
from seedtape.proxy.key.canonical import dumps_canonical
from seedtape.proxy.printable import escape
from seedtape.proxy.streams.streamtape import StreamTape
from seedtape.proxy.tapes import scrub
from seedtape.proxy.tapes.entry import TapeEntry, fingerprint_problem
from seedtape.proxy.tapes.scrub import SCRUBBED, FieldPath
from seedtape.proxy.tapes.store import Store

FORMAT = "seedtape-tapes"
VERSION = 1
MARKER = "seedtape-tapes.json"
REQUEST = "request.json"
GITATTRIBUTES = ".gitattributes"
GITATTRIBUTES_TEXT = (
    "# Written by `seedtape export`. Tape bodies are the exact bytes recorded and import checks\n"
    "# their sha256: git must never convert their line ends.\n"
    "*.json -text\n"
    "*.sse -text\n"
    "*.bin binary\n"
)
BODY_KINDS = ("json", "sse", "bin")

_KEY = re.compile(r"[0-9a-f]{64}")
_PREFIX = re.compile(r"[0-9a-f]{2}")
_SAFE_STEM = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_ENTRY_FILE = re.compile(r"([a-z0-9][a-z0-9_-]*)\.entry\.json")
_BODY_FILE = re.compile(r"([a-z0-9][a-z0-9_-]*)\.body\.(json|sse|bin)")
_TMP_FILE = re.compile(r"\.[a-z0-9][a-z0-9_.-]*\.\d+\.tmp")
_ISO = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z")
_WINDOWS_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Import limits: far above anything recorded, low enough that no tape can exhaust memory or time.
MAX_JSON_FILE = 16 << 20  # marker, request.json, entry files
MAX_BODY = 256 << 20  # one body (an embeddings answer of thousands of vectors is tens of MiB)
MAX_TOTAL = 1 << 30  # all files of one import: they are held in memory until the merge
MAX_HEADERS = 100  # the allow-list passes about a dozen
MAX_MODEL, MAX_NAMESPACE = 256, 1024
MAX_TIMES_RECORDED = 10**9
MAX_GAP_SECONDS = 3600.0  # a paced replay waits this long: no tape may make it wait for days
EARLIEST = datetime(2020, 1, 1, tzinfo=UTC).timestamp()  # before seedtape existed
FUTURE_SLACK = 86400.0  # clock skew between machines; later than that would win every merge
UNRECORDED_STATUSES = (204, 205)  # no body: nothing seedtape could replay
ENDPOINTS = {d.name: d for d in dialects.ALL}
EXTRA_FIELDS = {"json": (), "sse": ("gaps", "include_usage")}  # what Tapedeck.finish/finish_stream write
NOT_REGULAR = "import reads only regular files inside the tape directory (no symlink, FIFO, socket or device)"

ENTRY_FIELDS = (
    "body",
    "endpoint",
    "extra",
    "fingerprint",
    "first_recorded_at",
    "format",
    "headers",
    "key",
    "model",
    "namespace",
    "recorded_at",
    "status",
    "times_recorded",
    "upstream_ms",
)


class TapeFileError(ValueError):
    """A tape directory or file that cannot be exported to or imported; names the file (and line)."""

    def __init__(self, file: str | os.PathLike, message: str, line: int | None = None):
        self.file = str(file)
        self.line = line
        where = f"{self.file}: line {line}" if line else self.file
        super().__init__(escape(f"{where}: {message}"))  # names and values come from the tape: printable, one line


def _short(value: object, limit: int = 60) -> str:
    """Tape text for a message: escaped and cut, so no value can flood or forge a line."""
    text = escape(value if isinstance(value, str) else repr(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class ExportResult:
    path: Path
    keys: int = 0
    entries: int = 0
    written: int = 0  # entries with at least one file (re)written
    unchanged: int = 0
    removed: int = 0  # entries whose files were removed (no longer in the store)
    scrubbed_fields: int = 0  # values replaced by "[scrubbed]"
    scrubbed_headers: int = 0  # headers dropped by --scrub-header

    def summary(self) -> str:
        out = (
            f"exported {self.keys} request keys, {self.entries} entries to {self.path}: "
            f"{self.written} written, {self.unchanged} unchanged, {self.removed} removed"
        )
        if self.scrubbed_fields or self.scrubbed_headers:
            out += f"; scrubbed {self.scrubbed_fields} field values, {self.scrubbed_headers} headers"
        return out


@dataclass
class ImportResult:
    path: Path
    keys: int = 0
    entries: int = 0
    imported: int = 0  # new (key, fingerprint)
    updated: int = 0  # replaced an older recording
    unchanged: int = 0  # the store already had exactly this entry
    kept: int = 0  # the store's recording is newer (or as new): it stays
    outcomes: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)
    unchecked: dict[str, list[str]] = field(default_factory=dict)  # key -> "[scrubbed]" paths in its request

    def summary(self) -> str:
        out = (
            f"imported {self.keys} request keys, {self.entries} entries from {self.path}: "
            f"{self.imported} imported, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.kept} kept (newer in the store)"
        )
        if self.unchecked:  # a reviewer must know which requests the tape alone vouches for
            n = len(self.unchecked)
            shown = [
                f"{k[:12]} ({', '.join(_short(p) for p in paths[:3])}{', …' if len(paths) > 3 else ''})"
                for k, paths in sorted(self.unchecked.items())[:10]
            ]
            more = f", and {n - 10} more" if n > 10 else ""
            out += (
                f"\n{n} request{'s' if n > 1 else ''} with scrubbed fields could not be checked against "
                f"{'their keys' if n > 1 else 'its key'}: {', '.join(shown)}{more}"
            )
        return out


# -- names, times, JSON text ---------------------------------------------------------------------


def file_stem(fingerprint: str) -> str:
    """A file name for a fingerprint: itself when safe everywhere, else a slug plus a short hash."""
    if _SAFE_STEM.fullmatch(fingerprint) and fingerprint not in _WINDOWS_RESERVED:
        return fingerprint
    slug = re.sub(r"[^a-z0-9_-]+", "_", fingerprint.lower()).strip("_-")[:40] or "fp"
    digest = hashlib.sha256(fingerprint.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{slug}-{digest}"


def iso_time(ts: float) -> str:
    """Epoch seconds as ISO-8601 UTC, with the fractional digits of the shortest repr: round-trips exactly."""
    d = Decimal(repr(float(ts)))
    whole = int(d.to_integral_value(rounding=ROUND_FLOOR))
    text = (_EPOCH + timedelta(seconds=whole)).strftime("%Y-%m-%dT%H:%M:%S")
    frac = d - whole
    return text + (format(frac, "f")[1:] if frac else "") + "Z"


def parse_time(text: str) -> float:
    """The inverse of iso_time; ValueError for anything else."""
    m = _ISO.fullmatch(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{text!r} is not a time like 2025-01-31T12:00:00.123456Z")
    whole = (datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC) - _EPOCH) // timedelta(seconds=1)
    return float(Decimal(whole) + Decimal("0" + (m.group(2) or "")))


def _is_plain(v: object) -> bool:
    return not isinstance(v, (dict, list)) or not v


def _pretty(v: object, level: int, ascii_only: bool) -> str:
    pad, end = "  " * (level + 1), "  " * level
    if isinstance(v, dict) and v:
        items = (f"{pad}{json.dumps(k, ensure_ascii=ascii_only)}: {_pretty(v[k], level + 1, ascii_only)}" for k in sorted(v))
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    if isinstance(v, list) and not all(_is_plain(x) for x in v):
        return "[\n" + ",\n".join(pad + _pretty(x, level + 1, ascii_only) for x in v) + "\n" + end + "]"
    return json.dumps(v, ensure_ascii=ascii_only, separators=(", ", ": "), allow_nan=False)


def dumps_pretty(value: object) -> bytes:
    """Deterministic, reviewable JSON: sorted keys, indent 2, arrays of plain values on one line, final newline."""
    try:
        return (_pretty(value, 0, False) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (valid JSON escapes, not UTF-8): escape everything
        return (_pretty(value, 0, True) + "\n").encode("ascii")


def body_kind(fmt: str, body: bytes) -> str:
    """The body file's extension: json, sse or bin."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "bin"
    if fmt == "sse":
        return "sse"
    if fmt == "json":
        try:
            json.loads(text)
            return "json"
        except ValueError:
            pass
    return "bin"


# -- export --------------------------------------------------------------------------------------


def _check_marker(root_fd: int, root: Path, *, required: bool) -> None:
    marker = root / MARKER
    try:
        os.stat(MARKER, dir_fd=root_fd, follow_symlinks=False)
    except FileNotFoundError:
        if required:
            raise TapeFileError(root, f"not a seedtape tape directory (no {MARKER}): export one with `seedtape export`") from None
        return
    except OSError:
        pass  # reading it says why
    doc, _ = _load_json(root_fd, MARKER, marker, _Budget())
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TapeFileError(marker, f'not a seedtape tape marker (no "format": "{FORMAT}")')
    if doc.get("version") != VERSION:
        raise TapeFileError(
            marker,
            f"tape format version {_short(doc.get('version'), 20)}, but this seedtape reads "
            f"and writes version {VERSION}: use a matching seedtape release or another directory",
        )


def _marker_bytes() -> bytes:
    return dumps_pretty(
        {
            "format": FORMAT,
            "version": VERSION,
            "layout": "<key[:2]>/<key>/request.json, <fingerprint>.entry.json, <fingerprint>.body.json|sse|bin",
        }
    )


def _write_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically: a crash leaves the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _real_dir(p: Path) -> bool:
    return p.is_dir() and not p.is_symlink()


def _key_dirs(root: Path) -> list[Path]:
    """The ``<2 hex>/<64 hex>`` directories under root, sorted; symlinks are never followed."""
    out = []
    for prefix in sorted(p for p in root.iterdir() if _real_dir(p) and _PREFIX.fullmatch(p.name)) if root.is_dir() else []:
        out += sorted(k for k in prefix.iterdir() if _real_dir(k) and _KEY.fullmatch(k.name))
    return out


def _check_inside(root: Path, rel: Path) -> None:
    """Export writes only inside the tape directory: a symlinked ``<2 hex>`` or key directory is refused."""
    for depth in range(1, len(rel.parts)):
        d = root.joinpath(*rel.parts[:depth])
        if d.is_symlink() or (d.exists() and not d.is_dir()):
            raise TapeFileError(
                d,
                "is not a plain directory (a symlink?): export writes only inside the tape directory; remove it and export again",
            )


def _unchanged(target: Path, data: bytes) -> bool:
    """Whether ``target`` is a regular file (not a link) holding exactly ``data``."""
    try:
        st = target.lstat()
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == len(data) and target.read_bytes() == data


def _is_tape_file(name: str) -> bool:
    return name == REQUEST or bool(_ENTRY_FILE.fullmatch(name) or _BODY_FILE.fullmatch(name))


def entry_document(e: TapeEntry, stem: str, body: bytes, headers: list[list[str]]) -> dict:
    kind = body_kind(e.format, body)
    return {
        "key": e.key,
        "fingerprint": e.fingerprint,
        "endpoint": e.endpoint,
        "model": e.model,
        "namespace": e.namespace,
        "format": e.format,
        "status": e.status,
        "headers": headers,
        "recorded_at": iso_time(e.recorded_at),
        "first_recorded_at": iso_time(e.first_recorded_at or e.recorded_at),
        "times_recorded": e.times_recorded,
        "upstream_ms": e.upstream_ms,
        "extra": e.extra,
        "body": {"file": f"{stem}.body.{kind}", "sha256": hashlib.sha256(body).hexdigest(), "size": len(body)},
    }


def export(
    store: Store,
    path: str | os.PathLike,
    *,
    scrub_headers: tuple[str, ...] | list[str] = (),
    scrub_fields: tuple[str | FieldPath, ...] | list[str | FieldPath] = (),
) -> ExportResult:
    """Write every entry of ``store`` under ``path`` (see the module doc); ValueError for a bad field path."""
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise TapeFileError(root, "exists and is not a directory: export into a directory")
    fields = [f if isinstance(f, FieldPath) else scrub.parse_field(f) for f in scrub_fields]
    result = ExportResult(path=root)
    if root.is_dir():
        with _open_dir(root, root, follow=True) as root_fd:
            _check_marker(root_fd, root, required=False)

    files: dict[Path, bytes] = {Path(MARKER): _marker_bytes()}
    entry_files: dict[tuple[str, str], tuple[Path, ...]] = {}
    for key, group in groupby(store.entries(), key=lambda e: e.key):
        if not _KEY.fullmatch(key):
            raise TapeFileError(root, f"the store holds an entry under {key!r}, which is not a request key (64 hex digits)")
        entries = list(group)
        kdir = Path(key[:2]) / key
        request, n = scrub.request(entries[0].request, fields)
        result.scrubbed_fields += n
        files[kdir / REQUEST] = dumps_pretty(request)
        stems: dict[str, str] = {}
        for e in entries:
            stem = file_stem(e.fingerprint)
            if stem in stems:
                raise TapeFileError(root / kdir, f"fingerprints {stems[stem]!r} and {e.fingerprint!r} map to one file name")
            stems[stem] = e.fingerprint
            body, n = scrub.body(e.body, e.format, fields)
            result.scrubbed_fields += n
            headers, dropped = scrub.headers(e.headers, scrub_headers)
            headers = [h for h in headers if refusal(*h) is None]  # what replay serves; import refuses the rest
            result.scrubbed_headers += dropped
            doc = entry_document(e, stem, body, headers)
            efile, bfile = kdir / f"{stem}.entry.json", kdir / doc["body"]["file"]
            files[efile], files[bfile] = dumps_pretty(doc), body
            entry_files[(key, e.fingerprint)] = (kdir / REQUEST, efile, bfile)
        result.keys += 1

    written: set[Path] = set()
    for rel, data in sorted(files.items()):
        target = root / rel
        _check_inside(root, rel)
        if _unchanged(target, data):
            continue
        _write_file(target, data)  # os.replace: a link or FIFO in the way is replaced, never followed
        written.add(rel)
    if not (root / GITATTRIBUTES).exists():
        _write_file(root / GITATTRIBUTES, GITATTRIBUTES_TEXT.encode())
    for paths in entry_files.values():
        result.entries += 1
        if written.intersection(paths):
            result.written += 1
        else:
            result.unchanged += 1
    result.removed = _remove_stale(root, set(files))
    return result


def _remove_stale(root: Path, keep: set[Path]) -> int:
    """Remove tape files not in ``keep`` (and leftovers of interrupted writes); returns entry files removed."""
    removed = 0
    for kdir in _key_dirs(root):
        for f in sorted(kdir.iterdir()):
            rel = f.relative_to(root)
            if not f.is_file() or rel in keep:
                continue
            if _is_tape_file(f.name) or _TMP_FILE.fullmatch(f.name):
                f.unlink()
                removed += bool(_ENTRY_FILE.fullmatch(f.name))
        for d in (kdir, kdir.parent):
            try:
                d.rmdir()  # only when empty: unrelated files keep their directory
            except OSError:
                break
    return removed


# -- import --------------------------------------------------------------------------------------


def _line_at(data: bytes | str, offset: int) -> int:
    if isinstance(data, bytes):
        return data[:offset].count(b"\n") + 1
    return data[:offset].count("\n") + 1


@contextmanager
def _open_dir(name: str | Path, path: Path, dir_fd: int | None = None, *, follow: bool = False) -> Iterator[int]:
    """A directory's fd, never through a symlink (except ``follow``: the tape root the user named)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as e:
        if not follow and e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise TapeFileError(path, NOT_REGULAR) from None
        raise TapeFileError(path, f"cannot be read ({e.strerror})") from None
    try:
        yield fd
    finally:
        os.close(fd)


def _scan(dir_fd: int, path: Path) -> tuple[list[str], list[str]]:
    """(regular files, directories) in a directory, sorted; a symlink, FIFO, socket or device there is refused."""
    files: list[str] = []
    dirs: list[str] = []
    odd: list[str] = []
    try:
        with os.scandir(dir_fd) as it:
            for d in it:
                kind = dirs if d.is_dir(follow_symlinks=False) else files if d.is_file(follow_symlinks=False) else odd
                kind.append(d.name)
    except OSError as e:
        raise TapeFileError(path, f"cannot be read ({e.strerror})") from None
    if odd:
        raise TapeFileError(path / min(odd), NOT_REGULAR)
    return sorted(files), sorted(dirs)


def _prefixes(root_fd: int, root: Path) -> list[str]:
    """The ``<2 hex>`` directories of the tape root; such a name as a symlink or special file is refused."""
    found, odd = [], []
    try:
        with os.scandir(root_fd) as it:
            for d in it:
                if not _PREFIX.fullmatch(d.name):
                    continue  # README, .git, ...: never read
                if d.is_dir(follow_symlinks=False):
                    found.append(d.name)
                elif not d.is_file(follow_symlinks=False):
                    odd.append(d.name)
    except OSError as e:
        raise TapeFileError(root, f"cannot be read ({e.strerror})") from None
    if odd:
        raise TapeFileError(root / min(odd), NOT_REGULAR)
    return sorted(found)


class _Budget:
    """How many bytes one import may still read: what it reads stays in memory until the merge."""

    def __init__(self) -> None:
        self.left = MAX_TOTAL

    def take(self, n: int, path: Path) -> None:
        if n > self.left:
            raise TapeFileError(path, f"the tape's files add up to over {MAX_TOTAL >> 30} GiB: import it in parts")
        self.left -= n


def _read(dir_fd: int, name: str, path: Path, limit: int, too_big: Callable[[int], TapeFileError], budget: _Budget) -> bytes:
    """A regular file's bytes: never through a symlink, never blocking on a FIFO, size checked before reading."""
    try:
        if not stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise TapeFileError(path, NOT_REGULAR)  # a device is never even opened
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:  # became a symlink since
            raise TapeFileError(path, NOT_REGULAR) from None
        raise TapeFileError(path, f"cannot be read ({e.strerror})") from None
    chunks: list[bytes] = []
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TapeFileError(path, NOT_REGULAR)
        if st.st_size > limit:
            raise too_big(st.st_size)
        budget.take(st.st_size, path)
        left = limit + 1  # one more: a file that grew since fstat is noticed
        while left > 0 and (chunk := os.read(fd, min(left, st.st_size + 1))):  # usually all of it at once
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as e:
        raise TapeFileError(path, f"cannot be read ({e.strerror})") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:  # it grew after fstat
        raise too_big(len(data))
    return data


def _load_json(dir_fd: int, name: str, path: Path, budget: _Budget) -> tuple[object, str]:
    """A tape JSON file, parsed strictly: what a reviewer reads is what import takes."""
    data = _read(
        dir_fd,
        name,
        path,
        MAX_JSON_FILE,
        lambda n: TapeFileError(path, f"has {n} bytes, over the {MAX_JSON_FILE >> 20} MiB of any tape file seedtape writes"),
        budget,
    )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TapeFileError(path, f"is not UTF-8 (byte {e.start})", _line_at(data, e.start)) from None
    try:
        return strictjson.loads(text, unique_keys=True), text
    except json.JSONDecodeError as e:
        hint = "" if text.rstrip().endswith(("}", "]")) else " (truncated?)"
        raise TapeFileError(path, f"column {e.colno}: invalid JSON: {e.msg}{hint}", e.lineno) from None
    except strictjson.TooDeep as e:
        raise TapeFileError(path, f"JSON {e}") from None
    except ValueError as e:  # duplicate keys, NaN/Infinity, huge numbers
        raise TapeFileError(path, f"{_short(str(e), 120)}: seedtape never writes that", _locate(text, str(e))) from None


def _locate(text: str, message: str) -> int | None:
    """The line of what strictjson refused (its errors carry no position); None when unsure."""
    if m := re.match(r'the key (".*") appears twice', message):
        hits = [h.start() for h in re.finditer(re.escape(m.group(1)) + r"\s*:", text)]
        return _line_at(text, hits[1]) if len(hits) == 2 else None
    if m := re.match(r"(\S+) is (?:not valid JSON|too large)", message):
        literal = re.escape(m.group(1))
    elif "-digit integer" in message:
        literal = rf"-?\d{{{strictjson.MAX_INT_DIGITS + 1},}}"
    else:
        return None
    hit = re.search(r"[:\[,]\s*" + literal + r"(?![\w.])", text)
    return _line_at(text, hit.end() - 1) if hit else None


def _field_line(text: str, name: str) -> int | None:
    i = text.find(f'"{name}":')
    return _line_at(text, i) if i >= 0 else None


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def scrubbed_fields(doc: object) -> list[str]:
    """Where a value is "[scrubbed]", in document order: ``body.messages[0].content``."""
    out, stack = [], [(doc, "")]
    while stack:
        node, at = stack.pop()
        if node == SCRUBBED:
            out.append(at)
        elif isinstance(node, dict):
            stack.extend((v, f"{at}.{k}" if at else k) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((v, f"{at}[{i}]") for i, v in reversed(list(enumerate(node))))
    return out


def _read_request(kfd: int, kdir: Path, budget: _Budget) -> dict:
    path = kdir / REQUEST
    request, _ = _load_json(kfd, REQUEST, path, budget)
    if not isinstance(request, dict):
        raise TapeFileError(path, "the canonical request must be a JSON object", 1)
    if hashlib.sha256(dumps_canonical(request)).hexdigest() != kdir.name and not scrubbed_fields(request):
        raise TapeFileError(
            path,
            "does not hash to its key directory: the request a reviewer reads would not be "
            "the one it answers (restore it, or export the store again)",
        )
    return request


def _extra_problem(extra: object, fmt: str) -> str | None:
    """Why ``extra`` is not what recording writes (a stream's gaps and include_usage; nothing for JSON)."""
    if not isinstance(extra, dict):
        return "extra must be an object"
    unknown = sorted(set(extra) - set(EXTRA_FIELDS[fmt]))
    if unknown:
        return f"extra holds '{_short(unknown[0], 40)}': recording writes " + (
            "only gaps and include_usage there" if fmt == "sse" else "nothing there for a JSON answer"
        )
    if not isinstance(extra.get("include_usage", False), bool):
        return "extra.include_usage must be true or false"
    gaps, pairs = extra.get("gaps", []), "extra.gaps must be a list of [byte offset, seconds] pairs"
    if not isinstance(gaps, list):
        return pairs
    offset, seconds = 0, 0.0
    for g in gaps:
        if not (isinstance(g, list) and len(g) == 2 and _is_int(g[0]) and _is_number(g[1])):
            return pairs
        if g[0] <= offset or not seconds <= g[1] <= MAX_GAP_SECONDS:
            return f"{pairs} counting up (offsets from 1, seconds from 0 to {MAX_GAP_SECONDS:g})"
        offset, seconds = g
    return None


_LINE_END = re.compile(rb"\r\n?|\n")


def _pieces(body: bytes, size: int = 4096) -> Iterator[bytes]:
    """A stream in pieces that end at line ends: the SSE parser copies its buffer once per line."""
    start = 0
    while start < len(body):
        m = _LINE_END.search(body, start + size)
        end = m.end() if m else len(body)
        yield body[start:end]
        start = end


def _body_problem(dialect: dialects.Dialect, fmt: str, body: bytes) -> str | None:
    """Why recording would never have stored this body (None: it would)."""
    if fmt == "sse":
        tape = StreamTape(dialect)
        for piece in _pieces(body):
            tape.feed(piece)
        tape.feed(b"")
        why = tape.verdict()
        return f"not a stream seedtape records: {why}" if why else None
    try:  # decoded as the JSON the API sends may be (a BOM, UTF-16), then parsed strictly
        doc = strictjson.loads(body.decode(json.detect_encoding(body)))
    except ValueError:
        doc = None
    if dialect.answer_problem(doc):
        return 'not an answer seedtape records: a "json" body is a JSON object without "error"'
    return None


def _read_entry(kfd: int, kdir: Path, stem: str, request: dict, budget: _Budget) -> tuple[TapeEntry, str]:
    efile = kdir / f"{stem}.entry.json"
    doc, text = _load_json(kfd, efile.name, efile, budget)

    def bad(name: str | None, message: str, near: str | None = None) -> TapeFileError:
        line = _field_line(text, name) if name else 1
        if near and (i := text.find(near, max(0, text.find(f'"{name}":')))) >= 0:
            line = _line_at(text, i)
        return TapeFileError(efile, message, line)

    if not isinstance(doc, dict):
        raise bad(None, "an entry file holds a JSON object")
    missing = [f for f in ENTRY_FIELDS if f not in doc]
    unknown = sorted(set(doc) - set(ENTRY_FIELDS))
    if missing:
        raise bad(None, f"missing field(s) {', '.join(missing)}")
    if unknown:
        raise bad(unknown[0], f"unknown field(s) {', '.join(_short(u, 40) for u in unknown[:5])}")
    for name in ("key", "fingerprint", "endpoint", "model", "namespace", "format"):
        if not isinstance(doc[name], str):
            raise bad(name, f"{name} must be a string")
    if doc["key"] != kdir.name:
        raise bad("key", f"key '{_short(doc['key'], 16)}' is not the directory's key {kdir.name[:16]}…")
    fp = doc["fingerprint"]
    if why := fingerprint_problem(fp):
        raise bad("fingerprint", f"{why}: seedtape never records such a fingerprint")
    if file_stem(fp) != stem:
        raise bad("fingerprint", f"fingerprint '{fp}' belongs in {file_stem(fp)}.entry.json, not {efile.name}")
    endpoint = ENDPOINTS.get(doc["endpoint"])
    if endpoint is None:
        raise bad("endpoint", f"endpoint '{_short(doc['endpoint'])}' is not one seedtape records ({', '.join(ENDPOINTS)})")
    fmt = doc["format"]
    if fmt not in ("json", "sse"):
        raise bad("format", f"format '{_short(fmt)}' is not json or sse")
    if fmt == "sse" and not endpoint.can_stream:
        raise bad("format", f"{endpoint.name} answers are never streams")
    method, rpath = request.get("method"), request.get("path")
    if isinstance(method, str) and isinstance(rpath, str) and SCRUBBED not in (method, rpath):
        asked = dialects.recorded_for(method, rpath)
        if asked is None or asked.name != endpoint.name:
            raise bad(
                "endpoint",
                f"endpoint {endpoint.name} is not what {REQUEST} asks for "
                f"({_short(method, 10)} {_short(rpath)}): recording stores the one it asks for",
            )
    for name, limit in (("model", MAX_MODEL), ("namespace", MAX_NAMESPACE)):
        if len(doc[name]) > limit:
            raise bad(name, f"{name} has {len(doc[name])} characters (at most {limit})")
        if escape(doc[name]) != doc[name]:
            raise bad(name, f"{name} '{_short(doc[name])}' holds control characters")
    ns = request.get("namespace")
    if isinstance(ns, str) and ns not in (SCRUBBED, doc["namespace"]):
        raise bad("namespace", f"namespace is not the one in {REQUEST}: recording stores the same")
    status = doc["status"]
    if not _is_int(status) or not 200 <= status <= 299 or status in UNRECORDED_STATUSES:
        raise bad("status", f"status {_short(repr(status), 20)} is not one seedtape records (2xx, except 204 and 205)")
    h = doc["headers"]
    if not isinstance(h, list) or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in h):
        raise bad("headers", "headers must be a list of [name, value] string pairs")
    if len(h) > MAX_HEADERS:
        raise bad("headers", f"{len(h)} headers: seedtape records at most a few dozen")
    for name, value in h:
        shown = name if len(name) <= 40 else name[:40] + "…"  # refused either way: a short name in the message
        why = refusal(name, value)
        why = (
            (refusal(shown, value) or _short(why, 200))
            if why
            else (f"header '{shown}' looks like a secret" if is_secret(name) else None)
        )
        if why:
            raise bad(
                "headers",
                f"{why}: import refuses what recording would never have stored",
                json.dumps(name, ensure_ascii=False)[:-1],
            )
    times = {}
    for name in ("recorded_at", "first_recorded_at"):
        try:
            times[name] = parse_time(doc[name])
        except ValueError:
            raise bad(name, f"{name} {_short(repr(doc[name]))} is not a time like 2025-01-31T12:00:00.123456Z") from None
        if times[name] < EARLIEST:
            raise bad(name, f"{name} {_short(doc[name], 40)} is before 2020: not a time seedtape recorded")
    if times["recorded_at"] > time.time() + FUTURE_SLACK:
        raise bad("recorded_at", f"recorded_at {_short(doc['recorded_at'], 40)} is in the future: it would win every later merge")
    if times["first_recorded_at"] > times["recorded_at"]:
        raise bad("first_recorded_at", "first_recorded_at is after recorded_at")
    if not _is_int(doc["times_recorded"]) or not 1 <= doc["times_recorded"] <= MAX_TIMES_RECORDED:
        raise bad("times_recorded", f"times_recorded must be a count from 1 to {MAX_TIMES_RECORDED}")
    ms = doc["upstream_ms"]
    if ms is not None and (not _is_number(ms) or ms < 0):
        raise bad("upstream_ms", "upstream_ms must be a number of milliseconds (0 or more) or null")
    if why := _extra_problem(doc["extra"], fmt):
        raise bad("extra", why)

    b = doc["body"]
    if not (
        isinstance(b, dict)
        and set(b) == {"file", "sha256", "size"}
        and isinstance(b["file"], str)
        and isinstance(b["sha256"], str)
        and re.fullmatch(r"[0-9a-f]{64}", b["sha256"])
        and _is_int(b["size"])
        and b["size"] >= 0
    ):
        raise bad("body", 'body must be {"file": NAME, "sha256": 64 hex digits, "size": bytes}')
    m = _BODY_FILE.fullmatch(b["file"])
    kinds = ("json", "bin") if fmt == "json" else ("sse", "bin")
    if not m or m.group(1) != stem or m.group(2) not in kinds:
        raise bad("file", f"body file '{_short(b['file'])}' should be {stem}.body.{' or .'.join(kinds)}")
    size = b["size"]
    if size > MAX_BODY:
        raise bad("size", f"the body is {size} bytes: over the {MAX_BODY >> 20} MiB import reads for one body")
    bfile = kdir / b["file"]
    records = (
        f"{efile.name} line {_field_line(text, 'sha256')} records {size} bytes with sha256 "
        f"{b['sha256'][:12]}… (edited, or line ends converted by git? keep the {GITATTRIBUTES} export writes)"
    )
    larger = lambda n: TapeFileError(bfile, f"damaged: it has {n} bytes, but {records}")  # noqa: E731
    body = _read(kfd, b["file"], bfile, size, larger, budget)
    if len(body) != size or hashlib.sha256(body).hexdigest() != b["sha256"]:
        if len(body) < size:
            lines = body.count(b"\n") + (0 if body.endswith(b"\n") else 1)
            what = f"truncated: {len(body)} bytes (it ends in line {lines}), but"
        else:
            what = f"damaged: its {len(body)} bytes have sha256 {hashlib.sha256(body).hexdigest()[:12]}…, but"
        raise TapeFileError(bfile, f"{what} {records}")
    if why := _body_problem(endpoint, fmt, body):
        raise TapeFileError(bfile, why)

    entry = TapeEntry(
        key=doc["key"],
        fingerprint=fp,
        endpoint=endpoint.name,
        request=request,
        status=status,
        headers=h,
        body=body,
        format=fmt,
        model=doc["model"],
        namespace=doc["namespace"],
        recorded_at=times["recorded_at"],
        first_recorded_at=times["first_recorded_at"],
        times_recorded=doc["times_recorded"],
        upstream_ms=ms,
        extra=doc["extra"],
    )
    return entry, b["file"]


def _read_key(kfd: int, kdir: Path, budget: _Budget) -> list[TapeEntry]:
    """The entries of one key directory."""
    files, dirs = _scan(kfd, kdir)
    names = sorted(files + [d for d in dirs if _is_tape_file(d)])  # a directory so named is refused when read
    stems = [m.group(1) for n in names if (m := _ENTRY_FILE.fullmatch(n))]
    bodies = {n for n in names if _BODY_FILE.fullmatch(n)}
    if REQUEST not in names:
        if stems or bodies:
            raise TapeFileError(kdir, f"has tape files but no {REQUEST}")
        return []
    if not stems:
        raise TapeFileError(
            kdir / REQUEST, "no entry file (<fingerprint>.entry.json) beside it: restore one, or delete the directory"
        )
    request = _read_request(kfd, kdir, budget)
    out, used = [], set()
    for stem in stems:
        entry, bname = _read_entry(kfd, kdir, stem, request, budget)
        out.append(entry)
        used.add(bname)
    for orphan in sorted(bodies - used):
        raise TapeFileError(kdir / orphan, "no entry file refers to this body: restore its entry file or delete it")
    return out


def load(path: str | os.PathLike) -> list[TapeEntry]:
    """Read and check a whole tape directory (see the module doc); TapeFileError names the first bad file (and line)."""
    root = Path(path)
    if not root.is_dir():
        raise TapeFileError(root, "no such tape directory: export one with `seedtape export`")
    out: list[TapeEntry] = []
    with _open_dir(root, root, follow=True) as root_fd:  # the directory the user named; nothing under it is followed
        _check_marker(root_fd, root, required=True)
        keys = []
        for p in _prefixes(root_fd, root):
            with _open_dir(p, root / p, root_fd) as pfd:
                for k in _scan(pfd, root / p)[1]:
                    if _KEY.fullmatch(k):
                        if not k.startswith(p):
                            raise TapeFileError(root / p / k, f"a key directory belongs under {k[:2]}/, not {p}/")
                        keys.append((p, k))
        budget = _Budget()
        for p, k in keys:
            with _open_dir(p, root / p, root_fd) as pfd, _open_dir(k, root / p / k, pfd) as kfd:
                out += _read_key(kfd, root / p / k, budget)
    out.sort(key=lambda e: (e.key, e.fingerprint))
    return out


def merge(store: Store, entries: list[TapeEntry], path: str | os.PathLike = "") -> ImportResult:
    """Merge checked entries into the store in one transaction (see Store.merge for who wins)."""
    outcomes = store.merge(entries)
    result = ImportResult(path=Path(path), keys=len({e.key for e in entries}), entries=len(entries))
    for key, request in {e.key: e.request for e in entries}.items():  # load lets only scrubbed ones through
        if hashlib.sha256(dumps_canonical(request)).hexdigest() != key:
            result.unchecked[key] = scrubbed_fields(request)
    for e, what in zip(entries, outcomes):
        setattr(result, what, getattr(result, what) + 1)
        result.outcomes[(e.key, e.fingerprint)] = what
    return result


def import_(store: Store, path: str | os.PathLike) -> ImportResult:
    """Check every file under ``path``, then merge its entries into ``store``; TapeFileError imports nothing."""
    return merge(store, load(path), path)
