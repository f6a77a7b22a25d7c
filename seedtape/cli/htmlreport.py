"""A self-contained HTML page for an audit report: inline SVG charts, no scripts or network.

The report's data is embedded too (``<script type="application/json"
id="seedtape-audit-data">``), so the page is both readable and machine-checkable.
"""

from __future__ import annotations

import json
from html import escape

from seedtape.cli.inspection import when
from seedtape.proxy.audit.sampler import AuditReport

_COLORS = {"match": "#2e7d32", "fingerprint-only": "#1565c0", "nondeterminism": "#ef6c00", "drift": "#c62828"}


def _similarity_chart(report: AuditReport) -> str:
    rows = report.requests
    bar_w, row_h, left = 420, 22, 110
    height = row_h * len(rows) + 30
    out = [
        f'<svg class="chart" id="similarity-chart" width="{left + bar_w + 80}" height="{height}" role="img" '
        f'aria-label="mean similarity to the recording per request">'
    ]
    for i, rr in enumerate(rows):
        y = 10 + i * row_h
        sim = rr.mean_similarity_to_recording
        w = 0 if sim is None else max(1, round(sim * bar_w))
        worst = max(rr.verdicts, key=lambda v: list(_COLORS).index(v)) if rr.verdicts else "match"
        out.append(f'<text x="0" y="{y + 14}" font-family="monospace" font-size="12">{escape(rr.key[:12])}</text>')
        out.append(
            f'<rect x="{left}" y="{y}" width="{w}" height="{row_h - 6}" fill="{_COLORS.get(worst, "#777")}">'
            f"<title>{escape(rr.key)}: {sim if sim is not None else 'no samples'}</title></rect>"
        )
        out.append(f'<text x="{left + w + 6}" y="{y + 14}" font-size="12">{"-" if sim is None else f"{sim:.3f}"}</text>')
    out.append("</svg>")
    return "".join(out)


def _fingerprint_chart(points: list[dict]) -> str:
    """Scatter: time on x, one row per fingerprint; a point per recording or audit sample."""
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
            color = _COLORS.get(p.get("verdict") or "", "#555")
            shape = (
                f'<rect x="{x - 4:.1f}" y="{y - 4}" width="8" height="8" fill="none" stroke="#333">'
                if p["kind"] == "recorded"
                else f'<circle cx="{x:.1f}" cy="{y}" r="4" fill="{color}">'
            )
            tag = "rect" if p["kind"] == "recorded" else "circle"
            out.append(
                f"{shape}<title>{escape(p['kind'])} {escape(p['fingerprint'])} at {when(p['time'])}"
                f"{' ' + escape(p.get('verdict') or '')}</title></{tag}>"
            )
        out.append(f'<text x="{left}" y="{height - 6}" font-size="11">{when(t0)}</text>')
        out.append(f'<text x="{left + width}" y="{height - 6}" font-size="11" text-anchor="end">{when(t1)}</text>')
    out.append("</svg>")
    return "".join(out)


def render(report: AuditReport, events: list[dict]) -> str:
    keys = {rr.key for rr in report.requests}
    points = [
        {"kind": "recorded", "time": rr.recorded_at, "fingerprint": rr.recorded_fingerprint, "key": rr.key}
        for rr in report.requests
    ]
    points += [
        {
            "kind": "sample",
            "time": e["time"],
            "fingerprint": e.get("live_fingerprint", ""),
            "key": e.get("key"),
            "verdict": e.get("verdict"),
        }
        for e in events
        if e.get("key") in keys
    ]
    data = {"report": report.to_json(), "fingerprint_points": points}
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    shares = "".join(f"<li><b style='color:{_COLORS[v]}'>{v}</b>: {s:.1%}</li>" for v, s in report.verdict_shares.items())
    rows = "".join(
        f"<tr><td><code>{escape(rr.key[:12])}</code></td><td>{escape(rr.model)}</td><td>{escape(', '.join(rr.fingerprints_seen))}</td>"
        f"<td>{len(rr.samples)}</td><td>{rr.errors}</td><td>{'-' if rr.identical_share is None else f'{rr.identical_share:.0%}'}</td>"
        f"<td>{'-' if rr.mean_similarity_to_recording is None else f'{rr.mean_similarity_to_recording:.3f}'}</td>"
        f"<td>{'-' if rr.mean_pairwise_similarity is None else f'{rr.mean_pairwise_similarity:.3f}'}</td>"
        f"<td>{'-' if rr.mean_embedding_distance_to_recording is None else f'{rr.mean_embedding_distance_to_recording:.4f}'}</td>"
        f"<td>{escape(rr.prompt)}</td></tr>"
        for rr in report.requests
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>seedtape drift audit</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}}.chart{{border:1px solid #eee;margin:1em 0}}</style>
</head><body>
<h1>seedtape drift audit</h1>
<p>Upstream <code>{escape(report.upstream)}</code>, {len(report.requests)} requests x {report.repeats} samples
({report.samples} samples, {report.errors} errors), {when(report.started)} to {when(report.finished)}.
Identical to the recording: {"-" if report.identical_share is None else f"{report.identical_share:.1%}"};
mean similarity: {"-" if report.mean_similarity_to_recording is None else f"{report.mean_similarity_to_recording:.3f}"}.</p>
<ul>{shares}</ul>
<h2>Similarity to the recording, per request</h2>{_similarity_chart(report)}
<h2>Fingerprints over time</h2><p>Squares: recordings; dots: live samples, colored by verdict.</p>{_fingerprint_chart(points)}
<h2>Requests</h2>
<table><tr><th>key</th><th>model</th><th>fingerprints seen</th><th>samples</th><th>errors</th><th>identical</th>
<th>similarity to recording</th><th>pairwise similarity</th><th>embedding distance</th><th>prompt</th></tr>{rows}</table>
<script type="application/json" id="seedtape-audit-data">{payload}</script>
</body></html>
"""
