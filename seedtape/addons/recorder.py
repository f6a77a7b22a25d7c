"""The seedtape mitmproxy addon: translates flows into Tapedeck calls.

Loadable on its own:  mitmdump --mode reverse:https://api.openai.com \\
    -s seedtape/addons/recorder.py --set seedtape_mode=replay
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Sequence
from typing import Optional

import httpx
from mitmproxy import ctx, exceptions, http

from seedtape.addons import internals
from seedtape.proxy import bodies, errors, printable, wire
from seedtape.proxy.audit import divergence, embedder
from seedtape.proxy.exchange import Exchange, Settings, Tapedeck
from seedtape.proxy.key.canonical import DEFAULT_IGNORED_FIELDS
from seedtape.proxy.key.seed import DEFAULT_SEED, SeedPolicy
from seedtape.proxy.modes import MODE_NAMES, Mode
from seedtape.proxy.streams.pacer import Pacer
from seedtape.proxy.tapes import scrub, unused
from seedtape.proxy.tapes.store import Store, StoreError

log = logging.getLogger("seedtape")
log.addFilter(printable.LogEscaper())  # every line: paths and fingerprints come from clients and upstreams

OWN_REPLY = "seedtape_own_reply"  # flow.metadata mark: the response hook must not record it
EXCHANGE = "seedtape_exchange"
TIMER = "seedtape_timer"  # flow.metadata: the upstream timeout's handle
PACED = "seedtape_paced"  # flow.metadata mark: served by the pacer, not to be recorded


def upstream_of(modes: Sequence[str]) -> str:
    for m in modes:
        if m.startswith("reverse:"):
            return m[len("reverse:") :]
    return "(no reverse upstream configured)"


def make_response(status: int, headers: list[tuple[str, str]], body: bytes) -> http.Response:
    """A response of seedtape's own; every header value is made safe (framing is computed by mitmproxy)."""
    return http.Response.make(status, body, [(k.encode(), wire.header_value(v).encode()) for k, v in headers])


