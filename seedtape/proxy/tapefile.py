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
has; it never touches any other file. Import reads and checks every file first
(JSON syntax, fields, body size and sha256) and writes nothing if one is wrong;
it then merges in one transaction, where for a (key, fingerprint) already in the
store the entry with the later ``recorded_at`` wins (the store's on a tie).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_FLOOR, Decimal
from itertools import groupby
from pathlib import Path

from . import scrub
from .scrub import FieldPath
from .store import Store
from .tape import TapeEntry

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
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

ENTRY_FIELDS = ("body", "endpoint", "extra", "fingerprint", "first_recorded_at", "format", "headers", "key", "model",
                "namespace", "recorded_at", "status", "times_recorded", "upstream_ms")


class TapeFileError(ValueError):
    """A tape directory or file that cannot be exported to or imported; names the file (and line)."""

    def __init__(self, file: str | os.PathLike, message: str, line: int | None = None):
        self.file = str(file)
        self.line = line
        where = f"{self.file}: line {line}" if line else self.file
        super().__init__(f"{where}: {message}")


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
        out = (f"exported {self.keys} request keys, {self.entries} entries to {self.path}: "
               f"{self.written} written, {self.unchanged} unchanged, {self.removed} removed")
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

    def summary(self) -> str:
        return (f"imported {self.keys} request keys, {self.entries} entries from {self.path}: "
                f"{self.imported} imported, {self.updated} updated, {self.unchanged} unchanged, "
                f"{self.kept} kept (newer in the store)")


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
    whole = (datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc) - _EPOCH) // timedelta(seconds=1)
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


def _check_marker(root: Path) -> None:
    marker = root / MARKER
    if not marker.exists():
        return
    doc, _ = _load_json(marker)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TapeFileError(marker, f"not a seedtape tape marker (no \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise TapeFileError(marker, f"tape format version {doc.get('version')!r}, but this seedtape reads and writes "
                                    f"version {VERSION}: use a matching seedtape release or another directory")


def _marker_bytes() -> bytes:
    return dumps_pretty({
        "format": FORMAT,
        "version": VERSION,
        "layout": "<key[:2]>/<key>/request.json, <fingerprint>.entry.json, <fingerprint>.body.json|sse|bin",
    })


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


def _key_dirs(root: Path) -> list[Path]:
    """The ``<2 hex>/<64 hex>`` directories under root, sorted."""
    out = []
    for prefix in sorted(p for p in root.iterdir() if p.is_dir() and _PREFIX.fullmatch(p.name)) if root.is_dir() else []:
        out += sorted(k for k in prefix.iterdir() if k.is_dir() and _KEY.fullmatch(k.name))
    return out


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


def export(store: Store, path: str | os.PathLike, *, scrub_headers: tuple[str, ...] | list[str] = (),
           scrub_fields: tuple[str | FieldPath, ...] | list[str | FieldPath] = ()) -> ExportResult:
    """Write every entry of ``store`` under ``path`` (see the module doc); ValueError for a bad field path."""
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise TapeFileError(root, "exists and is not a directory: export into a directory")
    fields = [f if isinstance(f, FieldPath) else scrub.parse_field(f) for f in scrub_fields]
    result = ExportResult(path=root)
    _check_marker(root)

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
            result.scrubbed_headers += dropped
            doc = entry_document(e, stem, body, headers)
            efile, bfile = kdir / f"{stem}.entry.json", kdir / doc["body"]["file"]
            files[efile], files[bfile] = dumps_pretty(doc), body
            entry_files[(key, e.fingerprint)] = (kdir / REQUEST, efile, bfile)
        result.keys += 1

    written: set[Path] = set()
    for rel, data in sorted(files.items()):
        target = root / rel
        if target.is_file() and target.read_bytes() == data:
            continue
        _write_file(target, data)
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
    return data[:offset].count(b"\n" if isinstance(data, bytes) else "\n") + 1


