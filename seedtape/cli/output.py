"""What the commands print: text from stores, tapes and upstreams is escaped on the way out.

A recorded ``model``, fingerprint, namespace or body can hold terminal control
sequences; every command prints through these functions so none reaches the terminal.
"""

from __future__ import annotations

import json

import click

from seedtape.proxy import printable


def echo(text: str = "", **kw) -> None:
    """click.echo, with control, format and surrogate characters escaped (line feeds kept)."""
    click.echo(printable.escape(str(text), newlines=True), **kw)


def secho(text: str = "", **kw) -> None:
    click.secho(printable.escape(str(text), newlines=True), **kw)


def dumps(doc: object, indent: int | None = 2) -> str:
    """JSON for a terminal or a pipe: readable UTF-8, unsafe characters as \\u escapes (still valid JSON)."""
    return printable.escape_json(json.dumps(doc, indent=indent, ensure_ascii=False))


def echo_json(doc: object, **kw) -> None:
    click.echo(dumps(doc), **kw)


class Failure(click.ClickException):
    """click's error exit (status 1, "Error: ..."), with the message escaped: it may quote a tape."""

    def __init__(self, message: str):
        super().__init__(printable.escape(str(message)))
