"""A graceful stop for `seedtape serve`: Ctrl-C or SIGTERM lets the exchanges in flight finish.

A client in the middle of a live stream should get its answer (and the store its
recording) rather than a cut connection: the first signal stops listening, waits up
to ``--grace`` seconds for the exchanges in flight, then stops; a second signal
stops at once. The last line says what was cut, if anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mitmproxy import http, master

from seedtape.proxy import wire
from seedtape.proxy.exchange import Exchange

log = logging.getLogger("seedtape")

EXCHANGE = "seedtape_exchange"  # flow.metadata: the flow's Exchange (set by the addon)


class InFlight:
    """The flows a client is waiting on: from their request headers to their response's end or error."""

    def __init__(self) -> None:
        self.flows: dict[str, http.HTTPFlow] = {}
        self.stopping = ""  # set when the proxy cuts what is left: why, for the flows' log lines

    def add(self, flow: http.HTTPFlow) -> None:
        self.flows[flow.id] = flow

    def remove(self, flow: http.HTTPFlow) -> None:
        self.flows.pop(flow.id, None)

    def __len__(self) -> int:
        return len(self.flows)

    def describe(self) -> list[str]:
        """One phrase per flow still in flight: method, path (no query), key prefix, status."""
        out = []
        for flow in self.flows.values():
            ex: Exchange | None = flow.metadata.get(EXCHANGE)
            what = f"{flow.request.method} {wire.log_path(flow.request.path)}"
            if ex is not None:
                what += f" key={ex.key[:12] or '-'} ({ex.status.value})"
            out.append(what)
        return out


class GracefulStop:
    """The SIGINT/SIGTERM handler of the lean Master."""

    def __init__(self, m: master.Master, in_flight: InFlight, grace: float, *, poll: float = 0.05):
        self.master = m
        self.in_flight = in_flight
        self.grace = grace
        self.poll = poll
        self._draining: asyncio.Task | None = None

    def signal(self) -> None:
        if self._draining is not None or self.grace <= 0 or not self.in_flight:
            if self._draining is not None:
                self._draining.cancel()
            self._stop_now(again=self._draining is not None)
            return
        log.warning(
            "seedtape: stopping: no new connections; waiting up to %gs for %d exchange%s in flight (Ctrl-C again to stop now)",
            self.grace,
            len(self.in_flight),
            "" if len(self.in_flight) == 1 else "s",
        )
        self._draining = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        ps = self.master.addons.get("proxyserver")
        if ps is not None:
            await ps.servers.update([])  # closes the listening sockets; open connections stay
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        while self.in_flight and loop.time() < deadline:
            await asyncio.sleep(self.poll)
        self._stop_now(again=False)

    def _stop_now(self, *, again: bool) -> None:
        cut = self.in_flight.describe()
        if cut:
            why = "a second signal" if again else f"the {self.grace:g}s grace period" if self.grace > 0 else "--grace 0"
            self.in_flight.stopping = f"cut at shutdown ({why})"
            log.warning(
                "seedtape: stopped after %s: %d exchange%s cut, nothing recorded for %s: %s",
                why,
                len(cut),
                "" if len(cut) == 1 else "s",
                "it" if len(cut) == 1 else "them",
                "; ".join(cut),
            )
        else:
            log.info("seedtape: stopped; no exchange was cut")
        self.master.shutdown()


def install(m: master.Master, in_flight: InFlight, grace: float, add_handler: Callable) -> GracefulStop:
    """Route SIGINT and SIGTERM to a GracefulStop (``add_handler``: the loop's add_signal_handler)."""
    import signal

    stop = GracefulStop(m, in_flight, grace)
    for sig in (signal.SIGINT, signal.SIGTERM):
        add_handler(sig, stop.signal)
    return stop