class Seedtape:
    def __init__(self) -> None:
        self.deck: Tapedeck | None = None
        self.store: Store | None = None
        self.pacer: Pacer | None = None

    def load(self, loader) -> None:
        loader.add_option("seedtape_store", str, ".seedtape", "Directory of the LMDB tape store.")
        loader.add_option(
            "seedtape_mode", str, Mode.AUTO.value, "auto: replay hits, record misses; replay: offline only; "
            "record: always live, store; passthrough: forward untouched.", choices=MODE_NAMES
        )
        loader.add_option("seedtape_seed", int, DEFAULT_SEED, "Seed injected into requests that carry none.")
        loader.add_option("seedtape_seed_injection", bool, True, "Inject seedtape_seed into seedable requests.")
        loader.add_option("seedtape_fingerprint", Optional[str], None, "Pin replay to one system_fingerprint.")
        loader.add_option(
            "seedtape_ignore_field", Sequence[str], list(DEFAULT_IGNORED_FIELDS),
            "Top-level request fields that do not enter the request key.",
        )
        loader.add_option("seedtape_embedding_model", Optional[str], None,
                          "Also compare live and recorded outputs by the cosine distance of their embeddings.")
        loader.add_option("seedtape_miss_hint", str, "", "Text that tells the user how to record a replay miss.")
        loader.add_option("seedtape_replay_pace", float, 0.0,
                          "Replay streams with their recorded gaps times this factor (0: send at once).")
        loader.add_option("seedtape_upstream_timeout", float, 600.0,
                          "Seconds to wait for the upstream's headers, and between streamed events (0: no limit).")
        loader.add_option("seedtape_max_body", int, 64 * 1024 * 1024, "Largest request body accepted, in bytes.")
        loader.add_option("seedtape_auth_token", str, "", "Token clients must send in the seedtape-token header.")
        loader.add_option("seedtape_redact_header", Sequence[str], [], "Response headers never stored (beyond the built-in rules).")
        loader.add_option("seedtape_redact_field", Sequence[str], [],
                          "Fields stored as [scrubbed]: request.STEPS or response.STEPS (dotted; * matches all).")
        loader.add_option("seedtape_key_by_credential", bool, False,
                          "A salted hash of the client's API key enters the request key (separates teams).")
        loader.add_option("seedtape_credential_salt", str, "",
                          "Salt for seedtape_key_by_credential, shared so tapes replay in other stores.")
        loader.add_option("seedtape_report_unused", str, "",
                          "On exit, write the recordings no request used in this run to this JSON file.")
        loader.add_option("seedtape_map_size", int, 256 * 1024 * 1024, "Initial LMDB map size in bytes; it grows as needed.")

    def configure(self, updated: set[str]) -> None:
        if "seedtape_store" in updated or "seedtape_map_size" in updated or self.store is None:
            if self.store is not None:
                self.store.close()
            try:
                self.store = Store(ctx.options.seedtape_store, map_size=ctx.options.seedtape_map_size)
            except StoreError as e:  # mitmproxy reports OptionsError as a plain startup error
                raise exceptions.OptionsError(str(e)) from None
        upstream = upstream_of(ctx.options.mode)
        internals.install(upstream, ctx.options.seedtape_max_body)
        self.deck = Tapedeck(
            self.store,
            Settings(
                mode=Mode(ctx.options.seedtape_mode),
                seed=SeedPolicy(ctx.options.seedtape_seed, ctx.options.seedtape_seed_injection),
                ignored_fields=frozenset(ctx.options.seedtape_ignore_field),
                fingerprint=ctx.options.seedtape_fingerprint or None,
                upstream=upstream,
                replay_pace=max(0.0, ctx.options.seedtape_replay_pace),
                embedding_model=ctx.options.seedtape_embedding_model or None,
                miss_hint=ctx.options.seedtape_miss_hint,
                redact_headers=frozenset(h.lower() for h in ctx.options.seedtape_redact_header),
                redact_fields=tuple(scrub.parse_field(f) for f in ctx.options.seedtape_redact_field),
                key_by_credential=ctx.options.seedtape_key_by_credential,
                credential_salt=ctx.options.seedtape_credential_salt,
            ),
        )
        if "listen_host" in ctx.options and not wire.is_loopback(ctx.options.listen_host) \
                and not ctx.options.seedtape_auth_token:  # mitmdump listens on every interface by default
            raise exceptions.OptionsError(
                f"seedtape: listening on {ctx.options.listen_host or 'every interface'} would let other machines use "
                "this proxy and its store: add --listen-host 127.0.0.1, or --set seedtape_auth_token=TOKEN")
        if "connection_strategy" in ctx.options and ctx.options.connection_strategy != "lazy":
            # Eager connects break offline replay and drop clients when the upstream is down.
            ctx.options.connection_strategy = "lazy"

    async def running(self) -> None:
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
        log.info(
            "seedtape: mode=%s store=%s upstream=%s seed=%s",
            s.mode.value, self.store.path, s.upstream, s.seed.seed if s.seed.inject else "off",
        )

    async def done(self) -> None:
        if ctx.options.seedtape_report_unused and self.deck is not None:
            try:
                n = unused.write_report(self.store, self.deck.served, ctx.options.seedtape_report_unused)
                log.info("seedtape: %d recordings were not used in this run: listed in %s", n, ctx.options.seedtape_report_unused)
            except OSError as e:
                log.error("seedtape: could not write the unused report %s: %s", ctx.options.seedtape_report_unused, e)
        if self.pacer is not None:
            await self.pacer.stop()
        if self.store is not None:
            self.store.close()
            self.store = None

    # -- flow hooks ---------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Refuse early what must not be read: a missing auth token, a body over --max-body."""
        if flow.request.method == "PRI" and flow.request.path == "*":  # an HTTP/2 preface read as HTTP/1
            self._reply(flow, errors.http2_cleartext())
            return
        token = ctx.options.seedtape_auth_token
        if token and not hmac.compare_digest(flow.request.headers.get(wire.AUTH_TOKEN, ""), token):
            self._reply(flow, errors.unauthorized())
            return
        length = flow.request.headers.get("content-length", "")
        if length.isdigit() and int(length) > ctx.options.seedtape_max_body:
            self._reply(flow, errors.too_large(f"it has {length} bytes", ctx.options.seedtape_max_body))

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
        limit = ctx.options.seedtape_max_body
        try:
            content = bodies.decode(req.raw_content or b"", req.headers.get("content-encoding", ""), limit)
        except bodies.TooLarge as e:
            self._reply(flow, errors.too_large(str(e), limit))
            return
        except ValueError as e:
            self._reply(flow, errors.bad_request(f"its body could not be decoded ({e})"))
            return
        ex = self.deck.begin(req.method, req.path, headers, content)
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
        log.warning("seedtape: error %s %s -> %s %s", flow.request.method, wire.log_path(flow.request.path), err.status, err.message)

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
        tape = self.deck.start_stream(ex) if ex is not None else None
        if tape is None:
            def passthrough(data: bytes) -> bytes:
                self._arm(flow)
                return data

            flow.response.stream = passthrough
        else:
            status, headers = flow.response.status_code, list(flow.response.headers.items())

            def tap(data: bytes) -> bytes:
                self._arm(flow)  # a stream may stall: the timeout runs from the last event
                try:
                    tape.feed(data)
                    if (tape.done or not data) and ex.tape is not None:  # record as soon as the upstream completed
                        self.deck.finish_stream(ex, status, headers)
                        self.deck.note_divergence(ex)
                except Exception:
                    log.exception("seedtape: could not tape the stream of %s", wire.log_path(flow.request.path))
                    ex.tape, ex.status, ex.note = None, "unrecorded", "taping failed (see the log)"
                return data

            flow.response.stream = tap
        if ex is not None:
            self._add_headers(flow, ex)

    async def _embedding_distance(self, ex: Exchange, flow: http.HTTPFlow) -> float | None:
        """With seedtape_embedding_model: cosine distance of live and recorded output embeddings."""
        model = self.deck.settings.embedding_model
        if not model or ex.divergence is None or ex.recorded is None or ex.live_output is None:
            return None
        auth = {k: v for k, v in flow.request.headers.items() if k.lower() in ("authorization", "api-key")}
        recorded = divergence.outputs(ex.recorded.endpoint, ex.recorded.format, ex.recorded.body)
        try:
            async with httpx.AsyncClient() as client:
                return await embedder.distance(client, self.deck.settings.upstream, model,
                                               divergence.text_of(recorded), divergence.text_of(ex.live_output), auth)
        except (httpx.HTTPError, KeyError, ValueError) as e:
            log.warning("seedtape: no embedding distance for key=%s: %s", ex.key[:12], e)
            return None

    async def response(self, flow: http.HTTPFlow) -> None:
        self._disarm(flow)
        if flow.metadata.get(OWN_REPLY) or flow.metadata.get(PACED) or flow.response is None:
            return
        ex: Exchange | None = flow.metadata.get(EXCHANGE)
        if ex is None:
            return
        if flow.response.stream:
            if ex.tape is not None:  # an upstream that ended without [DONE] or a clean end
                self.deck.finish_stream(ex, flow.response.status_code, list(flow.response.headers.items()))
                self.deck.note_divergence(ex)
            self._log(ex, flow.response.status_code)
            return
        resp = flow.response
        try:
            content = resp.get_content(strict=False) or b""
            self.deck.finish(ex, resp.status_code, list(resp.headers.items()), content)
            self.deck.note_divergence(ex, await self._embedding_distance(ex, flow))
        except Exception:
            log.exception("seedtape: could not record %s %s", flow.request.method, wire.log_path(flow.request.path))
            ex.status, ex.note = "unrecorded", "recording failed (see the log)"
        self._add_headers(flow, ex)
        self._log(ex, resp.status_code)

    def error(self, flow: http.HTTPFlow) -> None:
        self._disarm(flow)
        ex: Exchange | None = flow.metadata.get(EXCHANGE)
        msg = flow.error.msg if flow.error else "unknown error"
        if "body_size_limit" in msg:  # mitmproxy's words for seedtape's --max-body
            side = "response" if "response" in msg.lower() else "request"
            msg = f"the {side} body is larger than --max-body ({ctx.options.seedtape_max_body} bytes)"
        if ex is not None and ex.status == "recorded":
            log.info("seedtape: %s %s: %s after the upstream completed (recorded)", flow.request.method, wire.log_path(flow.request.path), msg)
            return
        log.warning("seedtape: %s %s failed, nothing recorded: %s", flow.request.method, wire.log_path(flow.request.path), msg)
        if ex is not None:
            ex.tape, ex.status = None, "error"  # a cut stream is never recorded

    # -- upstream timeout ---------------------------------------------------

    def _arm(self, flow: http.HTTPFlow) -> None:
        """(Re)start the flow's upstream timer: no headers, or no next event, within the timeout aborts it."""
        self._disarm(flow)
        seconds = ctx.options.seedtape_upstream_timeout
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
        err = None if started else errors.upstream_timeout(self.deck.settings.upstream, seconds)
        if internals.abort_upstream(flow, err):
            ex: Exchange | None = flow.metadata.get(EXCHANGE)
            if ex is not None:
                ex.tape, ex.status, ex.note = None, "error", f"upstream timeout after {seconds:g}s"
            log.warning("seedtape: %s %s: the upstream sent nothing for %gs; aborted, nothing recorded",
                        flow.request.method, wire.log_path(flow.request.path), seconds)

    # -- helpers ------------------------------------------------------------

    @staticmethod
    def _add_headers(flow: http.HTTPFlow, ex: Exchange) -> None:
        for k, v in ex.headers():
            flow.response.headers[k] = wire.header_value(v)

    @staticmethod
    def _log(ex: Exchange, status: int) -> None:
        ms = (time.monotonic() - ex.started) * 1000
        key = ex.key[:12] or "-"
        extra = f" ({ex.note})" if ex.note and ex.status != "hit" else ""
        if ex.divergence is not None:
            extra += f" divergence={ex.divergence.header()}"
            if ex.divergence.departure:
                extra += f" first difference: {ex.divergence.departure['summary']}"
        path = wire.log_path(ex.path)
        log.info("seedtape: %s %s %s key=%s fp=%s -> %s %.1fms%s", ex.status, ex.method, path, key, ex.fingerprint or "-", status, ms, extra)


addons = [Seedtape()]
