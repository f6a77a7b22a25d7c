"""`seedtape export`, `import` (portable tapes for git) and `prune` (drop entries from a store)."""

from __future__ import annotations

from pathlib import Path

import click

from seedtape.cli import output
from seedtape.cli.audit import parse_age
from seedtape.cli.inspection import count, open_store, store_option, when
from seedtape.proxy.tapes import prune as pruning
from seedtape.proxy.tapes import scrub, tapefile, unused
from seedtape.proxy.tapes.entryfilter import EntryFilter
from seedtape.proxy.tapes.store import Store, StoreError


def _field_paths(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[scrub.FieldPath, ...]:
    try:
        return tuple(scrub.parse_field(v) for v in values)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.command("export")
@store_option
@click.argument("path", type=click.Path(file_okay=False))
@click.option(
    "--scrub-header",
    "scrub_headers",
    multiple=True,
    metavar="NAME",
    help="Leave this response header out of the export (repeatable; secret headers always are).",
)
@click.option(
    "--scrub-field",
    "scrub_fields",
    multiple=True,
    metavar="PATH",
    callback=_field_paths,
    help='Replace this value with "[scrubbed]" (repeatable): request.STEPS in the canonical request, '
    "response.STEPS in a JSON body and in each event of a stream; STEPS are keys, array indexes "
    "or *, joined by dots (request.body.messages.*.content, response.id).",
)
def export_cmd(store: str, path: str, scrub_headers: tuple[str, ...], scrub_fields: tuple[scrub.FieldPath, ...]) -> None:
    """Write the store to PATH as text files for git: one directory per request key."""
    with open_store(store) as st:
        try:
            result = tapefile.export(st, path, scrub_headers=scrub_headers, scrub_fields=scrub_fields)
        except (tapefile.TapeFileError, OSError) as e:
            raise output.Failure(str(e)) from None
    output.echo(result.summary())


@click.command("import")
@store_option
@click.argument("path", type=click.Path(file_okay=False))
def import_cmd(store: str, path: str) -> None:
    """Merge the tapes under PATH into the store (a newer recording wins); a bad file imports nothing."""
    try:
        entries = tapefile.load(path)  # check everything before the store is even opened
        with Store(store) as st:
            result = tapefile.merge(st, entries, path)
    except (tapefile.TapeFileError, StoreError, OSError) as e:  # a tape is untrusted: one line, never a traceback
        raise output.Failure(str(e)) from None
    output.echo(result.summary())


@click.command()
@store_option
@click.option(
    "--older-than",
    metavar="AGE",
    callback=lambda ctx, param, v: parse_age(v),
    help="Entries recorded longer ago than AGE (30m, 2h, 7d, 1w).",
)
@click.option("--not-newest", is_flag=True, help="Every fingerprint of a key except the newest (the one replay serves).")
@click.option("--model", default=None, metavar="M", help="Entries of this model.")
@click.option("--key", "key_prefix", default=None, metavar="PREFIX", help="Entries whose request key starts with PREFIX.")
@click.option(
    "--unused-in",
    default=None,
    metavar="FILE",
    type=click.Path(dir_okay=False, exists=True),
    help="Entries listed as unused in FILE (written by `seedtape serve --report-unused FILE`).",
)
@click.option("--dry-run", is_flag=True, help="List what would go; change nothing.")
def prune(
    store: str,
    older_than: float | None,
    not_newest: bool,
    model: str | None,
    key_prefix: str | None,
    unused_in: str | None,
    dry_run: bool,
) -> None:
    """Remove the entries every given filter matches (filters combine with AND; at least one is required)."""
    try:
        unused_pairs = frozenset(unused.read_report(unused_in)) if unused_in else None
    except ValueError as e:
        raise output.Failure(str(e)) from None
    f = EntryFilter(older_than=older_than, not_newest=not_newest, model=model, key_prefix=key_prefix, only=unused_pairs)
    if f.empty:
        raise click.UsageError(
            "prune needs at least one filter (--older-than AGE, --not-newest, --model M, "
            "--key PREFIX, --unused-in FILE); it never empties a store by accident: to drop "
            "everything, delete the store directory"
        )
    if not (Path(store) / "data.mdb").exists():
        open_store(store)  # raises the usual "no seedtape store at ..." error
    try:
        with open_store(store) if dry_run else Store(store) as st:
            chosen = pruning.select(st, f)
            for entry in chosen:
                output.echo(f"{entry.key[:12]}  {entry.fingerprint}  {entry.model or '-'}  {when(entry.recorded_at)}")
            keys = len({e.key for e in chosen})
            if not chosen:
                output.echo("nothing to prune: no entry matches every filter")
            elif dry_run:
                output.echo(
                    f"would prune {count(len(chosen), 'entry', 'entries')} of {count(keys, 'request key')} "
                    "(dry run: nothing changed)"
                )
            else:
                n = pruning.prune(st, chosen)
                output.echo(
                    f"pruned {count(n, 'entry', 'entries')} of {count(keys, 'request key')}; "
                    f"{count(st.stats()['entries'], 'entry', 'entries')} left"
                )
    except StoreError as e:
        raise output.Failure(str(e)) from None
