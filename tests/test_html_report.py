"""The HTML audit report: what it says (verdicts, --fail-on outcome, the first difference), that it
escapes what it shows and loads nothing, and that a real headless Chromium renders it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import chat, client

from seedtape.cli import htmlreport
from seedtape.proxy.audit import divergence
from seedtape.proxy.audit.sampler import AuditReport, RequestReport, Sample
from seedtape.pytest_plugin import in_ci

RECORDED_TEXT = "alpha bravo charlie delta echo"
HOSTILE = 'alpha bravo <script>alert("pwned")</script> "quoted" & more'


def choice(content: str, finish: str = "stop") -> list[dict]:
    return [{"index": 0, "content": content, "refusal": None, "tool_calls": [], "finish_reason": finish}]


def sample(recorded: list[dict], live: list[dict], fp: str, recorded_fp: str = "fp_1", t: float = 1_800_000_100.0) -> Sample:
    d = divergence.compare(recorded, recorded_fp, live, fp)
    return Sample(fingerprint=fp, verdict=d.verdict, similarity=d.similarity, first_difference=d.departure, output=live, time=t)


def request(key: str, prompt: str, recorded: list[dict], samples: list[Sample]) -> RequestReport:
    good = [s for s in samples if not s.error]
    verdicts: dict[str, int] = {}
    for s in good:
        verdicts[s.verdict] = verdicts.get(s.verdict, 0) + 1
    return RequestReport(
        key=key,
        model="gpt-4o-mini",
        endpoint="chat",
        prompt=prompt,
        recorded_fingerprint="fp_1",
        recorded_at=1_800_000_000.0,
        samples=samples,
        fingerprints_seen=sorted({s.fingerprint for s in good}),
        verdicts=verdicts,
        identical=sum(s.output == recorded for s in good),
        identical_share=sum(s.output == recorded for s in good) / len(good) if good else None,
        mean_similarity_to_recording=sum(s.similarity or 0 for s in good) / len(good) if good else None,
        errors=len(samples) - len(good),
        recorded_output=recorded,
    )


def hand_report() -> AuditReport:
    """Three requests: all match; drift in 2 of 3 samples (one of them hostile text); one error and nondeterminism."""
    rec = choice(RECORDED_TEXT)
    same = request("a" * 64, "the same", rec, [sample(rec, rec, "fp_1") for _ in range(3)])
    drifted = request(
        'b"><img src=x onerror=alert(1)>' + "b" * 30,
        "<b>hostile prompt</b>",
        rec,
        [sample(rec, choice(HOSTILE), "fp_2<i>"), sample(rec, choice("alpha bravo zulu"), "fp_2<i>"), sample(rec, rec, "fp_1")],
    )
    noisy = request(
        "c" * 64,
        "noisy",
        rec,
        [sample(rec, choice(RECORDED_TEXT + " foxtrot"), "fp_1"), Sample(error="upstream answered 503: <overloaded>", attempts=5)],
    )
    reqs = [same, drifted, noisy]
    good = [s for r in reqs for s in r.samples if not s.error]
    shares = {v: round(sum(s.verdict == v for s in good) / len(good), 6) for v in divergence.VERDICTS}
    return AuditReport(
        upstream="https://api.example.test",
        repeats=3,
        started=1_800_000_050.0,
        finished=1_800_000_200.0,
        requests=reqs,
        samples=sum(len(r.samples) for r in reqs),
        errors=1,
        verdict_shares=shares,
        identical_share=4 / 7,
        mean_similarity_to_recording=0.8,
    )


def html_of(thresholds: dict[str, float] | None = None) -> str:
    return htmlreport.render(hand_report(), [], thresholds)


def row_of(html: str, key_start: str) -> str:
    [row] = [r for r in re.findall(r"<tr>.*?</tr>", html, re.S) if f"<code class='key'>{key_start}" in r]
    return row


# -- render() ---------------------------------------------------------------------------------------


def test_verdict_column_names_the_worst_verdict_with_counts_and_errors():
    html = html_of()
    assert "<th>verdict</th>" in html
    assert 'class="badge v-match">match 3/3<' in row_of(html, "aaaa")
    drifted = row_of(html, "b&quot;&gt;&lt;img")
    assert 'class="badge v-drift">drift 2/3<' in drifted and "match 1/3" in drifted
    noisy = row_of(html, "cccc")
    assert 'class="badge v-nondeterminism">nondeterminism 1/2<' in noisy
    assert 'class="badge v-error">error 1/2<' in noisy and "upstream answered 503: &lt;overloaded&gt;" in noisy


def test_outcome_heads_the_page():
    def line(html: str) -> str:
        return re.search(r'<div class="outcome (\w+)" id="outcome">(.*?)</div>', html).group(0)

    failed = line(html_of({"drift": 0.0, "nondeterminism": 0.5}))
    assert 'outcome failed"' in failed and "FAILED: drift: 28.6% of samples &gt; 0.0%" in failed
    assert "nondeterminism" not in failed  # 14.3% is within 50%: only what failed is listed
    passed = line(html_of({"drift": 0.5, "nondeterminism": 0.2}))
    assert 'outcome passed"' in passed and "PASSED: drift 28.6% ≤ 50.0%, nondeterminism 14.3% ≤ 20.0%" in passed
    assert "no --fail-on thresholds" in line(html_of())
    html = html_of({"drift": 0.0})
    assert html.index('id="outcome"') < html.index("similarity-chart")  # at the top


def test_outcome_when_no_sample_got_an_answer():
    report = AuditReport(upstream="u", repeats=1, started=0.0, samples=1, errors=1)
    report.requests = [RequestReport("k", "m", "chat", "p", "fp", 0.0, samples=[Sample(error="refused")], errors=1)]
    assert htmlreport.outcome(report, {"drift": 0.0}) == ("failed", "NOTHING AUDITED: no sample got a live answer (exit status 2)")


def test_changed_requests_show_recorded_and_live_with_the_first_difference_marked():
    html = html_of()
    sections = re.findall(r'<section class="diverged" id="diff-([\w-]+)">(.*?)</section>', html, re.S)
    assert len(sections) == 2 and "bbbbbbbbbb" in sections[0][1] and "cccccccccc" in sections[1][1]  # not "aaa..."
    drift = sections[0][1]
    assert "2 of 3 samples differ from the recording; below, sample 1" in drift
    assert "First difference at <code>[0].content</code> (choice 0, field <code>content</code>), token 4" in drift
    assert "recorded <code>&quot;charlie&quot;</code>, live <code>&quot;&lt;&quot;</code>" in drift
    assert "recorded (the text ends), live <code>&quot; &quot;</code>" in html
    recorded, live = re.findall(r'<pre class="out">(.*?)</pre>', drift, re.S)
    assert recorded == "alpha bravo <mark>charlie</mark> delta echo"
    assert live.startswith("alpha bravo <mark>&lt;</mark>script&gt;alert(&quot;pwned&quot;)")
    assert "finish_reason: <code>stop</code>" in drift
    noisy = sections[1][1]
    assert re.findall(r'<pre class="out">(.*?)</pre>', noisy, re.S) == [
        RECORDED_TEXT + "<mark>⟨end⟩</mark>",  # the recording ends where the live answer goes on
        RECORDED_TEXT + "<mark> foxtrot</mark>",  # a differing space is marked with the word after it
    ]
    assert f'href="#diff-{sections[1][0]}"' in row_of(html, "cccc")  # the table links to the details


def test_a_difference_outside_the_text_marks_the_whole_field():
    rec, live = choice("same", "stop"), choice("same", "length")
    rr = request("k" * 64, "p", rec, [sample(rec, live, "fp_1")])
    report = AuditReport(upstream="u", repeats=1, started=0.0, requests=[rr], samples=1, verdict_shares={"nondeterminism": 1.0})
    html = htmlreport.render(report, [])
    assert "finish_reason: <code><mark>stop</mark></code>" in html
    assert "finish_reason: <code><mark>length</mark></code>" in html
    assert "First difference at <code>[0].finish_reason</code>" in html


def test_a_missing_choice_and_a_tool_call_are_marked():
    def section(rec: list[dict], live: list[dict]) -> str:
        rr = request("k" * 64, "p", rec, [sample(rec, live, "fp_1")])
        report = AuditReport(upstream="u", repeats=1, started=0.0, requests=[rr], samples=1, verdict_shares={"drift": 1.0})
        return re.search(r'<section class="diverged".*?</section>', htmlreport.render(report, []), re.S).group(0)

    two = [*choice("one"), {"index": 1, "content": "two", "refusal": None, "tool_calls": [], "finish_reason": "stop"}]
    html = section(two, choice("one"))
    assert "First difference at <code>[1]</code> (choice 1, the whole choice)" in html
    assert '<b>choice 1</b></div><pre class="out"><mark>{&quot;index&quot;: 1, &quot;content&quot;: &quot;two&quot;' in html
    assert "<b>choice 1</b>: <mark>(absent)</mark>" in html
    call = [{"index": 0, "content": None, "refusal": None, "tool_calls": [["get", '{"a":1}']], "finish_reason": "tool_calls"}]
    html = section(call, [call[0] | {"tool_calls": [["get", '{"a":2}']]}])
    assert "(choice 0, field <code>tool_calls[0][1]</code>)" in html
    assert "tool_calls: <code><mark>[[&quot;get&quot;, &quot;{\\&quot;a\\&quot;:2}&quot;]]</mark></code>" in html


def test_long_text_is_cut_around_the_difference():
    text = "word " * 2000
    marked = htmlreport._marked(text + "end", len(text), "end")
    assert marked.startswith("…") and marked.endswith("<mark>end</mark>") and len(marked) < 800
    assert htmlreport._marked("short", 99, "x") == "<mark>short</mark>"  # offsets that do not fit: all of it


def test_everything_from_the_store_is_escaped():
    html = html_of()
    assert html.count("<script") == 1  # the JSON data block only
    for raw in ("<img", "<b>hostile", "<i>", 'alert("pwned")', "<overloaded>"):
        assert raw not in html.replace("\\u003c", ""), raw
    data = json.loads(re.search(r'id="seedtape-audit-data">(.*?)</script>', html, re.S).group(1))
    assert data["report"]["requests"][1]["samples"][0]["output"][0]["content"] == HOSTILE
    assert data["report"]["requests"][1]["recorded_output"][0]["content"] == RECORDED_TEXT


def test_self_contained_nothing_to_load_and_print_rules():
    html = html_of()
    assert set(re.findall(r"https?://[^\s<\"'\\]*", html)) == {"https://api.example.test"}  # the upstream, as text
    assert "<code>https://api.example.test</code>" in html
    assert_loads_nothing(html)
    assert re.findall(r'href="(.)', html) == ["#", "#"]  # links stay in the page
    assert "@media print" in html and "print-color-adjust:exact" in html
    assert "<details" not in html and ":hover" not in html and "<title>" not in html.split("</title>", 1)[1]


class Tags(HTMLParser):
    """Every element and attribute of a page, as a browser's parser sees them (text is not a tag)."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def assert_loads_nothing(html: str) -> None:
    """No element fetches anything: no src, no foreign links, no embedded frames, no CSS url() or @import."""
    tags = Tags(html).tags
    assert {t for t, _ in tags} & {"img", "link", "iframe", "object", "embed", "base", "audio", "video", "form"} == set()
    attrs = {name: v for _, a in tags for name, v in a.items()}
    assert attrs.keys() & {"src", "srcset", "action", "xlink:href", "background", "poster", "style"} == set()
    assert all((v or "").startswith("#") for _, a in tags for name, v in a.items() if name == "href")
    assert [a for t, a in tags if t == "script"] == [{"type": "application/json", "id": "seedtape-audit-data"}]
    assert "url(" not in html.split("</style>")[0] and "@import" not in html


