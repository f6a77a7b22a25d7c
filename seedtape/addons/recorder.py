"""The seedtape mitmproxy addon: translates flows into Tapedeck calls.

It reads exchanges and reports what happened to them (the core decides every
status); the one module that touches mitmproxy internals is internals.py.
Loadable on its own:  mitmdump --mode reverse:https://api.openai.com \\
    -s seedtape/addons/recorder.py --set seedtape_mode=replay
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Iterable, Sequence
from pathlib import Path
from typing import Any, Optional

from mitmproxy import ctx, exceptions, http

from seedtape.addons import internals
from seedtape.addons.shutdown import EXCHANGE, InFlight
from seedtape.proxy import bodies, errors, options, printable, wire, workerrun
from seedtape.proxy.deck import Tapedeck
from seedtape.proxy.exchange import Exchange
from seedtape.proxy.headers import CREDENTIAL_HEADERS
from seedtape.proxy.modes import Mode
from seedtape.proxy.streams.pacer import Pacer
from seedtape.proxy.tapes import unused
from seedtape.proxy.tapes.store import Store, StoreError
from seedtape.proxy.tapes.writer import GroupWriter

log = logging.getLogger("seedtape")
log.addFilter(printable.LogEscaper())  # every line: paths and fingerprints come from clients and upstreams

OWN_REPLY = "seedtape_own_reply"  # flow.metadata mark: the response hook must not record it
TIMER = "seedtape_timer"  # flow.metadata: the upstream timeout's handle
PACED = "seedtape_paced"  # flow.metadata mark: served by the pacer, not to be recorded
LEFT_EARLY = "seedtape_left_early"  # flow.metadata mark: the client left before the upstream completed the stream

_MITM_TYPES: dict[type, Any] = {str: str, int: str, float: str, bool: bool, list: Sequence[str]}  # see Option.to_text
_STORE_OPTIONS = {  # a change of one of these builds a new deck
    "seedtape_store",
    "seedtape_map_size",
    "seedtape_remote",
    "seedtape_remote_prefix",
    "seedtape_remote_readonly",
    "seedtape_remote_required",
}


def upstream_of(modes: Sequence[str]) -> str:
    for m in modes:
        if m.startswith("reverse:"):
            return m[len("reverse:") :]
    return "(no reverse upstream configured)"


def make_response(status: int, headers: list[tuple[str, str]], body: bytes) -> http.Response:
    """A response of seedtape's own; every header value is made safe (framing is computed by mitmproxy)."""
    return internals.own_response(status, [(k.encode(), wire.header_value(v).encode()) for k, v in headers], body)


def _credentials(flow: http.HTTPFlow) -> dict[str, str]:
    """The client's own credential headers, for an embeddings call made on its behalf (never stored)."""
    return {k: v for k, v in flow.request.headers.items() if k.lower() in CREDENTIAL_HEADERS}


