"""The --remote options of the commands that read or write the remote tier, and opening it.

push and pull need a remote; stats, events and audit take one optionally. The URL is never
echoed with its password: a bad one is reported by RemoteConfig's redacted message.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from seedtape.cli import output
from seedtape.proxy.tapes.remote import Remote, RemoteConfig, RemoteError


def _remote_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value:
        try:
            RemoteConfig(value)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
    return value


def remote_options(required: bool = True) -> Callable[[Callable], Callable]:
    """--remote, --remote-prefix, --remote-timeout; ``required``: the command needs a remote."""

    def decorate(fn: Callable) -> Callable:
        for option in reversed(
            [
                click.option(
                    "--remote",
                    "remote_url",
                    required=required,
                    default=None,
                    metavar="URL",
                    envvar="SEEDTAPE_REMOTE",
                    callback=_remote_url,
                    help="The remote store: redis://[user:password@]host:port/db, rediss://... (TLS), "
                    "redis+cluster://host:port (any node of a Redis Cluster). Env SEEDTAPE_REMOTE."
                    + ("" if required else " Without it: the local store."),
                ),
                click.option(
                    "--remote-prefix",
                    default="seedtape",
                    show_default=True,
                    metavar="NAME",
                    envvar="SEEDTAPE_REMOTE_PREFIX",
                    help="Key prefix on the remote: keeps several projects apart in one Redis.",
                ),
                click.option(
                    "--remote-timeout",
                    default=10.0,
                    show_default=True,
                    type=click.FloatRange(min=0, min_open=True),
                    metavar="SECONDS",
                    help="Seconds for connecting and for each round trip to the remote.",
                ),
            ]
        ):
            fn = option(fn)
        return fn

    return decorate


def open_remote(url: str, prefix: str, timeout: float, readonly: bool = False) -> Remote:
    """The remote, answering a ping; exit 2 with one (redacted) line when it cannot be reached."""
    try:
        remote = Remote(RemoteConfig(url, prefix=prefix, readonly=readonly, timeout=timeout))
        remote.ping()
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--remote-prefix") from None
    except RemoteError as err:
        unreachable(err)
    return remote


def unreachable(e: RemoteError) -> None:
    output.echo(f"seedtape: {e}", err=True)
    sys.exit(2)
