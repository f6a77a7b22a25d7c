"""`seedtape audit` (re-send recordings live, report drift) and `seedtape events` (list audit events)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from datetime import datetime

import click

from seedtape.cli import htmlreport, output
from seedtape.cli.inspection import count, last_user_words, open_store, store_option, when
from seedtape.cli.remoteopts import open_remote, remote_options, unreachable
from seedtape.proxy.audit import sampler as core
from seedtape.proxy.audit.divergence import VERDICTS
from seedtape.proxy.tapes.entryfilter import EntryFilter
from seedtape.proxy.tapes.remote import RemoteError
from seedtape.proxy.tapes.store import Store, StoreError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(value: str | None) -> float | None:
    """'90s', '15m', '2h', '7d', '1w' -> seconds."""
    return None if value is None else _age_seconds(value)


def _age_seconds(value: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", value)
    if not m:
        raise click.BadParameter(f"{value!r} is not an age: use a number and one of s, m, h, d, w (e.g. 7d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_since(value: str | None, hint: str | None = None) -> float | None:
    """An age ('2h') or an ISO date/time -> epoch seconds."""
    if value is None:
        return None
    try:
        return time.time() - _age_seconds(value)
    except click.BadParameter:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither an age (2h, 7d) nor an ISO date (2026-11-01T12:00)", param_hint=hint
        ) from None


def parse_thresholds(values: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for v in values:
        for part in v.split(","):
            name, sep, num = part.partition("=")
            name = name.strip()
            if not sep or name not in VERDICTS[1:]:
                raise click.BadParameter(
                    f"{part!r}: use VERDICT=SHARE with VERDICT one of {', '.join(VERDICTS[1:])}", param_hint="--fail-on"
                )
            try:
                out[name] = float(num.rstrip("%")) / (100 if num.strip().endswith("%") else 1)
            except ValueError:
                raise click.BadParameter(f"{num!r} is not a share (0.1 or 10%)", param_hint="--fail-on") from None
    return out


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:.0%}" if pct else f"{x:.3f}"


def print_table(report: core.AuditReport) -> None:
    output.echo(
        f"{'KEY':<13} {'MODEL':<16} {'FINGERPRINTS':<22} {'N':>3} {'ERR':>3} {'IDENT':>6} "
        f"{'SIM→REC':>7} {'SIM↔':>6} {'EMB→REC':>7}  VERDICTS / PROMPT"
    )
    for rr in report.requests:
        fps = ",".join(rr.fingerprints_seen) or "-"
        verdicts = " ".join(f"{k}={v}" for k, v in sorted(rr.verdicts.items()))
        output.echo(
            f"{rr.key[:12]:<13} {rr.model[:16]:<16} {fps[:22]:<22} {len(rr.samples):>3} {rr.errors:>3} "
            f"{_fmt(rr.identical_share, True):>6} {_fmt(rr.mean_similarity_to_recording):>7} "
            f"{_fmt(rr.mean_pairwise_similarity):>6} {_fmt(rr.mean_embedding_distance_to_recording):>7}  "
            f"{verdicts}  {rr.prompt[:40]}"
        )
    shares = "  ".join(f"{k} {v:.0%}" for k, v in report.verdict_shares.items())
    output.echo(
        f"\n{count(len(report.requests), 'request')}, {count(report.samples, 'sample')}, "
        f"{count(report.errors, 'error')}; "
        f"identical to recording {_fmt(report.identical_share, True)}, "
        f"mean similarity {_fmt(report.mean_similarity_to_recording)}"
    )
    output.echo(f"verdicts: {shares}")


@click.command("audit")
@store_option
@click.option(
    "--upstream",
    default="https://api.openai.com",
    show_default=True,
    envvar="SEEDTAPE_UPSTREAM",
    help="The API to re-send the recorded requests to.",
)
@click.option("--model", default=None, help="Only requests for this model.")
@click.option("--key", "key_prefix", default=None, metavar="PREFIX", help="Only request keys starting with PREFIX.")
@click.option("--older-than", default=None, metavar="AGE", help="Only recordings older than AGE (30m, 2h, 7d).")
@click.option("--newer-than", default=None, metavar="AGE", help="Only recordings newer than AGE.")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1, 1000), help="Live samples per request.")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 256), help="Requests in flight at once.")
@click.option(
    "--max-retries",
    default=4,
    show_default=True,
    type=click.IntRange(0, 20),
    help="Retries per sample on 408/409/429/5xx and connection errors, with exponential backoff.",
)
@click.option("--timeout", default=120.0, show_default=True, type=float, help="Seconds per live request.")
@click.option(
    "--embedding-model",
    default=None,
    metavar="NAME",
    help="Also report cosine distances between embeddings of the answers (fetched via /v1/embeddings).",
)
@click.option(
    "--api-key-env",
    default="OPENAI_API_KEY",
    show_default=True,
    metavar="VAR",
    help="Environment variable holding the API key sent upstream (never stored).",
)
@click.option(
    "--query",
    "extra_query",
    multiple=True,
    metavar="NAME=VALUE",
    help="Set this query parameter on every re-sent request, e.g. api-version=2024-10-21 for recordings made "
    "with --ignore-query api-version; repeatable.",
)
@click.option(
    "--json",
    "json_file",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the report as JSON to FILE ('-': stdout).",
)
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write a self-contained HTML report with charts to FILE.",
)
@click.option(
    "--fail-on",
    multiple=True,
    metavar="VERDICT=SHARE",
    help="Exit 1 when the share of samples with VERDICT (drift, nondeterminism, fingerprint-only) "
    "exceeds SHARE, e.g. --fail-on drift=0 --fail-on nondeterminism=10%.",
)
@remote_options(required=False)
def audit_cmd(**options) -> None:
    """Re-send stored requests live, compare the answers with the recordings, report drift.

    Samples are stored as audit events (`seedtape events`), never as recordings.
    Exit status: 0 passed, 1 a --fail-on threshold was exceeded, 2 nothing could be audited,
    3 the audit itself failed (a bug, or a store it cannot read).
    """
    try:
        _audit(**options)
    except click.ClickException:
        raise
    except Exception as e:  # not the gate's status: a CI job must tell "drifted" from "broken"
        output.echo(f"seedtape audit: internal error, no report: {type(e).__name__}: {e}", err=True)
        sys.exit(3)


def _audit(
    store,
    upstream,
    model,
    key_prefix,
    older_than,
    newer_than,
    repeats,
    concurrency,
    max_retries,
    timeout,
    embedding_model,
    api_key_env,
    extra_query,
    json_file,
    html_file,
    fail_on,
    remote_url,
    remote_prefix,
    remote_timeout,
) -> None:
    thresholds = parse_thresholds(fail_on)
    remote = open_remote(remote_url, remote_prefix, remote_timeout) if remote_url else None
    query = [_query_pair(q) for q in extra_query]
    try:
        st = Store(store)
    except StoreError as e:
        raise output.Failure(str(e)) from None
    with st:
        entries = core.select(
            st,
            EntryFilter(model=model, key_prefix=key_prefix, older_than=parse_age(older_than), newer_than=parse_age(newer_than)),
        )
        if not entries:
            output.echo("seedtape audit: no recorded request matches the filters; nothing to audit", err=True)
            sys.exit(2)
        key = os.environ.get(api_key_env, "")
        if not key:
            output.echo(f"seedtape audit: ${api_key_env} is not set: requests go to {upstream} without an API key", err=True)
        started = time.time()
        with click.progressbar(length=len(entries) * repeats, label="auditing", file=sys.stderr) as bar:
            report = asyncio.run(
                core.run(
                    st,
                    entries,
                    upstream.rstrip("/"),
                    repeats=repeats,
                    concurrency=concurrency,
                    api_key=key,
                    embedding_model=embedding_model,
                    max_retries=max_retries,
                    timeout=timeout,
                    progress=bar.update,
                    prompt_of=last_user_words,
                    extra_query=query,
                )
            )
        events = st.events()
    if remote is not None:  # this audit's events join the fleet's, and the report shows the fleet's
        with remote:
            try:
                for event in events:
                    if event.get("source") == "audit" and event.get("time", 0) >= started:
                        remote.add_event(event)
                events = remote.events()
            except RemoteError as err:
                unreachable(err)
    if json_file:
        click.open_file(json_file, "w").write(core.dumps(report) + "\n")
    if html_file:
        with open(html_file, "w", encoding="utf-8") as f:
            f.write(htmlreport.render(report, events, thresholds))
    if json_file != "-":
        print_table(report)
    for rr in report.requests:
        if rr.skipped:
            output.echo(f"seedtape audit: skipped {rr.key[:12]}: it could not be audited ({rr.skipped})", err=True)
    if report.errors == report.samples:
        output.echo(f"seedtape audit: every sample failed (first error: {_first_error(report)})", err=True)
        sys.exit(2)
    failed = core.exceeded(report, thresholds)
    if failed:
        output.echo("seedtape audit: FAILED: " + "; ".join(failed), err=True)
        sys.exit(1)


def _query_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"{text!r}: use NAME=VALUE, e.g. api-version=2024-10-21", param_hint="--query")
    return name, value


def _first_error(report: core.AuditReport) -> str:
    return next((s.error for rr in report.requests for s in rr.samples if s.error), "")


@click.command()
@store_option
@click.option("--verdict", multiple=True, type=click.Choice(VERDICTS), help="Only these verdicts (repeatable).")
@click.option("--model", default=None, help="Only events for this model.")
@click.option("--key", "key_prefix", default=None, metavar="PREFIX", help="Only request keys starting with PREFIX.")
@click.option("--since", default=None, metavar="WHEN", help="Only events since an age ago (2h, 7d) or an ISO time.")
@click.option("--until", default=None, metavar="WHEN", help="Only events before an age ago or an ISO time.")
@click.option(
    "--source", type=click.Choice(["proxy", "audit"]), default=None, help="Only events from the proxy or from `seedtape audit`."
)
@click.option("--limit", type=int, default=None, help="Only the newest N events.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with both outputs) instead of a table.")
@remote_options(required=False)
def events(store, verdict, model, key_prefix, since, until, source, limit, as_json, remote_url, remote_prefix, remote_timeout):
    """List stored audit events, oldest first (with --remote: the fleet's, from the remote tier)."""
    f = EntryFilter(model=model, key_prefix=key_prefix, since=parse_since(since, "--since"), until=parse_since(until, "--until"))
    if remote_url:
        with open_remote(remote_url, remote_prefix, remote_timeout, readonly=True) as remote:
            try:
                found = remote.events()
            except RemoteError as err:
                unreachable(err)
    else:
        with open_store(store) as st:
            found = st.events()
    rows = [
        e
        for e in found
        if f.event(e) and (not verdict or e.get("verdict") in verdict) and (not source or e.get("source") == source)
    ]
    if limit is not None:
        rows = rows[-limit:] if limit > 0 else []
    if as_json:
        output.echo_json(rows)
        return
    if not rows:
        output.echo("no audit events match")
        return
    output.echo(
        f"{'TIME':<21} {'SOURCE':<6} {'KEY':<13} {'MODEL':<16} {'VERDICT':<17} {'SIM':>6}  FINGERPRINT (recorded -> live)"
    )
    for e in rows:
        output.echo(
            f"{when(e.get('time', 0)):<21} {e.get('source', ''):<6} {e.get('key', '')[:12]:<13} "
            f"{str(e.get('model', ''))[:16]:<16} {e.get('verdict', ''):<17} {_fmt(e.get('similarity')):>6}  "
            f"{e.get('recorded_fingerprint')} -> {e.get('live_fingerprint')}"
        )
