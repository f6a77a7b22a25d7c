"""pytest plugin: offline replay of OpenAI calls from tapes kept in git.

Active for tests marked ``@pytest.mark.seedtape`` (or every test, with
``--seedtape-mode``/``--seedtape-tapes`` on the command line or ``seedtape_tapes``
in the ini file). One proxy serves the whole session; each active test gets
``OPENAI_BASE_URL`` pointing at it, with the marker's mode and namespace
carried in the URL (see seedtape/proxy/routing.py).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from seedtape.proxy.modes import MODE_NAMES
from seedtape.proxy.wire import PLACEHOLDER_API_KEY

_MISS = re.compile(r"seedtape: miss \S+ (\S+) key=(\w+)")
_OUTCOME = re.compile(r"seedtape: (recorded|hit|miss)[ ;]")  # the per-request log lines of the proxy


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("seedtape", "seedtape: record and replay OpenAI calls")
    group.addoption(
        "--seedtape-mode",
        choices=MODE_NAMES,
        default=None,
        help="auto (replay hits, record misses), replay (offline; a miss fails the test), record, "
        "audit or passthrough. Default: replay when the CI environment variable is set, else auto.",
    )
    group.addoption(
        "--seedtape-tapes",
        default=None,
        metavar="PATH",
        help="Directory of tapes (seedtape export format) to replay from and record into. "
        "Default: the seedtape_tapes ini value, else <rootdir>/tapes.",
    )
    group.addoption(
        "--seedtape-upstream",
        default=None,
        metavar="URL",
        help="API to record from (default: $SEEDTAPE_UPSTREAM or https://api.openai.com).",
    )
    group.addoption(
        "--seedtape-strict",
        action="store_true",
        default=False,
        help="Fail the session when a recording in the tapes was used by no test (run the whole suite).",
    )
    group.addoption(
        "--seedtape-repeats",
        choices=("same", "sequence"),
        default=None,
        help="same: identical requests share one recording. sequence: the Nth identical request of a test is its "
        "own recording (best-of-n, votes). Default: the seedtape_repeats ini value, else same.",
    )
    parser.addini("seedtape_tapes", "Directory of seedtape tapes, relative to the rootdir.", default=None)
    parser.addini("seedtape_repeats", "same or sequence (see --seedtape-repeats).", default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "seedtape(mode=None, namespace=None): route this test's OpenAI calls "
        "through seedtape, optionally in another mode or namespace.",
    )


def in_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether CI is set to a true value: ``CI=false`` or ``CI=0`` (set by some tools) mean no."""
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def _mode(config: pytest.Config) -> str:
    return config.getoption("--seedtape-mode") or ("replay" if in_ci() else "auto")


def _enabled_for_all(config: pytest.Config) -> bool:
    return bool(config.getoption("--seedtape-mode") or config.getoption("--seedtape-tapes") or config.getini("seedtape_tapes"))


def _tapes(config: pytest.Config) -> Path:
    opt = config.getoption("--seedtape-tapes") or config.getini("seedtape_tapes") or "tapes"
    path = Path(opt)
    return path if path.is_absolute() else Path(config.rootpath) / path


@pytest.fixture(scope="session")
def seedtape_proxy(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory):
    """The session's seedtape proxy (seedtape.api.Proxy), serving the tapes directory."""
    from seedtape.api import serve

    mode = _mode(pytestconfig)
    hint = (
        "To record it, run this test again with --seedtape-mode=auto (network access and OPENAI_API_KEY "
        "needed): the new recording is written to the tapes directory; commit it."
    )
    args = ["--miss-hint", hint]
    repeats = pytestconfig.getoption("--seedtape-repeats") or pytestconfig.getini("seedtape_repeats") or "same"
    if repeats not in ("same", "sequence"):
        raise pytest.UsageError(f"seedtape_repeats = {repeats!r}: choose same or sequence")
    args += ["--repeats", repeats]
    report = None
    if pytestconfig.getoption("--seedtape-strict"):
        # Under pytest's own temporary directory, which it rotates: the clean-up command needs the
        # report after the session, and nothing is left behind for good.
        report = tmp_path_factory.mktemp("seedtape-strict") / "unused.json"
        args += ["--report-unused", str(report)]
    with serve(mode, tapes=_tapes(pytestconfig), upstream=pytestconfig.getoption("--seedtape-upstream"), args=args) as proxy:
        yield proxy
    pytestconfig.stash[_outcomes] = (mode, _count_outcomes(proxy.lines))
    if report is not None:
        found = _read_unused(report)
        if not found:  # nothing to prune: the report is not needed afterwards
            shutil.rmtree(report.parent, ignore_errors=True)
        pytestconfig.stash[_unused] = (found, report, _tapes(pytestconfig))