class Seedtape:
    def __init__(self, *, report_errors: bool = True) -> None:
        """``report_errors``: log a bad start-up value (mitmdump ends its start on it); `seedtape serve`
        passes False and reports ``refusal`` itself, in one line."""
        self.report_errors = report_errors
        self.deck: Tapedeck | None = None
        self.store: Store | None = None
        self.pacer: Pacer | None = None
        self._pending: set[asyncio.Task] = set()
        self.refusal = ""  # a bad option at start-up: every request is refused with it
        self.values: dict[str, Any] = {}  # the option values by name, parsed and checked
        self.in_flight = InFlight()  # what a graceful stop waits for

    def _deck(self) -> Tapedeck:
        """The deck, for the flow hooks: they act only on flows requestheaders let through, which needs one.

        A method, not a property: mitmproxy reads every attribute of an addon when it loads it."""
        if self.deck is None:
            raise RuntimeError("seedtape is not configured")
        return self.deck

    def load(self, loader) -> None:
        internals.install()
        for o in options.offered("mitmproxy"):
            kind = Optional[str] if o.optional else _MITM_TYPES[o.kind]  # noqa: UP045 - mitmproxy's own spelling
            loader.add_option(o.mitmproxy_name, kind, o.to_text(o.default), o.help, choices=o.choices)

    def configure(self, updated: set[str]) -> None:
        """React to what changed. A bad value is one line naming the option and what is allowed: an
        OptionsError (mitmproxy rolls the change back), or at start-up under mitmdump, where mitmproxy would
        print that with a traceback, an error log line that ends the start (and every request is refused)."""
        values, problems = {}, []
        for o in options.offered("mitmproxy"):
            try:
                values[o.name] = o.from_text(getattr(ctx.options, o.mitmproxy_name))
                if o.mitmproxy_name in updated:
                    o.validate(values[o.name])
            except ValueError as e:
                problems.append(f"{o.mitmproxy_name}: {e}")
        if problems:
            self._refuse_options("; ".join(problems))
            return
        self.refusal, self.values = "", values
        if (
            "listen_host" in ctx.options and not wire.is_loopback(ctx.options.listen_host) and not ctx.options.seedtape_auth_token
        ):  # mitmdump listens on every interface by default
            raise exceptions.OptionsError(
                f"seedtape: listening on {ctx.options.listen_host or 'every interface'} would let other machines use "
                "this proxy and its store: add --listen-host 127.0.0.1, or --set seedtape_auth_token=TOKEN"
            )
        if Mode(values["mode"]) is Mode.REPLAY and not values["remote"] and not (Path(values["store"]) / "data.mdb").exists():
            self._refuse_options(
                f"--mode replay serves recordings only, but there is no store at {values['store']} "
                "(a typo in --store?): record into it with --mode auto, or `seedtape import` tapes into it"
            )
            return
        if self.store is None or updated & _STORE_OPTIONS:  # (built by serve with the real values deferred)
            try:
                store = Store(values["store"], map_size=values["map_size"])
            except StoreError as e:
                self._refuse_options(str(e))
                return
            if self.deck is not None:
                self.deck.stop_writing()  # what it queued goes to the old store first
                if self.deck.shared is not None:
                    self.deck.shared.stop()
            if self.store is not None:
                self.store.close()
            self.store, self.deck = store, None  # a new store: a new deck (its miss index and use are the store's)
        upstream = upstream_of(ctx.options.mode)
        internals.configure(upstream, values["max_body"])
        settings = options.settings(values, upstream)
        if self.deck is None:
            try:
                shared = self._shared(values)
            except ValueError as e:
                self._refuse_options(f"--remote: {e}")
                return
            if self.refusal:
                return
            after = shared.push_queued if shared is not None else None
            self.deck = Tapedeck(self.store, settings, GroupWriter(self.store, after=after), shared)
        elif self.deck.settings != settings:
            self.deck.reconfigure(settings)
        if "connection_strategy" in ctx.options and ctx.options.connection_strategy != "lazy":
            # Eager connects break offline replay and drop clients when the upstream is down.
            ctx.options.connection_strategy = "lazy"

    def _shared(self, values: dict[str, Any]):
        """The remote tier for --remote (None without one); with --remote-required, refused while it does not answer."""
        if not values["remote"]:
            return None
        from seedtape.proxy.tapes.remote import Remote, RemoteConfig, RemoteError
        from seedtape.proxy.tapes.shared import SharedTier

        assert self.store is not None, "configure opened the store first"
        wait = values["upstream_timeout"]  # a hung Redis holds a client no longer than the upstream may
        config = RemoteConfig(values["remote"], values["remote_prefix"], values["remote_readonly"], min(wait or 5.0, 5.0))
        remote = Remote(config)
        if values["remote_required"]:
            try:
                remote.ping()
            except RemoteError as e:
                remote.close()
                self._refuse_options(f"{e} (--remote-required: not starting without it)")
                return None
        return SharedTier(self.store, remote, values["remote_readonly"]).start()

    def _refuse_options(self, why: str) -> None:
        """A bad value: rolled back when it changes a running proxy; at start-up, refused (see __init__)."""
        if self.deck is not None:
            raise exceptions.OptionsError(why)
        self.refusal = why
        if self.report_errors:
            log.error("seedtape: %s", why)

    async def running(self) -> None:
        if self.deck is None:
            return  # refused at start-up (the error line says why)
        self.pacer = await Pacer().start()
        ps = ctx.master.addons.get("proxyserver")
        addrs = ps.listen_addrs() if ps else []
        for host, port, *_ in addrs[:1]:
            if host in ("", "0.0.0.0", "::"):  # every interface: this machine reaches it on loopback
                log.info("seedtape: listening on every interface, port %s; other machines use this machine's address", port)
                host = "127.0.0.1"
            host = f"[{host}]" if ":" in host else host
            print(f"OPENAI_BASE_URL=http://{host}:{port}/v1", flush=True)
        s = self.deck.settings
        assert self.store is not None, "configure built the deck on a store"
        seed = s.seed.seed if s.seed.inject else "off"
        if s.mode is Mode.REPLAY:  # replay never contacts the upstream: naming one would mislead
            log.info("seedtape: mode=replay store=%s seed=%s (offline: the upstream is never contacted)", self.store.path, seed)
            if self.store.stats_counts()["entries"] == 0 and self.deck.shared is None:  # never a scan: a store may hold millions
                log.warning(
                    "seedtape: the store at %s holds no recordings: in replay mode every request will miss "
                    "(record with --mode auto, or `seedtape import` tapes, first)",
                    self.store.path,
                )
        else:
            log.info("seedtape: mode=%s store=%s upstream=%s seed=%s", s.mode.value, self.store.path, s.upstream, seed)
        if (tier := self.deck.shared) is not None:
            log.info("seedtape: remote tier %s%s", tier.name, " (read-only)" if tier.readonly else "")

    async def done(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        report = self.values.get("report_unused", "")
        run = workerrun.current()
        if run is not None and self.deck is not None:  # a worker: the supervisor writes the one report
            try:
                run.save_served(self.deck.served)
            except OSError as e:
                log.error("seedtape: could not save what this worker served in %s: %s", run.directory, e)
        elif report and self.deck is not None and self.store is not None:
            try:
                n = unused.write_report(self.store, self.deck.served, report)
                log.info("seedtape: %d recordings were not used in this run: listed in %s", n, report)
            except OSError as e:
                log.error("seedtape: could not write the unused report %s: %s", report, e)
        if self.pacer is not None:
            await self.pacer.stop()
        if self.deck is not None:
            await self.deck.close()  # its writer pushes what it committed last
            if self.deck.shared is not None:
                await asyncio.to_thread(self.deck.shared.stop)
        if self.store is not None:
            self.store.close()
            self.store = None

    # -- flow hooks ---------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Refuse early what must not be read: a missing auth token, a body over --max-body."""
        self.in_flight.add(flow)
        if self.refusal or self.deck is None:  # fail closed: never a live call without seedtape's rules
            self._reply(flow, errors.internal(self.refusal or "seedtape is not configured"))
            return
        if flow.request.method == "PRI" and flow.request.path == "*":  # an HTTP/2 preface read as HTTP/1
            self._reply(flow, errors.http2_cleartext())
            return
        token = self.values.get("auth_token", "")
        if token and not hmac.compare_digest(flow.request.headers.get(wire.AUTH_TOKEN, ""), token):
            self._reply(flow, errors.unauthorized())
            return
        length = flow.request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.values["max_body"]:
            self._reply(flow, errors.too_large(f"it has {length} bytes", self.values["max_body"]))

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:  # answered earlier, by seedtape or another addon
            return
        req = flow.request
        try:
            self._request(flow)
        except Exception as e:  # fail closed: never fall through to a live call
            log.exception("seedtape: internal error on %s %s", req.method, wire.log_path(req.path))
            self._reply(flow, errors.internal(f"{type(e).__name__}: {e}"))
        if flow.response is None:
            self._arm(flow)  # it goes upstream: time it

    def _request(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        headers = {k.lower(): v for k, v in req.headers.items()}
        for h in wire.PROXY_ONLY_REQUEST_HEADERS:
            req.headers.pop(h, None)
        limit = self.values["max_body"]
        try:
            content = bodies.decode(req.raw_content or b"", req.headers.get("content-encoding", ""), limit)
        except bodies.TooLarge as e:
            self._reply(flow, errors.too_large(str(e), limit))
            return
        except ValueError as e:
            self._reply(flow, errors.bad_request(f"its body could not be decoded ({e})"))
            return
        ex = self._deck().begin(req.method, req.path, headers, content)
        flow.metadata[EXCHANGE] = ex
        if ex.forward_path is not None:
            req.path = ex.forward_path
        if ex.reply is not None and ex.reply.pace and self.pacer is not None:
            # A paced stream is played by the loopback pacer and streams back like a live one.
            flow.metadata[PACED] = True
            req.scheme, req.host, req.port = "http", "127.0.0.1", self.pacer.port
            req.path = self.pacer.register(ex.reply)
            self._log(ex, ex.reply.status)
            return
        if ex.reply is not None:
            flow.response = make_response(ex.reply.status, ex.reply.headers, ex.reply.body)
            flow.metadata[OWN_REPLY] = True
            self._log(ex, ex.reply.status)
            return
        if ex.forward_body is not None:
            req.headers.pop("content-encoding", None)  # the rewritten body goes out plain
            req.content = ex.forward_body
        if ex.stream:
            req.headers["accept-encoding"] = "identity"  # so the tap reads plain events

    def _reply(self, flow: http.HTTPFlow, err: errors.SeedtapeError) -> None:
        flow.response = make_response(err.status, [*err.all_headers().items(), (wire.STATUS, "error")], err.body())
        flow.metadata[OWN_REPLY] = True
        log.warning(
            "seedtape: error %s %s -> %s %s", flow.request.method, wire.log_path(flow.request.path), err.status, err.message
        )

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get(OWN_REPLY) or flow.response is None:
            return
        if flow.metadata.get(PACED):
            flow.response.headers.pop("connection", None)  # the pacer closes its side; the client's stays open
            flow.response.stream = True
            return
        if not flow.response.headers.get("content-type", "").startswith("text/event-stream"):
            return
        if flow.request.http_version == "HTTP/1.0":
            # An HTTP/1.0 client cannot read chunked framing: the stream then ends when the connection closes.
            flow.response.headers.pop("transfer-encoding", None)
        # Pass events through as they arrive; headers go out right after this hook.
        ex: Exchange | None = flow.metadata.get(EXCHANGE)
        tape = self._deck().start_stream(ex) if ex is not None else None
        if ex is None or tape is None:

            def passthrough(data: bytes) -> bytes:
                self._arm(flow)
                return data

            flow.response.stream = passthrough
        else:
            held = bytearray()  # the stream's end, from the event that completed it: sent once it is recorded

            def tap(data: bytes) -> Iterable[bytes]:
                self._arm(flow)  # a stream may stall: the timeout runs from the last event
                self._feed(flow, ex, data)
                if ex.pending is not None or held:  # recording: the client gets the end once it is on disk
                    held.extend(data)
                    if data:
                        return ()  # not b"": mitmproxy would send an empty chunk, which ends a chunked body
                    out = bytes(held)
                    held.clear()
                    return (out,)
                return (data,) if data else ()

            flow.response.stream = tap
            internals.finish_before_end(flow)  # seedtape_stream_end runs before the tap's last call
            # A client that leaves early (the SDK's .stream() helper at a length finish) does not end the upstream
            # exchange: it is read to its end and recorded if the upstream completes it.
            internals.read_to_end(flow)
        if ex is not None:
            self._add_headers(flow.response, ex)

    def _feed(self, flow: http.HTTPFlow, ex: Exchange, data: bytes) -> None:
        """The next piece of a taped stream (``b""``: its end); settles its audit event once it is decided."""
        if ex.tape is None:
            return
        completed = ex.upstream_completed
        assert flow.response is not None, "a tapped stream has a response"
        try:  # records once the upstream completed it
            self._deck().feed_stream(ex, data, flow.response.status_code, list(flow.response.headers.items()))
        except Exception:
            log.exception("seedtape: could not tape the stream of %s", wire.log_path(flow.request.path))
            ex.unrecorded("taping failed (see the log)")
        if ex.upstream_completed and not completed and internals.client_left(flow):
            flow.metadata[LEFT_EARLY] = True
        if ex.tape is None and ex.pending is None and ex.divergence is not None:
            self._settle_later(ex, _credentials(flow))

    async def seedtape_stream_end(self, flow: http.HTTPFlow) -> None:
        """A taped stream's upstream answer ended: it is recorded (on disk) before the client gets its end."""
        ex: Exchange | None = flow.metadata.get(EXCHANGE)
        if ex is not None:
            self._feed(flow, ex, b"")  # a stream that ends without a final event is complete only now
            await self._seedtape_stream_end(flow, ex)

    async def _seedtape_stream_end(self, flow: http.HTTPFlow, ex: Exchange) -> None:
        if ex.pending is None:
            return
        if not await self._deck().committed(ex):
            self._not_written(flow, ex)
        if ex.divergence is not None:
            self._settle_later(ex, _credentials(flow))

    @staticmethod
    def _not_written(flow: http.HTTPFlow, ex: Exchange) -> None:
        log.warning("seedtape: %s %s: %s", flow.request.method, wire.log_path(flow.request.path), ex.note)

    def _settle_later(self, ex: Exchange, auth: dict[str, str]) -> None:
        """A stream's verdict is known after its headers left: its audit event is stored in the background."""
        self._later(self._settle(ex, auth))

    def _later(self, work) -> None:
        """Run ``work`` in the background; ``done`` waits for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle(self, ex: Exchange, auth: dict[str, str]) -> None:
        try:
            await self._deck().settle(ex, auth)
        except Exception:
            log.exception("seedtape: could not store the audit event of key=%s", ex.key[:12])

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Record a live JSON answer before it goes out; returns the work to await (mitmproxy awaits it).

        Not a coroutine function: a hit, a stream (taped as it passed) or a passthrough is
        finished here at once, without a coroutine per request."""
        self._disarm(flow)
        internals.release(flow)
        ex: Exchange | None = flow.metadata.get(EXCHANGE)
        resp = flow.response
        if ex is None or resp is None or flow.metadata.get(OWN_REPLY) or flow.metadata.get(PACED):
            self.in_flight.remove(flow)
            return None
        if resp.stream:  # taped (and recorded) by the tap as the body passed
            self.in_flight.remove(flow)
            self._log(ex, resp.status_code, left=bool(flow.metadata.get(LEFT_EARLY)))
            return None
        return self._record_answer(flow, ex, resp)

    async def _record_answer(self, flow: http.HTTPFlow, ex: Exchange, resp: http.Response) -> None:
        try:
            content = resp.get_content(strict=False) or b""
            self._deck().finish(ex, resp.status_code, list(resp.headers.items()), content)
            if not await self._deck().committed(ex):  # the client gets its answer once the recording is on disk
                self._not_written(flow, ex)
            await self._deck().settle(ex, _credentials(flow))
        except Exception:
            log.exception("seedtape: could not record %s %s", flow.request.method, wire.log_path(flow.request.path))
            ex.unrecorded("recording failed (see the log)")
        finally:
            self.in_flight.remove(flow)  # a graceful stop waits for the recording too
        self._add_headers(resp, ex)
        self._log(ex, resp.status_code)

    def error(self, flow: http.HTTPFlow) -> None:
        self._disarm(flow)
        self.in_flight.remove(flow)
        internals.release(flow)
        ex: Exchange | None = flow.metadata.get(EXCHANGE)
        msg = internals.describe_error(flow.error.msg if flow.error else "unknown error", self.values.get("max_body", 0))
        path = wire.log_path(flow.request.path)
        if ex is not None and ex.upstream_completed:  # e.g. the SDK hangs up at [DONE]: an ordinary exchange
            if ex.pending is not None:  # cut before its end was sent: the recording still lands
                self._later(self._seedtape_stream_end(flow, ex))
            status = flow.response.status_code if flow.response is not None else 200
            self._log(ex, status, left=bool(flow.metadata.get(LEFT_EARLY)))
            return
        if internals.client_left(flow):
            msg += " (the client had left before the end)"
        if self.in_flight.stopping:  # the proxy cut it (not the client), and its stop line named it
            msg = self.in_flight.stopping
        else:
            log.warning("seedtape: %s %s failed, nothing recorded: %s", flow.request.method, path, msg)
        if ex is not None:
            ex.failed(msg)  # a cut stream is never recorded

    def client_disconnected(self, client) -> None:
        internals.forget(client.id)

    # -- upstream timeout ---------------------------------------------------

    def _arm(self, flow: http.HTTPFlow) -> None:
        """(Re)start the flow's upstream timer: no headers, or no next event, within the timeout aborts it."""
        self._disarm(flow)
        seconds = self.values.get("upstream_timeout", 0)
        if seconds > 0 and flow.live:
            flow.metadata[TIMER] = asyncio.get_running_loop().call_later(seconds, self._timed_out, flow, seconds)

    @staticmethod
    def _disarm(flow: http.HTTPFlow) -> None:
        if (timer := flow.metadata.pop(TIMER, None)) is not None:
            timer.cancel()

    def _timed_out(self, flow: http.HTTPFlow, seconds: float) -> None:
        flow.metadata.pop(TIMER, None)
        if internals.client_backlogged(flow):  # a slow reader, not a stalled upstream: wait on
            self._arm(flow)
            return
        started = flow.response is not None and bool(flow.response.stream)  # bytes went out: only a cut is left
        err = None if started else errors.upstream_timeout(self._deck().settings.upstream, seconds)
        if internals.abort_upstream(flow, err):
            ex: Exchange | None = flow.metadata.get(EXCHANGE)
            if ex is not None:
                ex.timed_out(seconds)
            log.warning(
                "seedtape: %s %s: the upstream sent nothing for %gs; aborted, nothing recorded",
                flow.request.method,
                wire.log_path(flow.request.path),
                seconds,
            )

    # -- helpers ------------------------------------------------------------

    @staticmethod
    def _add_headers(response: http.Response, ex: Exchange) -> None:
        for k, v in ex.headers():
            response.headers[k] = wire.header_value(v)

    @staticmethod
    def _log(ex: Exchange, status: int, *, left: bool = False) -> None:
        """``left``: the client left before the upstream completed the answer (which was read to its end)."""
        if log.isEnabledFor(logging.INFO):  # --quiet: a hit does not even build its line
            log.info(ex.log_line(status) + (" (the client left before the end)" if left else ""))


addons = [Seedtape()]
