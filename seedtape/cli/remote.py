"""`seedtape push` and `pull`: move recordings between a local store (or a tape directory) and the remote tier.

Entries cross as the bytes the local store holds (TapeEntry.encode, compressed), checked on the
way in (remote.py). Neither side overwrites an entry it already has for a (request key,
fingerprint): a different one there is counted as conflicting and left as it is.
Exit status: 0 done, 1 something conflicted or was refused, 2 the remote could not be reached.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import click

from seedtape.cli import output
from seedtape.cli.audit import parse_age, parse_since
from seedtape.cli.inspection import count, store_option
from seedtape.cli.remoteopts import open_remote, remote_options, unreachable
from seedtape.proxy.tapes import tapefile
from seedtape.proxy.tapes.entry import CorruptEntry, TapeEntry
from seedtape.proxy.tapes.entryfilter import EntryFilter
from seedtape.proxy.tapes.remote import MAX_ENTRY_BYTES, Remote, RemoteError
from seedtape.proxy.tapes.store import Store, StoreError

BATCH = 256  # entries per round trip


@dataclass
class Counts:
    added: int = 0
    skipped: int = 0  # already there, the same entry
    conflicting: int = 0  # another entry there for the same (key, fingerprint): left as it is
    refused: int = 0  # bad remote values (pull) or entries too large to share (push)
    reencoded: int = 0  # pull: entries whose bytes changed when the local store wrote them (see write_raw)

    def line(self, verb: str) -> str:
        text = f"{verb}: {count(self.added, 'entry', 'entries')} added, {self.skipped} skipped, {self.conflicting} conflicting"
        if self.refused:
            text += f", {self.refused} refused"
        if self.reencoded:
            text += f" ({self.reencoded} stored with other bytes: written by another seedtape or zstd)"
        return text


def filter_options(fn: Callable) -> Callable:
    """The entry filters of prune/audit/events (combined with AND), parsed by their helpers."""
    for option in reversed(
        [
            click.option("--model", default=None, metavar="M", help="Entries of this model."),
            click.option(
                "--key", "key_prefix", default=None, metavar="PREFIX", help="Entries whose request key starts with PREFIX."
            ),
            click.option(
                "--older-than",
                metavar="AGE",
                callback=lambda ctx, param, v: parse_age(v),
                help="Entries recorded longer ago than AGE (30m, 2h, 7d, 1w).",
            ),
            click.option(
                "--newer-than", metavar="AGE", callback=lambda ctx, param, v: parse_age(v), help="Entries recorded within AGE."
            ),
            click.option(
                "--since",
                metavar="WHEN",
                callback=lambda ctx, param, v: parse_since(v, "--since"),
                help="Entries recorded since an age ago (2h, 7d) or an ISO time.",
            ),
            click.option(
                "--until",
                metavar="WHEN",
                callback=lambda ctx, param, v: parse_since(v, "--until"),
                help="Entries recorded before an age ago or an ISO time.",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def _filter(model, key_prefix, older_than, newer_than, since, until) -> EntryFilter:
    return EntryFilter(model=model, key_prefix=key_prefix, older_than=older_than, newer_than=newer_than, since=since, until=until)


json_option = click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")


def _finish(counts: Counts, verb: str, as_json: bool, remote: Remote) -> None:
    if as_json:
        output.echo_json({"remote": remote.name, **asdict(counts)})
    else:
        output.echo(f"{counts.line(verb)} ({remote.name})")
    if counts.conflicting or counts.refused:
        sys.exit(1)


class _Quiet:
    """The progress bar off a terminal: click's prints its label even when hidden, which a pipe or log need not get."""

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def _progress(length: int, label: str) -> Any:
    """A progress bar on stderr when it is a terminal; nothing otherwise."""
    if sys.stderr.isatty():
        return click.progressbar(length=length, label=label, file=sys.stderr)
    return _Quiet()


def _batches(items: Iterable[Any], size: int = BATCH) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