@pytest.fixture(autouse=True)
def _seedtape_route(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    marker = request.node.get_closest_marker("seedtape")
    if marker is None and not _enabled_for_all(request.config):
        yield None
        return
    proxy = request.getfixturevalue("seedtape_proxy")
    kw = marker.kwargs if marker else {}
    mode = kw.get("mode") or _mode(request.config)
    if mode not in MODE_NAMES:
        raise pytest.UsageError(f"@pytest.mark.seedtape(mode={mode!r}): choose one of {', '.join(MODE_NAMES)}")
    scope = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]  # --repeats sequence counts per test
    monkeypatch.setenv("OPENAI_BASE_URL", proxy.url(mode, kw.get("namespace"), scope))
    if not os.environ.get("OPENAI_API_KEY"):
        monkeypatch.setenv("OPENAI_API_KEY", PLACEHOLDER_API_KEY)  # replay needs none; the proxy never forwards it
    request.node.stash[_watch] = (proxy, len(proxy.lines))
    yield proxy


_watch = pytest.StashKey[tuple]()
_unused = pytest.StashKey[tuple[list[dict], Path, Path]]()  # (unused entries, report file, tapes directory)
_outcomes = pytest.StashKey[tuple[str, dict[str, int]]]()  # (session mode, {"recorded": n, "hit": n, "miss": n})


def _count_outcomes(lines: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(("recorded", "hit", "miss"), 0)
    for line in lines:
        if m := _OUTCOME.search(line):
            counts[m.group(1)] += 1
    return counts


def _read_unused(report: Path) -> list:
    import json

    try:
        return json.loads(report.read_text())["unused"]
    except (OSError, ValueError, KeyError) as e:
        return [
            {"key": "?", "fingerprint": "?", "path": f"the unused report could not be read: {e}", "model": "", "namespace": ""}
        ]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    found = session.config.stash.get(_unused, None)
    if found and found[0]:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    outcomes = config.stash.get(_outcomes, None)
    if outcomes is not None:
        mode, n = outcomes
        missed = f", {n['miss']} missed" if n["miss"] else ""
        terminalreporter.write_line(f"seedtape ({mode}): {_plural(n['recorded'], 'recording')} made, {n['hit']} replayed{missed}")
    found = config.stash.get(_unused, None)
    if found is None:
        return
    unused, report, tapes = found
    tr = terminalreporter
    if not unused:
        tr.write_line("seedtape strict: every recording in the tapes was used")
        return
    tr.section("seedtape strict: recordings no test used", red=True)
    for e in unused:
        ns = f" ns={e['namespace']}" if e.get("namespace") else ""
        tr.write_line(f"{e['key'][:12]} {e['fingerprint']} {e.get('model', '')} {e.get('path', '')}{ns}")
    tr.write_line(f"{len(unused)} unused (listed in {report}); reported, never deleted. To remove them:")
    st = f"{shlex.quote(sys.executable)} -m seedtape"  # the interpreter running pytest: its venv need not be active
    tr.write_line(
        f'  s="$(mktemp -d)" && {st} import {tapes} --store "$s" && {st} prune --store "$s" '
        f'--unused-in {report} && {st} export {tapes} --store "$s"; rm -rf "$s"'
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    """Strict mode's verdict as the very last line, after pytest's own "2 passed" (which it contradicts)."""
    found = config.stash.get(_unused, None)
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if found and found[0] and tr is not None:
        tr.write_line(
            f"seedtape: the session FAILED (exit status 1): {_plural(len(found[0]), 'recording')} "
            "in the tapes used by no test (--seedtape-strict)",
            red=True,
            bold=True,
        )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test that met replay misses says which, and the exact command that records them."""
    report = yield
    if report.when == "call" and report.failed and _watch in item.stash:
        proxy, start = item.stash[_watch]
        misses = [m.groups() for line in proxy.lines[start:] if (m := _MISS.search(line))]
        if misses:
            lines = [f"replay miss: {path} key={key}" for path, key in misses]
            lines.append(f"To record: pytest --seedtape-mode=auto '{item.nodeid}'  (needs network and OPENAI_API_KEY)")
            report.sections.append(("seedtape", "\n".join(lines)))
    return report