def test_charts_have_an_axis_and_values_as_text():
    html = html_of()
    chart = re.search(r'<svg class="chart" id="similarity-chart".*?</svg>', html, re.S).group(0)
    ticks = re.findall(r'text-anchor="middle">([\d.]+)</text>', chart)
    assert ticks == ["0", "0.25", "0.5", "0.75", "1"]
    assert chart.count("<line ") == 5 and "mean similarity to the recording (1 = identical)" in chart
    assert ">1.000 match<" in chart and ">0.614 drift<" in chart
    events = [
        {"time": 1_800_000_100.0, "key": "a" * 64, "live_fingerprint": "fp_1", "verdict": "match"},
        {"time": 1_800_000_150.0, "key": "a" * 64, "live_fingerprint": "fp_<2>", "verdict": "drift"},
        {"time": 1_800_000_150.0, "key": "not audited", "live_fingerprint": "fp_x", "verdict": "drift"},
    ]
    page = htmlreport.render(hand_report(), events)
    fp_chart = re.search(r'<svg class="chart" id="fingerprint-chart".*?</svg>', page, re.S).group(0)
    assert "2027-01-15 08:00:00Z" in fp_chart and "2027-01-15 08:02:30Z" in fp_chart  # time labels kept
    table = re.search(r"<table id='fingerprint-table'>.*?</table>", page, re.S).group(0)
    assert "<code>fp_&lt;2&gt;</code></td><td>0</td><td>-</td><td>1</td><td>2027-01-15 08:02:30Z</td>" in table
    assert "<code>fp_1</code></td><td>3</td><td>2027-01-15 08:00:00Z</td><td>1</td>" in table
    assert "fp_x" not in page


