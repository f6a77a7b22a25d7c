"""A self-contained HTML page for an audit report: inline SVG charts and CSS, no scripts, no network.

It is read as a CI artifact and printed, so nothing hides behind hovering: the
``--fail-on`` outcome heads the page, every request has a verdict, every chart
value is written out, and each request whose answer changed shows the recorded
and the live output with their first difference marked. Everything that came
from the store or the upstream is escaped. The report's data is embedded too
(``<script type="application/json" id="seedtape-audit-data">``), so the page is
both readable and machine-checkable.
"""

from __future__ import annotations

import hashlib
import json
import re
from html import escape

from seedtape.cli.inspection import when
from seedtape.proxy.audit.sampler import AuditReport, RequestReport, Sample, exceeded
from seedtape.proxy.explain import jsondiff

_SEVERITY = ("match", "fingerprint-only", "nondeterminism", "drift")  # worst last
_COLORS = {"match": "#2e7d32", "fingerprint-only": "#1565c0", "nondeterminism": "#ef6c00", "drift": "#c62828"}
_CHANGED = frozenset({"nondeterminism", "drift"})  # verdicts whose output differs from the recording
_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
_FIELDS = ("content", "refusal", "tool_calls", "finish_reason", "embedding")  # display order of an output's fields
_TEXT_WINDOW = (600, 1500)  # characters kept before and after a marked difference in a long text
_SPACED_WORD = re.compile(r"\s+(?:\w+|[^\w\s])?")
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#111}
table{border-collapse:collapse;width:100%}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left;vertical-align:top}
code.key{word-break:break-all;font-size:11px}
.chart{border:1px solid #eee;margin:.5em 0 1em}
.outcome{padding:.6em 1em;font-size:1.25em;font-weight:bold;border:3px solid;margin:1em 0}
.outcome.passed{color:#1b5e20;border-color:#2e7d32;background:#e8f5e9}
.outcome.failed{color:#b71c1c;border-color:#c62828;background:#ffebee}
.outcome.none{color:#333;border-color:#999;background:#f5f5f5}
.badge{display:inline-block;color:#fff;font-weight:bold;padding:1px 6px;border-radius:3px;white-space:nowrap}
.v-match{background:#2e7d32}.v-fingerprint-only{background:#1565c0}.v-nondeterminism{background:#ef6c00}
.v-drift{background:#c62828}.v-error,.v-skipped,.v-other{background:#616161}
.also{font-size:12px;color:#333;white-space:nowrap}
.error{color:#b71c1c;font-size:12px}
.diverged{border:1px solid #bbb;padding:.3em 1em .8em;margin:1em 0}
.sides{display:grid;grid-template-columns:1fr 1fr;gap:1em}
.sides h4{margin:.4em 0}
pre.out{white-space:pre-wrap;overflow-wrap:anywhere;background:#fafafa;border:1px solid #ddd;padding:.5em;font-size:12px;margin:.2em 0}
.meta{font-size:12px;margin:.2em 0}
mark{background:#ffeb3b;outline:2px solid #c62828;font-weight:bold}
@media print{
body{margin:0;max-width:none;font-size:10pt}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}
.diverged,tr,.chart,.outcome{break-inside:avoid}
h2,h3{break-after:avoid}
a{color:inherit;text-decoration:none}
}
"""


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _badge(verdict: str, text: str = "") -> str:
    """A verdict as colored text: the color for the eye, the word for print and for anyone who cannot tell colors."""
    cls = verdict if verdict in _COLORS or verdict in ("error", "skipped") else "other"
    return f'<span class="badge v-{cls}">{escape(text or verdict)}</span>'


def worst(verdicts: dict[str, int]) -> str:
    """The most serious verdict among a request's samples ('' when none was compared)."""
    known = [v for v in verdicts if v in _SEVERITY]
    return max(known, key=_SEVERITY.index) if known else ""


def outcome(report: AuditReport, thresholds: dict[str, float]) -> tuple[str, str]:
    """The --fail-on result as (css class, sentence), decided as `seedtape audit` decides its exit status."""
    if report.errors == report.samples:
        return "failed", "NOTHING AUDITED: no sample got a live answer (exit status 2)"
    if not thresholds:
        return "none", "no --fail-on thresholds: this audit passes or fails nothing"
    reasons = exceeded(report, thresholds)
    if reasons:
        return "failed", "FAILED: " + "; ".join(reasons)
    limits = ", ".join(f"{v} {_pct(report.verdict_shares.get(v, 0.0))} ≤ {_pct(t)}" for v, t in thresholds.items())
    return "passed", f"PASSED: {limits} (share of samples)"


def _verdict_cell(rr: RequestReport) -> str:
    """The worst verdict with its count, the other verdicts, and the errors with the first one's message."""
    if rr.skipped:
        return f'{_badge("skipped")}<div class="error">{escape(rr.skipped)}</div>'
    n = len(rr.samples)
    top = worst(rr.verdicts)
    parts = [_badge(top, f"{top} {rr.verdicts[top]}/{n}")] if top else []
    others = [f"{escape(v)} {c}/{n}" for v, c in sorted(rr.verdicts.items(), key=lambda vc: -_rank(vc[0])) if v != top]
    if others:
        parts.append(f'<div class="also">{", ".join(others)}</div>')
    if rr.errors:
        first = next(s.error for s in rr.samples if s.error)
        parts.append(f'{_badge("error", f"error {rr.errors}/{n}")}<div class="error">{escape(first[:300])}</div>')
    if _changed_sample(rr) is not None:
        parts.append(f'<div class="also"><a href="#diff-{_anchor(rr.key)}">recorded vs live below</a></div>')
    return "".join(parts)


def _rank(verdict: str) -> int:
    return _SEVERITY.index(verdict) if verdict in _SEVERITY else -1


def _anchor(key: str) -> str:
    """An id for a request's details, unique per key whatever characters the key holds."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _similarity_chart(report: AuditReport) -> str:
    """Horizontal bars of mean similarity on a 0..1 axis, each labelled with its value and verdict."""
    rows = report.requests
    bar_w, row_h, left, top = 420, 22, 110, 8
    plot_h = row_h * len(rows)
    height = top + plot_h + 40
    out = [
        f'<svg class="chart" id="similarity-chart" width="{left + bar_w + 190}" height="{height}" role="img" '
        f'aria-label="mean similarity to the recording per request">'
    ]
    for t in _TICKS:
        x = left + t * bar_w
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h + 4}" stroke="#ccc" stroke-width="1"/>')
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 18}" font-size="11" text-anchor="middle">{t:g}</text>')
    out.append(
        f'<text x="{left + bar_w / 2:.1f}" y="{top + plot_h + 34}" font-size="11" text-anchor="middle">'
        "mean similarity to the recording (1 = identical)</text>"
    )
    for i, rr in enumerate(rows):
        y = top + i * row_h + 3
        sim = rr.mean_similarity_to_recording
        w = 0 if sim is None else max(1, round(sim * bar_w))
        verdict = worst(rr.verdicts)
        out.append(f'<text x="0" y="{y + 12}" font-family="monospace" font-size="12">{escape(rr.key[:12])}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{w}" height="{row_h - 6}" fill="{_COLORS.get(verdict, "#777")}"/>')
        label = "no samples" if sim is None else f"{sim:.3f} {verdict}"
        out.append(f'<text x="{left + w + 6}" y="{y + 12}" font-size="12">{escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def fingerprint_points(report: AuditReport, events: list[dict]) -> list[dict]:
    """A point per recording of an audited request and per stored audit event about one."""
    keys = {rr.key for rr in report.requests}
    points = [
        {"kind": "recorded", "time": rr.recorded_at, "fingerprint": rr.recorded_fingerprint, "key": rr.key}
        for rr in report.requests
    ]
    points += [
        {
            "kind": "sample",
            "time": e.get("time") or 0.0,
            "fingerprint": str(e.get("live_fingerprint") or ""),
            "key": e.get("key"),
            "verdict": str(e.get("verdict") or ""),
        }
        for e in events
        if e.get("key") in keys
    ]
    return points


def _fingerprint_chart(points: list[dict]) -> str:
    """Scatter: time on x, one row per fingerprint; a square per recording, a dot per live sample."""
    fps = sorted({p["fingerprint"] for p in points})
    width, row_h, left = 560, 26, 150
    height = row_h * max(1, len(fps)) + 40
    out = [
        f'<svg class="chart" id="fingerprint-chart" width="{left + width + 20}" height="{height}" role="img" '
        f'aria-label="fingerprints over time">'
    ]
    if points:
        t0, t1 = min(p["time"] for p in points), max(p["time"] for p in points)
        span = (t1 - t0) or 1.0
        for i, fp in enumerate(fps):
            out.append(f'<text x="0" y="{20 + i * row_h + 4}" font-family="monospace" font-size="12">{escape(fp[:20])}</text>')
        for p in points:
            x = left + (p["time"] - t0) / span * width
            y = 20 + fps.index(p["fingerprint"]) * row_h
            if p["kind"] == "recorded":
                out.append(f'<rect x="{x - 4:.1f}" y="{y - 4}" width="8" height="8" fill="none" stroke="#333"/>')
            else:
                out.append(f'<circle cx="{x:.1f}" cy="{y}" r="4" fill="{_COLORS.get(p.get("verdict") or "", "#555")}"/>')
        out.append(f'<text x="{left}" y="{height - 6}" font-size="11">{when(t0)}</text>')
        out.append(f'<text x="{left + width}" y="{height - 6}" font-size="11" text-anchor="end">{when(t1)}</text>')
    out.append("</svg>")
    return "".join(out)


def _fingerprint_table(points: list[dict]) -> str:
    """What the scatter shows, written out: per fingerprint, when it was seen and with which verdicts."""
    rows = []
    for fp in sorted({p["fingerprint"] for p in points}):
        mine = [p for p in points if p["fingerprint"] == fp]
        rec = [p["time"] for p in mine if p["kind"] == "recorded"]
        live = [p for p in mine if p["kind"] == "sample"]
        counts: dict[str, int] = {}
        for p in live:
            counts[p.get("verdict") or "?"] = counts.get(p.get("verdict") or "?", 0) + 1
        verdicts = " ".join(_badge(v, f"{v} {c}") for v, c in sorted(counts.items(), key=lambda vc: -_rank(vc[0])))
        rows.append(
            f"<tr><td><code>{escape(fp or '(none)')}</code></td><td>{len(rec)}</td><td>{_span(rec)}</td>"
            f"<td>{len(live)}</td><td>{_span([p['time'] for p in live])}</td><td>{verdicts}</td></tr>"
        )
    return (
        "<table id='fingerprint-table'><tr><th>fingerprint</th><th>recordings</th><th>recorded</th>"
        f"<th>live samples</th><th>sampled</th><th>verdicts</th></tr>{''.join(rows)}</table>"
    )


def _span(times: list[float]) -> str:
    if not times:
        return "-"
    lo, hi = min(times), max(times)
    return when(lo) if lo == hi else f"{when(lo)} to {when(hi)}"


def _changed_sample(rr: RequestReport) -> tuple[int, Sample] | None:
    """The first sample whose output differs from the recording, with its number (1-based)."""
    for i, s in enumerate(rr.samples, 1):
        if s.error or s.output is None:
            continue
        if s.verdict in _CHANGED or (rr.recorded_output is not None and s.output != rr.recorded_output):
            return i, s
    return None


def _marked(text: str, char: int | None, token: str | None) -> str:
    """``text`` escaped, with the token at ``char`` marked (an end marker when this side ran out first)."""
    if char is None or not 0 <= char <= len(text) or (token is not None and text[char : char + len(token)] != token):
        return f"<mark>{escape(text)}</mark>"  # the offsets do not fit this text: mark it whole
    if token and token.isspace():  # a lone space is hard to see marked: take the word after it too
        spaced = _SPACED_WORD.match(text, char)
        token = spaced.group(0) if spaced else token
    size = len(token or "")
    before, after = _TEXT_WINDOW
    head = text[max(0, char - before) : char]
    tail = text[char + size : char + size + after]
    mark = f"<mark>{escape(token)}</mark>" if token else "<mark>⟨end⟩</mark>"
    return ("…" if char > before else "") + escape(head) + mark + escape(tail) + ("…" if char + size + after < len(text) else "")


def _value(v: object) -> str:
    s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    return s if len(s) <= 400 else s[:400] + f"… ({len(s)} characters)"


def _field_html(name: str, v: object, diff: dict | None, side: str) -> str:
    """One field of one choice; the differing one is marked, at its first differing token when it is text."""
    hit = diff is not None and _is_field(diff, name)
    if diff is not None and hit and isinstance(v, str) and "char" in diff and diff.get("field") == name:
        body = _marked(v, diff.get("char"), diff.get(f"{side}_token"))
    elif hit:
        body = f"<mark>{escape(_value(v) if v is not None else '(absent)')}</mark>"
    else:
        body = escape(_value(v))
    if name == "content":
        return f'<pre class="out">{body}</pre>'
    return f'<div class="meta">{escape(name)}: <code>{body}</code></div>'


def _output_html(output: list | None, diff: dict | None, side: str) -> str:
    """An output (a list of choices) as text, the first difference from the other side marked."""
    if output is None:
        return '<p class="meta">(not in this report)</p>'
    choice = diff.get("choice") if diff else None
    parts = []
    for i, c in enumerate(output):
        here = diff if choice == i else None
        head = f'<div class="meta"><b>choice {i}</b></div>' if len(output) > 1 else ""
        if not isinstance(c, dict):
            parts.append(head + f'<pre class="out">{escape(_value(c))}</pre>')
            continue
        if here is not None and not here.get("field"):  # the whole choice differs (one side lacks it)
            parts.append(head + f'<pre class="out"><mark>{escape(_value(c))}</mark></pre>')
            continue
        names = [n for n in _FIELDS if n in c] + sorted(str(n) for n in c if n not in _FIELDS and n != "index")
        fields = [_field_html(n, c.get(n), here, side) for n in names if c.get(n) not in (None, []) or _is_field(here, n)]
        parts.append(head + "".join(fields))
    if choice is not None and choice >= len(output):
        parts.append(f'<div class="meta"><b>choice {choice}</b>: <mark>(absent)</mark></div>')
    return "".join(parts) or '<p class="meta">(empty)</p>'


def _is_field(diff: dict | None, name: str) -> bool:
    """Whether the difference lies in this field (``tool_calls[0][1]`` lies in ``tool_calls``)."""
    m = re.match(r"[A-Za-z_][\w-]*", (diff or {}).get("field") or "")
    return m is not None and m.group(0) == name


def _token(t: object) -> str:
    return "(the text ends)" if t is None else f"<code>{escape(json.dumps(t, ensure_ascii=False))}</code>"


def _difference_line(diff: dict | None) -> str:
    """Where the live output first departs from the recording, in words."""
    if not diff:
        return '<p class="meta">No field-level difference was recorded.</p>'
    where = f"<code>{escape(str(diff.get('path') or '(whole output)'))}</code>"
    if "choice" in diff:
        field = f"field <code>{escape(str(diff['field']))}</code>" if diff.get("field") else "the whole choice"
        where += f" (choice {escape(str(diff['choice']))}, {field})"
    token = ""
    if "token" in diff:
        rec, live = (_token(diff.get(f"{side}_token")) for side in ("recorded", "live"))
        token = f", token {escape(str(diff['token']))} (character {escape(str(diff.get('char')))}): recorded {rec}, live {live}"
    return (
        f'<p class="first-difference">First difference at {where}{token}.</p>'
        f'<p class="meta">{escape(str(diff.get("summary") or ""))}</p>'
    )


def _details(rr: RequestReport) -> str:
    """Recorded and live output side by side for a request whose answer changed (empty when none did)."""
    found = _changed_sample(rr)
    if found is None:
        return ""
    n, s = found
    diff = s.first_difference
    if diff is None and rr.recorded_output is not None:
        diff = jsondiff.first_departure(rr.recorded_output, s.output)
    changed = sum(1 for x in rr.samples if not x.error and (x.verdict in _CHANGED))
    return (
        f'<section class="diverged" id="diff-{_anchor(rr.key)}">'
        f"<h3>{_badge(s.verdict or 'other')} <code class='key'>{escape(rr.key)}</code></h3>"
        f'<p class="meta">{escape(rr.model)} · {escape(rr.endpoint)} · prompt: {escape(rr.prompt)}</p>'
        f"<p>{changed} of {len(rr.samples)} samples differ from the recording; below, sample {n} "
        f"(similarity {_num(s.similarity)}).</p>"
        f"{_difference_line(diff)}"
        '<div class="sides">'
        f"<div><h4>recorded: <code>{escape(rr.recorded_fingerprint)}</code>, {when(rr.recorded_at)}</h4>"
        f"{_output_html(rr.recorded_output, diff, 'recorded')}</div>"
        f"<div><h4>live sample {n}: <code>{escape(s.fingerprint)}</code>, {when(s.time)}</h4>"
        f"{_output_html(s.output, diff, 'live')}</div>"
        "</div></section>"
    )


def _requests_table(report: AuditReport) -> str:
    rows = "".join(
        f"<tr><td><code class='key'>{escape(rr.key)}</code></td><td>{_verdict_cell(rr)}</td><td>{escape(rr.model)}</td>"
        f"<td>{escape(', '.join(rr.fingerprints_seen))}</td><td>{len(rr.samples)}</td><td>{rr.errors}</td>"
        f"<td>{'-' if rr.identical_share is None else f'{rr.identical_share:.0%}'}</td>"
        f"<td>{_num(rr.mean_similarity_to_recording)}</td><td>{_num(rr.mean_pairwise_similarity)}</td>"
        f"<td>{_num(rr.mean_embedding_distance_to_recording, 4)}</td><td>{escape(rr.prompt)}</td></tr>"
        for rr in report.requests
    )
    return (
        "<table id='requests'><tr><th>key</th><th>verdict</th><th>model</th><th>fingerprints seen</th><th>samples</th>"
        "<th>errors</th><th>identical</th><th>similarity to recording</th><th>pairwise similarity</th>"
        f"<th>embedding distance</th><th>prompt</th></tr>{rows}</table>"
    )


def _payload(report: AuditReport, points: list[dict]) -> str:
    """The report as JSON inside a script element: '<', '>' and '&' escaped, so no text can end or open a tag."""
    data = json.dumps({"report": report.to_json(), "fingerprint_points": points}, ensure_ascii=False)
    return data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(report: AuditReport, events: list[dict], thresholds: dict[str, float] | None = None) -> str:
    """The page; ``thresholds`` are the --fail-on limits, whose outcome heads it."""
    points = fingerprint_points(report, events)
    status, sentence = outcome(report, thresholds or {})
    shares = "".join(f"<li>{_badge(v)} {s:.1%}</li>" for v, s in report.verdict_shares.items())
    details = "".join(_details(rr) for rr in report.requests)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>seedtape drift audit</title>
<style>{_CSS}</style>
</head><body>
<h1>seedtape drift audit</h1>
<div class="outcome {status}" id="outcome">{escape(sentence)}</div>
<p>Upstream <code>{escape(report.upstream)}</code>, {len(report.requests)} requests x {report.repeats} samples
({report.samples} samples, {report.errors} errors), {when(report.started)} to {when(report.finished)}.
Identical to the recording: {_pct(report.identical_share)};
mean similarity: {_num(report.mean_similarity_to_recording)}.</p>
<p>Share of samples per verdict:</p><ul>{shares}</ul>
<h2>Similarity to the recording, per request</h2>{_similarity_chart(report)}
<h2>Fingerprints over time</h2><p>Squares: recordings; dots: live samples, colored by verdict.</p>{_fingerprint_chart(points)}
{_fingerprint_table(points)}
<h2>Requests</h2>
{_requests_table(report)}
<h2>Recorded vs live</h2>
{details or "<p>No live answer differed from its recording.</p>"}
<script type="application/json" id="seedtape-audit-data">{_payload(report, points)}</script>
</body></html>
"""
