"""`seedtape ls`, `show`, `stats`: read a store without a proxy running."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from seedtape.cli import output
from seedtape.cli.remoteopts import open_remote, remote_options, unreachable
from seedtape.proxy.printable import escape
from seedtape.proxy.streams import sse
from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.store import Store, StoreError

store_option = click.option(
    "--store",
    default=".seedtape",
    show_default=True,
    envvar="SEEDTAPE_STORE",
    type=click.Path(file_okay=False),
    help="LMDB store directory (env SEEDTAPE_STORE).",
)


def open_store(path: str) -> Store:
    try:
        return Store(path, readonly=True)
    except StoreError as e:
        raise output.Failure(str(e)) from None


def dumps(doc: object) -> str:
    """Pretty JSON for a terminal (see output.dumps)."""
    return output.dumps(doc)


def printable(text: str) -> str:
    """One line of recorded text, safe to print."""
    return escape(text)


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ts else "-"


def count(n: int, one: str, many: str = "") -> str:
    """``1 entry``, ``2 entries``: messages that read as English."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def last_user_words(request: dict, words: int = 8) -> str:
    """The first words of the last user message (or the prompt/input) of a canonical request."""
    body = request.get("body")
    if not isinstance(body, dict):
        return ""
    text: object = ""
    for msg in reversed(body.get("messages") or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            text = msg.get("content", "")
            break
    else:
        text = body.get("prompt") or body.get("input") or ""
    if isinstance(text, list):  # content parts, or a list of inputs
        text = " ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in text)
    split = str(text).split()
    return " ".join(split[:words]) + (" …" if len(split) > words else "")


def summaries(store: Store) -> list[dict]:
    """One row per request key: newest entry's model, all fingerprints, times."""
    rows: dict[str, dict] = {}
    for e in store.entries():
        row = rows.setdefault(
            e.key,
            {
                "key": e.key,
                "endpoint": e.endpoint,
                "model": e.model,
                "namespace": e.namespace,
                "fingerprints": [],
                "prompt": last_user_words(e.request),
                "recorded_at": 0.0,
                "format": e.format,
            },
        )
        row["fingerprints"].append(e.fingerprint)
        if e.recorded_at >= row["recorded_at"]:
            row.update(recorded_at=e.recorded_at, model=e.model, latest_fingerprint=e.fingerprint)
    return sorted(rows.values(), key=lambda r: r["recorded_at"], reverse=True)


@click.command()
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def ls(store: str, as_json: bool) -> None:
    """List recorded requests, newest first."""
    with open_store(store) as st:
        rows = summaries(st)
    if as_json:
        for r in rows:
            r["recorded_at"] = when(r["recorded_at"])
        output.echo(dumps(rows))
        return
    if not rows:
        output.echo(f"no recordings in {store}")
        return
    output.echo(f"{'KEY':<14} {'MODEL':<22} {'FMT':<4} {'NAMESPACE':<12} {'FINGERPRINTS':<24} {'RECORDED':<21} PROMPT")
    for r in rows:
        fps = ",".join(r["fingerprints"])
        ns = r["namespace"] or "-"
        output.echo(
            printable(
                f"{r['key'][:12]:<14} {r['model'][:22]:<22} {r['format']:<4} {ns[:12]:<12} {fps[:24]:<24} "
                f"{when(r['recorded_at']):<21} {r['prompt']}"
            )
        )


def resolve(st: Store, prefix: str) -> str:
    keys = st.find(prefix.lower())
    if not keys:
        raise output.Failure(f"no recording has a key starting with {prefix!r}: `seedtape ls` lists the keys")
    if len(keys) > 1:
        raise output.Failure(
            f"{prefix!r} matches {len(keys)} keys ({', '.join(k[:12] for k in keys[:5])}…): give more characters"
        )
    return keys[0]


def _body_for_display(e: TapeEntry) -> object:
    parsed = e.json_body()
    if parsed is not None:
        return parsed
    return e.body.decode("utf-8", errors="replace")


def _events_for_display(body: str) -> str:
    """A recorded stream, one event per line, each JSON chunk compact and readable."""
    lines = []
    for ev in sse.parse(body.encode("utf-8", errors="replace")):
        try:
            data = json.dumps(json.loads(ev.data), ensure_ascii=False, separators=(", ", ": "))  # escaped when printed
        except ValueError:
            data = ev.data
        lines.append(f"{'event: ' + ev.event + '  ' if ev.event else ''}data: {data}")
    return "\n".join(lines)


@click.command()
@store_option
@click.argument("key")
@click.option("--fingerprint", default=None, help="Show this fingerprint's entry (default: all of them).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(store: str, key: str, fingerprint: str | None, as_json: bool) -> None:
    """Show the request and response recorded for KEY (a unique prefix is enough)."""
    with open_store(store) as st:
        full = resolve(st, key)
        fps = [fingerprint] if fingerprint else st.fingerprints(full)
        entries = [e for fp in fps if (e := st.get(full, fp)) is not None]
    if not entries:
        raise output.Failure(f"{full[:12]} has no entry under fingerprint {fingerprint}")
    out: list[dict[str, Any]] = []
    for e in entries:
        out.append(
            {
                "key": e.key,
                "fingerprint": e.fingerprint,
                "endpoint": e.endpoint,
                "model": e.model,
                "namespace": e.namespace,
                "format": e.format,
                "recorded_at": when(e.recorded_at),
                "first_recorded_at": when(e.first_recorded_at),
                "times_recorded": e.times_recorded,
                "upstream_ms": e.upstream_ms,
                "request": e.request,
                "response": {"status": e.status, "headers": dict(e.headers), "body": _body_for_display(e)},
            }
        )
    if as_json:
        output.echo(dumps(out if len(out) > 1 else out[0]))
        return
    for o in out:
        output.secho(printable(f"key {o['key']}  fingerprint {o['fingerprint']}"), bold=True)
        output.echo(
            printable(
                f"{o['endpoint']}  model {o['model']}  recorded {o['recorded_at']} "
                f"(first {o['first_recorded_at']}, {o['times_recorded']}x)  format {o['format']}"
            )
        )
        output.secho("request:", bold=True)
        output.echo(dumps(o["request"]))
        output.secho(f"response: {o['response']['status']}", bold=True)
        if o["format"] == "sse" and isinstance(o["response"]["body"], str):
            output.echo(_events_for_display(o["response"]["body"]))
        else:
            output.echo(dumps(o["response"]["body"]))
        output.echo()


@click.command()
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@remote_options(required=False)
@click.option("--remote-readonly", is_flag=True, help="The proxies use the remote read-only (shown as such).")
def stats(
    store: str, as_json: bool, remote_url: str | None, remote_prefix: str, remote_timeout: float, remote_readonly: bool
) -> None:
    """Count entries, request keys and fingerprints, and the store's size; with --remote, the remote tier too."""
    with open_store(store) as st:
        s = st.stats()
    if remote_url:
        from seedtape.proxy.tapes.remote import RemoteError

        with open_remote(remote_url, remote_prefix, remote_timeout, readonly=remote_readonly) as remote:
            try:
                info = remote.info()
            except RemoteError as e:
                unreachable(e)
        s["remote"] = {"name": info["name"], "prefix": remote_prefix, "readonly": remote_readonly, "entries": info.get("entries")}
    if as_json:
        output.echo_json(s)
        return
    for k in ("path", "entries", "request_keys", "fingerprints", "events", "queued", "size_bytes", "map_size", "schema_version"):
        output.echo(f"{k:<15} {s[k]}")
    if "remote" in s:
        r = s["remote"]
        output.echo(f"{'remote':<15} {r['name']}")
        output.echo(f"{'remote_prefix':<15} {r['prefix']}")
        output.echo(f"{'remote_readonly':<15} {'yes' if r['readonly'] else 'no'}")
        output.echo(f"{'remote_entries':<15} {r['entries']}")
    sys.stdout.flush()
