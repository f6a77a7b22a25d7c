"""`seedtape serve`: a lean embedded mitmproxy in reverse mode carrying the seedtape addon.

mitmdump hands every event to ~36 default addons; a Master with only the
ones seedtape needs serves replay hits about twice as fast.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import click

from seedtape.proxy import wire
from seedtape.proxy.key.canonical import DEFAULT_IGNORED_FIELDS
from seedtape.proxy.key.seed import DEFAULT_SEED
from seedtape.proxy.modes import MODE_NAMES


def build_master(options: dict):
    """A mitmproxy Master with core, proxyserver, next-layer, TLS, error check and seedtape."""
    from mitmproxy import master
    from mitmproxy import options as mopts
    from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig

    from seedtape.addons.recorder import Seedtape

    opts = mopts.Options()
    m = master.Master(opts, with_termlog=True)
    m.addons.add(
        core.Core(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        errorcheck.ErrorCheck(repeat_errors_on_stderr=True),
    )
    # Options registered by the proxyserver addon are set after adding it, and the listener's
    # address before seedtape's addon sees any option: a failed update rolls back to these values.
    options = dict(options)
    opts.update(connection_strategy="lazy", listen_host=options.pop("listen_host", "127.0.0.1"))
    m.addons.add(Seedtape())
    opts.update(**options)
    return m


async def _run(options: dict) -> None:
    m = build_master(options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, m.shutdown)
    await m.run()
    # Client connections still open at shutdown are cancelled; asyncio would print each as an error.
    loop.set_exception_handler(
        lambda lp, c: None if isinstance(c.get("exception"), asyncio.CancelledError) else lp.default_exception_handler(c)
    )


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


@click.command()
@click.option("--upstream", default="https://api.openai.com", show_default=True, envvar="SEEDTAPE_UPSTREAM",
              help="The OpenAI-compatible API to forward to (env SEEDTAPE_UPSTREAM).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on; one other machines can reach needs --auth-token.")
@click.option("--port", default=8787, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0 picks a free one; the printed line names it).")
@click.option("--store", default=".seedtape", show_default=True, envvar="SEEDTAPE_STORE",
              type=click.Path(file_okay=False), help="LMDB store directory (env SEEDTAPE_STORE).")
@click.option("--mode", type=click.Choice(MODE_NAMES), default="auto", show_default=True, envvar="SEEDTAPE_MODE",
              help="auto: replay hits, record misses. replay: offline, a miss is an error. "
                   "record: always live, store. audit: always live, compare with the recording, store nothing. "
                   "passthrough: forward untouched (env SEEDTAPE_MODE).")
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True,
              help="Seed injected into chat/completions requests that carry none.")
@click.option("--no-seed-injection", is_flag=True, help="Forward requests without a seed as they are.")
@click.option("--fingerprint", default=None, metavar="FP",
              help="Pin replay to this system_fingerprint (default: the newest recorded per request).")
@click.option("--ignore-field", multiple=True, metavar="FIELD",
              help=f"Top-level body field kept out of the request key; repeatable. "
                   f"Replaces the default list ({', '.join(DEFAULT_IGNORED_FIELDS)}).")
@click.option("--embedding-model", default=None, metavar="NAME",
              help="In audit, record and auto mode, also measure the cosine distance of live and recorded outputs "
                   "with this embedding model, fetched through the upstream's /v1/embeddings.")
@click.option("--replay-pace", type=click.FloatRange(min=0), default=0.0, show_default=True, metavar="FACTOR",
              help="Replay recorded streams with their recorded gaps between events times FACTOR (0: at once).")
@click.option("--miss-hint", default="", metavar="TEXT",
              help="Replace the advice on how to record that a replay miss error gives (used by the pytest plugin).")
@click.option("--upstream-timeout", type=click.FloatRange(min=0), default=600.0, show_default=True, metavar="SECONDS",
              help="Give up on an upstream that sends no headers, or no next streamed event, for this long (0: never).")
@click.option("--max-body", type=click.IntRange(min=1), default=64 * 1024 * 1024, show_default=True, metavar="BYTES",
              help="Refuse request bodies larger than this with a 413; a larger non-streamed answer gets a 502.")
@click.option("--auth-token", default=None, envvar="SEEDTAPE_AUTH_TOKEN", metavar="TOKEN",
              help="Clients must send this in the seedtape-token header (required with a non-loopback --host; "
                   "env SEEDTAPE_AUTH_TOKEN).")
@click.option("--redact-header", multiple=True, metavar="NAME", help="Never store this response header; repeatable.")
@click.option("--redact-field", multiple=True, metavar="PATH",
              help="Store this field as [scrubbed]: request.STEPS or response.STEPS, steps separated by dots, "
                   "* for every item (e.g. request.body.metadata.customer, response.id); repeatable.")
@click.option("--key-by-credential", is_flag=True,
              help="Keep recordings of different API keys apart: a salted hash of the key enters the request key.")
@click.option("--credential-salt", default="", envvar="SEEDTAPE_CREDENTIAL_SALT", metavar="SALT",
              help="Salt for --key-by-credential, the same on every machine that shares tapes "
                   "(default: a random salt kept in the store; env SEEDTAPE_CREDENTIAL_SALT).")
@click.option("--report-unused", default=None, metavar="FILE", type=click.Path(dir_okay=False),
              help="When the proxy stops, write the recordings that no request used in this run to FILE (JSON).")
@click.option("--quiet", "-q", is_flag=True, help="Log warnings only, not one line per request.")
def serve(upstream, host, port, store, mode, seed, no_seed_injection, fingerprint, ignore_field, embedding_model, replay_pace, miss_hint, upstream_timeout, max_body,
          auth_token, redact_header, redact_field, key_by_credential, credential_salt, report_unused, quiet):
    """Run the recording/replay proxy in front of the --upstream API."""
    upstream = upstream.rstrip("/")
    if not upstream.startswith(("http://", "https://")):
        raise click.BadParameter(f"{upstream!r} must start with http:// or https://", param_hint="--upstream")
    from seedtape.proxy.tapes import scrub

    for f in redact_field:
        try:
            scrub.parse_field(f)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--redact-field") from None
    if not wire.is_loopback(host) and not auth_token:
        raise click.BadParameter(
            f"{host} is reachable from other machines: set --auth-token (clients send it in the seedtape-token "
            "header) to serve there, or keep the default 127.0.0.1", param_hint="--host")
    if port and (why := _cannot_listen(host, port)):
        raise click.UsageError(f"cannot listen on {host}:{port}: {why}. Pick another --port (0 picks a free one).")
    options = dict(
        mode=[f"reverse:{upstream}"],
        listen_host=host,
        listen_port=port,
        seedtape_store=store,
        seedtape_mode=mode,
        seedtape_seed=seed,
        seedtape_seed_injection=not no_seed_injection,
        seedtape_fingerprint=fingerprint,
        seedtape_replay_pace=replay_pace,
        seedtape_embedding_model=embedding_model,
        seedtape_miss_hint=miss_hint,
        seedtape_upstream_timeout=upstream_timeout,
        seedtape_max_body=max_body,
        body_size_limit=str(max_body),  # mitmproxy refuses larger bodies before reading them
        seedtape_auth_token=auth_token or "",
        seedtape_redact_header=list(redact_header),
        seedtape_redact_field=list(redact_field),
        seedtape_key_by_credential=key_by_credential,
        seedtape_credential_salt=credential_salt,
        seedtape_report_unused=report_unused or "",
        # mitmproxy's own idle timeout must not cut a call seedtape is still willing to wait for
        tcp_timeout=max(600, int(upstream_timeout) + 60),
        termlog_verbosity="warn" if quiet else "info",
    )
    if ignore_field:
        options["seedtape_ignore_field"] = list(ignore_field)
    logging.getLogger("seedtape").setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        asyncio.run(_run(options))
    except Exception as e:  # a store error or bad option at start: one clear line, not a traceback
        from mitmproxy.exceptions import OptionsError

        from seedtape.proxy.tapes.store import StoreError

        if isinstance(e, (StoreError, OptionsError)):
            click.echo(f"seedtape: {e}", err=True)
            sys.exit(2)
        raise