def _load_json(path: Path) -> tuple[object, str]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TapeFileError(path, f"cannot be read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TapeFileError(path, f"is not UTF-8 (byte {e.start})", _line_at(data, e.start)) from None
    try:
        return json.loads(text), text
    except json.JSONDecodeError as e:
        hint = "" if text.rstrip().endswith(("}", "]")) else " (truncated?)"
        raise TapeFileError(path, f"column {e.colno}: invalid JSON: {e.msg}{hint}", e.lineno) from None
    except RecursionError:
        raise TapeFileError(path, "JSON nested too deeply") from None


def _field_line(text: str, name: str) -> int | None:
    i = text.find(f'"{name}":')
    return _line_at(text, i) if i >= 0 else None


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _read_entry(kdir: Path, efile: Path, stem: str, request: dict) -> tuple[TapeEntry, str]:
    doc, text = _load_json(efile)

    def bad(name: str | None, message: str) -> TapeFileError:
        return TapeFileError(efile, message, _field_line(text, name) if name else 1)

    if not isinstance(doc, dict):
        raise bad(None, "an entry file holds a JSON object")
    missing = [f for f in ENTRY_FIELDS if f not in doc]
    unknown = sorted(set(doc) - set(ENTRY_FIELDS))
    if missing:
        raise bad(None, f"missing field(s) {', '.join(missing)}")
    if unknown:
        raise bad(unknown[0], f"unknown field(s) {', '.join(unknown)}")
    for name in ("key", "fingerprint", "endpoint", "model", "namespace", "format"):
        if not isinstance(doc[name], str):
            raise bad(name, f"{name} must be a string")
    if doc["key"] != kdir.name:
        raise bad("key", f"key {doc['key'][:16]!r}… is not the directory's key {kdir.name[:16]}…")
    if not doc["fingerprint"] or file_stem(doc["fingerprint"]) != stem:
        raise bad("fingerprint", f"fingerprint {doc['fingerprint']!r} belongs in {file_stem(doc['fingerprint'])}.entry.json, "
                                 f"not {efile.name}")
    if doc["format"] not in ("json", "sse"):
        raise bad("format", f"format {doc['format']!r} is not json or sse")
    if not _is_int(doc["status"]) or not 100 <= doc["status"] <= 599:
        raise bad("status", f"status {doc['status']!r} is not an HTTP status")
    h = doc["headers"]
    if not isinstance(h, list) or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in h):
        raise bad("headers", "headers must be a list of [name, value] string pairs")
    times = {}
    for name in ("recorded_at", "first_recorded_at"):
        try:
            times[name] = parse_time(doc[name])
        except ValueError as e:
            raise bad(name, f"{name}: {e}") from None
    if not _is_int(doc["times_recorded"]) or doc["times_recorded"] < 0:
        raise bad("times_recorded", "times_recorded must be a count")
    ms = doc["upstream_ms"]
    if ms is not None and (isinstance(ms, bool) or not isinstance(ms, (int, float))):
        raise bad("upstream_ms", "upstream_ms must be a number or null")
    if not isinstance(doc["extra"], dict):
        raise bad("extra", "extra must be an object")

    b = doc["body"]
    if not (isinstance(b, dict) and set(b) == {"file", "sha256", "size"} and isinstance(b["file"], str)
            and isinstance(b["sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", b["sha256"]) and _is_int(b["size"])):
        raise bad("body", 'body must be {"file": NAME, "sha256": 64 hex digits, "size": bytes}')
    m = _BODY_FILE.fullmatch(b["file"])
    kinds = ("json", "bin") if doc["format"] == "json" else ("sse", "bin")
    if not m or m.group(1) != stem or m.group(2) not in kinds:
        raise bad("file", f"body file {b['file']!r} should be {stem}.body.{' or .'.join(kinds)}")
    bfile = kdir / b["file"]
    try:
        body = bfile.read_bytes()
    except OSError as e:
        raise TapeFileError(bfile, f"the body of {efile.name} cannot be read ({e.strerror})") from None
    if len(body) != b["size"] or hashlib.sha256(body).hexdigest() != b["sha256"]:
        if len(body) < b["size"]:
            lines = body.count(b"\n") + (0 if body.endswith(b"\n") else 1)
            what = f"truncated: {len(body)} bytes (it ends in line {lines}), but"
        else:
            what = f"damaged: its {len(body)} bytes have sha256 {hashlib.sha256(body).hexdigest()[:12]}…, but"
        raise TapeFileError(bfile, f"{what} {efile.name} line {_field_line(text, 'sha256')} records {b['size']} bytes with "
                                   f"sha256 {b['sha256'][:12]}… (edited, or line ends converted by git? "
                                   f"keep the {GITATTRIBUTES} export writes)")

    headers = [p for p in h if not scrub.is_secret_header(p[0])]
    entry = TapeEntry(
        key=doc["key"], fingerprint=doc["fingerprint"], endpoint=doc["endpoint"], request=request,
        status=doc["status"], headers=headers, body=body, format=doc["format"], model=doc["model"],
        namespace=doc["namespace"], recorded_at=times["recorded_at"], first_recorded_at=times["first_recorded_at"],
        times_recorded=doc["times_recorded"], upstream_ms=ms, extra=doc["extra"],
    )
    return entry, b["file"]


def load(path: str | os.PathLike) -> list[TapeEntry]:
    """Read and check a whole tape directory; TapeFileError names the first bad file (and line)."""
    root = Path(path)
    if not root.is_dir():
        raise TapeFileError(root, "no such tape directory: export one with `seedtape export`")
    if not (root / MARKER).is_file():
        raise TapeFileError(root, f"not a seedtape tape directory (no {MARKER}): export one with `seedtape export`")
    _check_marker(root)
    for prefix in sorted(root.iterdir()):
        if prefix.is_dir() and _PREFIX.fullmatch(prefix.name):
            for k in prefix.iterdir():
                if k.is_dir() and _KEY.fullmatch(k.name) and not k.name.startswith(prefix.name):
                    raise TapeFileError(k, f"a key directory belongs under {k.name[:2]}/, not {prefix.name}/")
    out: list[TapeEntry] = []
    for kdir in _key_dirs(root):
        names = sorted(f.name for f in kdir.iterdir() if f.is_file())
        stems = [m.group(1) for n in names if (m := _ENTRY_FILE.fullmatch(n))]
        bodies = {n for n in names if _BODY_FILE.fullmatch(n)}
        if REQUEST not in names:
            if stems or bodies:
                raise TapeFileError(kdir, f"has tape files but no {REQUEST}")
            continue
        if not stems:
            raise TapeFileError(kdir / REQUEST, "no entry file (<fingerprint>.entry.json) beside it: "
                                                "restore one, or delete the directory")
        request, _ = _load_json(kdir / REQUEST)
        if not isinstance(request, dict):
            raise TapeFileError(kdir / REQUEST, "the canonical request must be a JSON object", 1)
        used = set()
        for stem in stems:
            entry, bname = _read_entry(kdir, kdir / f"{stem}.entry.json", stem, request)
            out.append(entry)
            used.add(bname)
        for orphan in sorted(bodies - used):
            raise TapeFileError(kdir / orphan, "no entry file refers to this body: restore its entry file or delete it")
    out.sort(key=lambda e: (e.key, e.fingerprint))
    return out


def merge(store: Store, entries: list[TapeEntry], path: str | os.PathLike = "") -> ImportResult:
    """Merge checked entries into the store in one transaction (see Store.merge for who wins)."""
    outcomes = store.merge(entries)
    result = ImportResult(path=Path(path), keys=len({e.key for e in entries}), entries=len(entries))
    for e, what in zip(entries, outcomes):
        setattr(result, what, getattr(result, what) + 1)
        result.outcomes[(e.key, e.fingerprint)] = what
    return result


def import_(store: Store, path: str | os.PathLike) -> ImportResult:
    """Check every file under ``path``, then merge its entries into ``store``; TapeFileError imports nothing."""
    return merge(store, load(path), path)