def test_json_report_carries_the_recorded_output():
    rr = hand_report().to_json()["requests"][0]
    assert rr["recorded_output"] == choice(RECORDED_TEXT)


# -- a real browser ---------------------------------------------------------------------------------


def browser() -> str:
    """Chromium's path; in CI its absence fails the test (CI installs it: .ci/run), elsewhere it skips."""
    found = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if found:
        return found
    if in_ci():
        pytest.fail("chromium is not installed, and CI must run the browser test (.ci/run installs it)")
    pytest.skip("chromium is not installed (apt-get install chromium): the HTML report is not checked in a browser")


def run_browser(page: Path, work: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on a file, offline (every host name fails to resolve); killed with its children whatever happens."""
    cmd = [
        browser(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={work / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
        page.resolve().as_uri(),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own process group: the renderer and helpers too
        proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def console_messages(stderr: str) -> list[str]:
    """What the page said on its console (an error, an uncaught exception, a resource it failed to load)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def png_pixels(path: Path) -> np.ndarray:
    """Decode an 8-bit RGB or RGBA PNG by hand (no Pillow in the test extra): height x width x channels."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (size,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + size]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + size
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
    bpp = 3 if color == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + width * bpp)
    out = np.zeros((height, width * bpp), dtype=np.uint8)
    prev = np.zeros(width * bpp, dtype=np.int32)
    for y in range(height):
        prev = _unfilter(int(raw[y, 0]), raw[y, 1:].astype(np.int32), prev, bpp)
        out[y] = prev
    return out.reshape(height, width, bpp)


def _unfilter(kind: int, line: np.ndarray, up: np.ndarray, bpp: int) -> np.ndarray:
    """Undo one scanline's PNG filter; None, Sub and Up vectorised, Average and Paeth byte by byte."""
    if kind == 0:
        return line
    if kind == 1:
        return line.reshape(-1, bpp).cumsum(axis=0).ravel() % 256
    if kind == 2:
        return (line + up) % 256
    cur, above = line.tolist(), up.tolist()
    for i in range(len(cur)):
        a = cur[i - bpp] if i >= bpp else 0
        b = above[i]
        if kind == 3:
            cur[i] = (cur[i] + (a + b) // 2) % 256
            continue
        c = above[i - bpp] if i >= bpp else 0
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) % 256
    return np.array(cur, dtype=np.int32)


def near(pixels: np.ndarray, rgb: str, tolerance: int = 12) -> int:
    """How many pixels have this color (#rrggbb)."""
    want = np.array([int(rgb[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int32)
    return int((np.abs(pixels[..., :3].astype(np.int32) - want).max(axis=-1) <= tolerance).sum())


def screenshot(page: Path, work: Path, size: tuple[int, int] = (1200, 2000)) -> tuple[np.ndarray, Path]:
    png = work / "report.png"
    r = run_browser(page, work, f"--screenshot={png}", f"--window-size={size[0]},{size[1]}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert console_messages(r.stderr) == []
    assert png.exists(), r.stderr[-2000:]
    if keep := os.environ.get("SEEDTAPE_KEEP_SCREENSHOT"):
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(keep) / f"{page.stem}.png")
    pixels = png_pixels(png)
    assert pixels.shape[:2] == (size[1], size[0])
    return pixels, png


def assert_not_blank(pixels: np.ndarray) -> None:
    top = pixels[:700, :, :3]
    assert (top.min(axis=-1) < 200).mean() > 0.02, "the top of the page is (nearly) blank"
    assert len(np.unique(top.reshape(-1, 3), axis=0)) > 50, "too few colors for text and charts"


def test_browser_renders_the_hand_built_report_and_runs_nothing(tmp_path):
    page = tmp_path / "hostile.html"
    page.write_text(html_of({"drift": 0.0}), encoding="utf-8")
    pixels, _ = screenshot(page, tmp_path)
    assert_not_blank(pixels)
    assert near(pixels, "#c62828") > 300 and near(pixels, "#ef6c00") > 50  # the drift and nondeterminism colors
    dom = run_browser(page, tmp_path, "--dump-dom").stdout
    assert dom.count("<script") == 1 and "<img" not in dom  # the hostile text stayed text
    assert "FAILED: drift: 28.6% of samples &gt; 0.0%" in dom


# -- end to end: the real proxy records, `seedtape audit --html` writes, Chromium renders ---------------


@pytest.fixture
def recorded_mix(upstream, store, proxies):
    """Two requests recorded with a seed and two without: the fake upstream's noise="unseeded" changes only the latter."""
    p = proxies("--upstream", upstream.url, "--store", store, "--no-seed-injection")
    for i, q in enumerate(["seeded one", "seeded two", "unseeded one", "unseeded two"]):
        extra = {"seed": 7} if i < 2 else {}
        assert chat(client(p), q, **extra).headers["seedtape-status"] == "recorded"
    p.stop()


def audit(store: str, upstream_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "seedtape", "audit", "--store", store, "--upstream", upstream_url, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_audit_html_end_to_end_in_a_browser(upstream, store, recorded_mix, tmp_path):
    upstream.noise = "unseeded"
    r = audit(store, upstream.url, "--repeats", "2")  # nondeterminism on the unseeded: earlier dots in the chart
    assert r.returncode == 0, r.stderr
    upstream.fingerprint = "fp_fake_2"
    page = tmp_path / "audit.html"
    r = audit(store, upstream.url, "--repeats", "3", "--html", str(page), "--fail-on", "drift=0", "--fail-on", "fingerprint-only=1")
    assert r.returncode == 1 and "drift: 50.0% of samples > 0.0%" in r.stderr, r.stdout + r.stderr
    html = page.read_text(encoding="utf-8")
    assert_loads_nothing(html)
    assert 'class="outcome failed" id="outcome">FAILED: drift: 50.0% of samples &gt; 0.0%</div>' in html
    assert html.count('class="badge v-drift">drift 3/3<') == 2
    assert html.count('class="badge v-fingerprint-only">fingerprint-only 3/3<') == 2
    sections = re.findall(r'<section class="diverged".*?</section>', html, re.S)
    assert len(sections) == 2 and all("unseeded" in s for s in sections)
    for s in sections:
        recorded, live = re.findall(r'<pre class="out">(.*?)</pre>', s, re.S)
        assert recorded.endswith("<mark>⟨end⟩</mark>") and re.search(r"<mark> [a-z]+</mark>", live)  # noise appends words
    assert "First difference at <code>[0].content</code>" in sections[0]

    pixels, _ = screenshot(page, tmp_path)
    assert_not_blank(pixels)
    assert near(pixels, "#c62828") > 300  # drift: the outcome border, bars, badges
    assert near(pixels, "#ef6c00") > 20  # the first audit's nondeterminism dots
    assert near(pixels, "#1565c0") > 300  # fingerprint-only
    dom = run_browser(page, tmp_path, "--dump-dom").stdout
    assert "<th>verdict</th>" in dom and "FAILED: drift: 50.0%" in dom and dom.count("<mark>") == 4
