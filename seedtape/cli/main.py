"""The `seedtape` command group."""

from __future__ import annotations

import click

from seedtape import __version__
from seedtape.cli.audit import audit_cmd, events
from seedtape.cli.explain import diff_cmd, explain
from seedtape.cli.inspection import ls, show, stats
from seedtape.cli.remote import pull, push
from seedtape.cli.serve import serve
from seedtape.cli.tapes import export_cmd, import_cmd, prune


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="seedtape")
def cli() -> None:
    """seedtape: record, replay and audit OpenAI-compatible API calls."""


for command in (serve, ls, show, stats, explain, diff_cmd, audit_cmd, events, export_cmd, import_cmd, prune, push, pull):
    cli.add_command(command)

main = cli
