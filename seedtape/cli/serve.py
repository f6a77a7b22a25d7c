"""`seedtape serve`: a lean embedded mitmproxy in reverse mode carrying the seedtape addon.

mitmdump hands every event to ~36 default addons; a Master with only the
ones seedtape needs serves replay hits about twice as fast.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from seedtape.proxy import options, wire
from seedtape.proxy.options import Option


def _cannot_listen(host: str, port: int) -> str:
    """Why (host, port) cannot be bound, or "": checked first, so the message names seedtape's --port."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return ""  # let mitmproxy report an unresolvable host
    for family, kind, proto, _, addr in infos[:1]:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
            try:
                s.bind(addr)
            except OSError as e:
                return e.strerror or str(e)
    return ""


def _click_option(o: Option):
    """A click option made from its one declaration in seedtape/proxy/options.py."""
    kw: dict = {"help": o.help, "envvar": o.env, "metavar": o.metavar}
    if o.kind is bool:
        kw.update(is_flag=True, flag_value=not o.default, default=o.default)
    elif o.kind is list:
        kw.update(multiple=True, default=())  # none given: the declared default list
    else:
        kind: object = {str: str, int: int, float: float}[o.kind]
        if o.choices:
            kind = click.Choice(o.choices)
        elif o.minimum is not None and o.kind is int:  # the bounds of an int option are whole numbers
            kind = click.IntRange(min=int(o.minimum), max=None if o.maximum is None else int(o.maximum))
        elif o.minimum is not None:
            kind = click.FloatRange(min=o.minimum, max=o.maximum)
        kw.update(type=kind, default=o.default, show_default=o.default not in (None, ""))
    if o.name in ("store", "report_unused"):
        kw["type"] = click.Path(file_okay=False) if o.name == "store" else click.Path(dir_okay=False)
    return click.option(o.cli_flag, *([o.short] if o.short else []), o.name, **kw)


def _with_options(f):
    for o in reversed(options.offered("serve")):
        f = _click_option(o)(f)
    return f


@click.command()
@_with_options
def serve(**values) -> None:
    """Run the recording/replay proxy in front of the --upstream API."""
    for o in options.offered("serve"):
        if o.kind is list and not values[o.name]:
            values[o.name] = list(o.default)
        elif o.kind is list:
            values[o.name] = list(values[o.name])
        try:
            o.validate(values[o.name])
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint=o.cli_flag) from None
    host, port = values["host"], values["port"]
    if not wire.is_loopback(host) and not values["auth_token"]:
        raise click.BadParameter(
            f"{host} is reachable from other machines: set --auth-token (clients send it in the seedtape-token "
            "header) to serve there, or keep the default 127.0.0.1",
            param_hint="--host",
        )
    if port and (why := _cannot_listen(host, port)):
        raise click.UsageError(f"cannot listen on {host}:{port}: {why}. Pick another --port (0 picks a free one).")
    if values["workers"] > 1:
        from seedtape.cli import workers

        sys.exit(workers.supervise(values))
    run(values)


def run(values: dict, *, shared_port: bool = False) -> None:
    """Serve with checked option values until stopped. ``shared_port``: a worker of `serve --workers N`
    (seedtape/cli/workers.py), listening on a port it shares with the others."""
    upstream, host, port = values["upstream"].rstrip("/"), values["host"], values["port"]
    mitm = {o.mitmproxy_name: o.to_text(values[o.name]) for o in options.offered("mitmproxy") if o.name in values}
    mitm.update(
        mode=[f"reverse:{upstream}"],
        listen_host=host,
        listen_port=port,
        body_size_limit=str(values["max_body"]),  # mitmproxy refuses larger bodies before reading them
        # mitmproxy's own idle timeout must not cut a call seedtape is still willing to wait for
        tcp_timeout=max(600, int(values["upstream_timeout"]) + 60),
        termlog_verbosity="warn" if values["quiet"] else "info",
    )
    logging.getLogger("seedtape").setLevel(logging.WARNING if values["quiet"] else logging.INFO)
    from seedtape.addons.internals import StartError, listen_shared, run_lean
    from seedtape.addons.recorder import Seedtape

    if shared_port:
        listen_shared()
    try:
        asyncio.run(run_lean(mitm, Seedtape(report_errors=False), grace=values["grace"]))
    except StartError as e:  # a store that cannot be opened, a bad option: one clear line, not a traceback
        click.echo(f"seedtape: {e}", err=True)
        sys.exit(2)