@click.command()
@remote_options()
@store_option
@click.option(
    "--tapes",
    default=None,
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Push the tape directory DIR (written by `seedtape export`) instead of a store.",
)
@filter_options
@json_option
def push(
    remote_url: str, remote_prefix: str, remote_timeout: float, store: str, tapes: str | None, as_json: bool, **filters: Any
) -> None:
    """Upload the entries of a local store (or a tape directory) to the remote that match every filter.

    An entry the remote already has is skipped; a different one there for the same request key
    and fingerprint stays (entries are immutable on the remote) and is counted as conflicting.
    Exit status: 0 done, 1 something conflicted, 2 the remote could not be reached.
    """
    ctx = click.get_current_context()
    if tapes is not None and ctx.get_parameter_source("store") is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("give --store or --tapes, not both")
    f = EntryFilter(**filters)  # the options are named for its fields
    st: Store | None = None
    try:
        if tapes is not None:
            entries: list[TapeEntry] = tapefile.load(tapes)
            total = len(entries)
            source: Iterable[TapeEntry] = entries
        else:
            st = Store(store, readonly=True)
            total = st.stats_counts()["entries"]
            source = st.entries()
    except (tapefile.TapeFileError, StoreError, OSError) as e:
        raise output.Failure(str(e)) from None
    remote = open_remote(remote_url, remote_prefix, remote_timeout)
    counts = Counts()
    try:
        with remote, _progress(total, "pushing") as bar:
            for batch in _batches(source):
                bar.update(len(batch))
                sharable = []
                for entry in batch:
                    if not f.entry(entry):
                        continue
                    raw = entry.encode()
                    if len(raw) > MAX_ENTRY_BYTES:
                        output.echo(f"seedtape push: not shared: {entry.key} ({entry.fingerprint}): {len(raw)} bytes", err=True)
                        counts.refused += 1
                        continue
                    sharable.append((entry, raw))
                for outcome in remote.put_many(sharable) if sharable else []:
                    if outcome == "added":
                        counts.added += 1
                    elif outcome == "same":
                        counts.skipped += 1
                    else:
                        counts.conflicting += 1
    except RemoteError as err:
        unreachable(err)
    finally:
        if st is not None:
            st.close()
    _finish(counts, "pushed", as_json, remote)


def write_raw(store: Store, raws: list[bytes]) -> tuple[list[str], int]:
    """Write encoded entries into ``store`` through its public API (decode, then Store.merge, which keeps timestamps).

    Store.merge encodes the entry again; the bytes stay the same when both sides run the same
    encoder (entry.py's ST2 with its dictionary and zstd level). Returns merge's outcomes and
    how many entries now sit there under other bytes (an ST1 entry, another zstd build).
    """
    entries = [TapeEntry.decode(raw) for raw in raws]
    changed = sum(e.encode() != raw for e, raw in zip(entries, raws))
    return store.merge(entries), changed


@click.command()
@remote_options()
@store_option
@filter_options
@json_option
def pull(remote_url: str, remote_prefix: str, remote_timeout: float, store: str, as_json: bool, **filters: Any) -> None:
    """Fill a local store with the remote's entries that match every filter.

    An entry the store already has is skipped; a different local one for the same request key and
    fingerprint stays and is counted as conflicting. Remote values are checked (checksum, key,
    fingerprint) and a bad one is refused. Exit status: 0 done, 1 something conflicted or was
    refused, 2 the remote could not be reached.
    """
    f = EntryFilter(**filters)  # the options are named for its fields
    remote = open_remote(remote_url, remote_prefix, remote_timeout, readonly=True)
    try:
        st = Store(store)
    except StoreError as e:
        raise output.Failure(str(e)) from None
    counts = Counts()
    bad: list[RemoteError] = []
    try:
        with remote, st, _progress(remote.count(), "pulling") as bar:
            for batch in _batches(remote.entries(errors=bad)):
                bar.update(len(batch))
                new: list[bytes] = []
                for entry, raw in batch:
                    if not f.entry(entry):
                        continue
                    local = st.get(entry.key, entry.fingerprint)
                    if local is None:
                        new.append(raw)
                    elif local == entry:
                        counts.skipped += 1
                    else:
                        counts.conflicting += 1
                if new:
                    outcomes, changed = write_raw(st, new)
                    counts.reencoded += changed
                    for outcome in outcomes:  # not "imported": another writer got there first
                        if outcome == "imported":
                            counts.added += 1
                        elif outcome == "unchanged":
                            counts.skipped += 1
                        else:
                            counts.conflicting += 1
    except RemoteError as err:
        unreachable(err)
    except (StoreError, CorruptEntry) as err:
        raise output.Failure(str(err)) from None
    for problem in bad:
        output.echo(f"seedtape pull: refused: {problem}", err=True)
    counts.refused = len(bad)
    _finish(counts, "pulled", as_json, remote)
