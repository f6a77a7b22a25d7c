"""The documentation stays true: README.md and docs/*.md.

1. Every relative link points to a file that exists, and an anchor (``page.md#heading``)
   to a heading of that page.
2. README.md keeps its two set-up commands (`./dev serve`, `./dev test`): CI runs the
   README's test command.
3. The examples marked with an HTML comment right before their fence run, offline, against
   a small store built here, and print what the docs show (docs/development.md, "Examples in
   the docs are tested", describes the markers):

   - ``<!-- doc-test -->``: a block of ``$ seedtape ...`` lines, each followed by its output;
   - ``<!-- doc-test: exit=N -->``: the same, for commands that exit with status N;
   - ``<!-- doc-test: file=NAME -->``: the block's text is written to NAME for later commands.

   The blocks of one page run in order in one fresh directory. Output is matched loosely:
   ``...`` is any text in a line (a line of only ``...``: any number of lines), runs of
   spaces match runs of spaces, 12+ hex digits (a key) match any such run, and a time
   ``2025-01-15 09:30:00Z`` matches any time.
4. Every ``seedtape COMMAND`` / ``./dev COMMAND`` the docs name in code exists, and every
   `seedtape serve` option has exactly one row in docs/options.md.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS_DIR = ROOT / "docs"
PAGES = [README, *sorted(DOCS_DIR.glob("*.md"))]

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
MARKER = re.compile(r"^<!--\s*doc-test(?::\s*(.*?))?\s*-->$")
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# a command where one starts: a line or inline code span, after `$ `, `&&`, `|`, `;` or VAR=value
COMMAND_NAMED = re.compile(r"(?:^|&&|\|\||[|;])\s*(?:\$\s+)?(?:[A-Z_][A-Z0-9_]*=\S*\s+)*"
                           r"(seedtape|\./dev)[ \t]+([a-z][a-z0-9-]*)", re.M)
DEV_COMMANDS = {"serve", "test", "bench", "help"}  # ./dev's own; the rest are seedtape commands


# -- reading markdown ----------------------------------------------------------------------------


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    info: str
    text: list[str]
    marker: str | None  # the doc-test marker's argument ("" for a bare marker), None when unmarked


@dataclass
class Page:
    path: Path
    blocks: list[Block] = field(default_factory=list)
    prose: list[tuple[int, str]] = field(default_factory=list)  # (line number, line) outside fences


@functools.cache
def read(path: Path) -> Page:
    page = Page(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    last_nonblank = ""
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            page.prose.append((i + 1, lines[i]))
            if lines[i].strip():
                last_nonblank = lines[i].strip()
            i += 1
            continue
        fence, start = m.group(2), i
        marker = MARKER.match(last_nonblank)
        body = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence))
                                      and lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"{path.name}:{start + 1}: a code fence is never closed"
        page.blocks.append(Block(path, start + 1, m.group(3).strip(), body,
                                 (marker.group(1) or "") if marker else None))
        i += 1
        last_nonblank = ""
    return page


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in read(path).prose:
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return frozenset(out)


# -- 1. links ------------------------------------------------------------------------------------


def test_docs_exist():
    assert DOCS_DIR.is_dir() and len(PAGES) > 10, "README.md points to pages under docs/"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_point_to_existing_files(page: Path):
    problems = []
    for lineno, line in read(page).prose:
        line = INLINE_CODE.sub("", line)
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
                continue
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            where = f"{rel(page)}:{lineno}: {target}"
            if not dest.exists():
                problems.append(f"{where}: no such file")
            elif not dest.resolve().is_relative_to(ROOT):
                problems.append(f"{where}: outside the repository")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where}: no heading #{anchor} in {rel(dest)} (has: {', '.join(sorted(anchors(dest)))})")
    assert not problems, "\n".join(problems)


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve()
              for _, line in read(README).prose for t in LINK.findall(line)}
    missing = [rel(p) for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"README.md does not link to: {missing}"


# -- 2. the set-up commands ----------------------------------------------------------------------


def test_readme_keeps_the_two_setup_commands():
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Set-up: two commands\n(.*?)(?=^## )", text, re.M | re.S)
    assert section, 'README.md lost its "## Set-up: two commands" section'
    commands = [line.split("#")[0].strip() for b in read(README).blocks
                if section.start() <= text.find("\n".join(b.text)) < section.end() for line in b.text]
    assert "./dev serve" in commands, "README.md's set-up must show `./dev serve`"
    assert "./dev test" in commands, "README.md's set-up must show `./dev test` (CI runs it)"


# -- 4. commands and options named in the docs ---------------------------------------------------


def seedtape_cli(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEEDTAPE_")}
    env.update(COLUMNS="80", PYTHONUTF8="1", PYTHONIOENCODING="utf-8", NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "seedtape", *args], cwd=cwd or ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@functools.cache
def seedtape_commands() -> frozenset[str]:
    r = seedtape_cli("--help")
    assert r.returncode == 0, r.stderr
    listing = r.stdout.split("Commands:", 1)[1]
    return frozenset(m.group(1) for m in re.finditer(r"^  ([a-z][a-z0-9-]*)\s", listing, re.M))


def code_text(page: Page) -> list[tuple[int, str]]:
    """(line, text) of everything in code: fenced blocks and inline code spans."""
    out = [(b.line + 1 + i, line) for b in page.blocks for i, line in enumerate(b.text)]
    for lineno, line in page.prose:
        out += [(lineno, m.group(2)) for m in INLINE_CODE.finditer(line)]
    return out


def test_help_lists_the_commands():
    assert {"serve", "ls", "show", "stats", "explain", "diff", "export", "import", "prune", "audit", "events"} <= \
        seedtape_commands()


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_command_named_exists(page: Path):
    known = seedtape_commands()
    problems = []
    for lineno, text in code_text(read(page)):
        for prog, cmd in COMMAND_NAMED.findall(text):
            if cmd not in known and not (prog == "./dev" and cmd in DEV_COMMANDS):
                problems.append(f"{rel(page)}:{lineno}: `{prog} {cmd}` is no command ({text.strip()})")
    assert not problems, "\n".join(problems) + f"\nseedtape's commands: {sorted(known)}"


def test_options_page_has_one_row_per_serve_option():
    import click

    from seedtape.cli.main import cli

    serve = cli.commands["serve"]
    flags = {max(p.opts, key=len) for p in serve.params if isinstance(p, click.Option) and "--help" not in p.opts}
    rows = re.findall(r"^\| `(--[a-z][a-z0-9-]*)(?: [A-Z]+)?` \|([^|\n]*)\|([^|\n]*)\|\s*$",
                      (DOCS_DIR / "options.md").read_text(encoding="utf-8"), re.M)
    documented = [r[0] for r in rows]
    assert sorted(set(documented)) == sorted(documented), "an option has two rows in docs/options.md"
    assert not flags - set(documented), f"docs/options.md has no row for {sorted(flags - set(documented))}"
    assert not set(documented) - flags, f"docs/options.md documents {sorted(set(documented) - flags)}, " \
                                        "which `seedtape serve` does not have"


# -- 3. the marked examples ----------------------------------------------------------------------

T0 = datetime(2025, 1, 15, 9, 30, tzinfo=UTC).timestamp()
FP = "fp_44709d6fcb"


def build_demo_store(path: Path) -> None:
    """The two recordings of docs/misses.md: a weather question (JSON) and a haiku (a stream)."""
    from seedtape.proxy.key.canonical import canonicalize
    from seedtape.proxy.tapes.entry import TapeEntry
    from seedtape.proxy.tapes.store import Store

    def chunk(delta: dict, finish: str | None = None) -> str:
        return "data: " + json.dumps({
            "id": "chatcmpl-2", "object": "chat.completion.chunk", "created": int(T0) + 60, "model": "gpt-4o",
            "system_fingerprint": FP, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }, separators=(",", ":")) + "\n\n"

    weather = {"model": "gpt-4o", "temperature": 0.7,
               "messages": [{"role": "user", "content": "What will the weather be like in Paris tomorrow?"}],
               "seed": 1234}
    haiku = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Write a haiku about the sea"}], "seed": 1234}
    answer = json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": int(T0), "model": "gpt-4o",
        "system_fingerprint": FP,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sunny and mild."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 16, "completion_tokens": 4, "total_tokens": 20},
    }, indent=2).encode()
    stream = (chunk({"role": "assistant", "content": ""})
              + "".join(chunk({"content": w}) for w in ("Waves", " fold", " into", " foam"))
              + chunk({}, "stop") + "data: [DONE]\n\n").encode()
    with Store(str(path)) as st:
        for body, fmt, data, at, ctype in ((weather, "json", answer, T0, "application/json"),
                                          (haiku, "sse", stream, T0 + 60, "text/event-stream")):
            c = canonicalize("POST", "/v1/chat/completions", "", body)
            st.put(TapeEntry(key=c.key, fingerprint=FP, endpoint="chat.completions", request=c.to_json(), status=200,
                             headers=[["content-type", ctype], ["x-request-id", "req_1"]], body=data, format=fmt,
                             model="gpt-4o", recorded_at=at, first_recorded_at=at,
                             extra={"gaps": [], "include_usage": False} if fmt == "sse" else {}))


def marked(page: Path) -> list[Block]:
    return [b for b in read(page).blocks if b.marker is not None]


MARKED_PAGES = [p for p in PAGES if marked(p)]

_TOKEN = re.compile(r"(?P<any>\.\.\.)|(?P<time>\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d+)?Z)"
                    r"|(?P<hex>(?<![0-9A-Za-z_])[0-9a-f]{12,}(?![0-9A-Za-z_]))|(?P<space> +)")
_SUBST = {"any": ".*", "time": r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d+)?Z", "hex": "[0-9a-f]{12,}", "space": " +"}


def line_pattern(expected: str) -> re.Pattern:
    out, pos = [], 0
    for m in _TOKEN.finditer(expected):
        out.append(re.escape(expected[pos:m.start()]))
        out.append(_SUBST[m.lastgroup])
        pos = m.end()
    out.append(re.escape(expected[pos:]))
    return re.compile("".join(out))


def output_matches(expected: list[str], actual: list[str]) -> bool:
    patterns = [None if e.strip() == "..." else line_pattern(e) for e in expected]

    @functools.cache
    def match(i: int, j: int) -> bool:
        if i == len(patterns):
            return j == len(actual)
        if patterns[i] is None:
            return any(match(i + 1, k) for k in range(j, len(actual) + 1))
        return j < len(actual) and patterns[i].fullmatch(actual[j]) is not None and match(i + 1, j + 1)

    return match(0, 0)


def trimmed(lines: list[str]) -> list[str]:
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def parse_marker(block: Block) -> dict[str, str]:
    args = dict(a.split("=", 1) for a in block.marker.split()) if block.marker else {}
    unknown = set(args) - {"exit", "file"}
    assert not unknown, f"{rel(block.page)}:{block.line}: unknown doc-test argument(s) {sorted(unknown)}"
    return args


def commands_of(block: Block) -> list[tuple[str, list[str]]]:
    """[(command line, expected output lines)] of a block of `$ seedtape ...` lines and their output."""
    where = f"{rel(block.page)}:{block.line}"
    assert block.text and block.text[0].startswith("$ "), f"{where}: a doc-test block starts with `$ seedtape ...`"
    out: list[tuple[str, list[str]]] = []
    for line in block.text:
        if line.startswith("$ "):
            assert line[2:].startswith("seedtape "), f"{where}: doc-test commands are `$ seedtape ...`: {line}"
            out.append((line[2:], []))
        else:
            out[-1][1].append(line)
    return out


@pytest.mark.parametrize("page", MARKED_PAGES, ids=rel)
def test_marked_examples_run(page: Path, tmp_path: Path):
    build_demo_store(tmp_path / ".seedtape")
    for block in marked(page):
        args = parse_marker(block)
        if "file" in args:
            name = args["file"]
            assert "/" not in name and name not in (".", ".."), f"{rel(page)}:{block.line}: file={name}"
            (tmp_path / name).write_text("\n".join(block.text) + "\n", encoding="utf-8")
            continue
        for command, expected in commands_of(block):
            r = seedtape_cli(*shlex.split(command)[1:], cwd=tmp_path)
            actual = trimmed((r.stdout + r.stderr).replace("python -m seedtape", "seedtape").splitlines())
            shown = "\n".join(actual)
            assert r.returncode == int(args.get("exit", 0)), \
                f"{rel(page)}:{block.line}: `{command}` exited {r.returncode}, the docs expect " \
                f"{args.get('exit', 0)}:\n{shown}"
            assert output_matches(trimmed(expected), actual), \
                f"{rel(page)}:{block.line}: `{command}` printed what the docs do not show.\n" \
                f"--- docs:\n" + "\n".join(trimmed(expected)) + f"\n--- printed:\n{shown}"


def test_the_main_commands_have_a_tested_example():
    run = {shlex.split(cmd)[1] for p in MARKED_PAGES for b in marked(p) if "file" not in parse_marker(b)
           for cmd, _ in commands_of(b)}
    missing = {"--help", "ls", "show", "stats", "explain", "diff", "export", "import", "prune"} - run
    assert not missing, f"no doc-test example runs `seedtape {'`, `seedtape '.join(sorted(missing))}`"


# -- the matcher itself --------------------------------------------------------------------------


@pytest.mark.parametrize("expected, actual, ok", [
    (["a ... z"], ["a b c z"], True),
    (["a ... z"], ["a b c"], False),
    (["key 0123456789ab"], ["key 98591f66c099751d93383362f698f8d379f56ff84f2da151fca67fe5968eea85"], True),
    (["key 0123456789ab"], ["key fp_44709d6fcb"], False),
    (["x  y"], ["x y"], True),
    (["at 2025-01-15 09:30:00Z"], ["at 2031-12-01 23:59:59Z"], True),
    (["one", "...", "four"], ["one", "two", "three", "four"], True),
    (["one", "...", "four"], ["one", "four"], True),
    (["one", "four"], ["one", "two", "four"], False),
    (["a.b"], ["axb"], False),
])
def test_output_matcher(expected, actual, ok):
    assert output_matches(expected, actual) is ok
