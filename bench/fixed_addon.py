"""Baseline for bench_replay.py: a mitmproxy reverse proxy that answers every request with one fixed response.

Two ways to run it, both printing ``OPENAI_BASE_URL=http://HOST:PORT/v1`` when ready:

- lean, the way `seedtape serve` runs (the same Master and addons as seedtape.addons.internals.build_master,
  with this addon in seedtape's place)::

      python bench/fixed_addon.py --response RESPONSE.json --port 0

- as a plain mitmdump script (mitmproxy's ~36 default addons)::

      mitmdump -q --mode reverse:http://127.0.0.1:9 --listen-host 127.0.0.1 -p 0 \\
          -s bench/fixed_addon.py --set fixed_response=RESPONSE.json --set connection_strategy=lazy

RESPONSE.json is ``{"status": 200, "headers": [[name, value], ...], "body": "..."}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from mitmproxy import ctx, http


class FixedResponse:
    def __init__(self) -> None:
        self.status, self.headers, self.body = 200, [], b"{}"

    def load(self, loader) -> None:
        loader.add_option("fixed_response", str, "", "JSON file with the status, headers and body to answer with.")

    def configure(self, updated: set[str]) -> None:
        if "fixed_response" in updated and ctx.options.fixed_response:
            with open(ctx.options.fixed_response) as f:
                spec = json.load(f)
            self.status, self.body = spec["status"], spec["body"].encode()
            self.headers = [(k.encode(), v.encode()) for k, v in spec["headers"]]

    def running(self) -> None:
        for host, port, *_ in ctx.master.addons.get("proxyserver").listen_addrs()[:1]:
            print(f"OPENAI_BASE_URL=http://{host}:{port}/v1", flush=True)

    def request(self, flow: http.HTTPFlow) -> None:
        flow.response = http.Response.make(self.status, self.body, self.headers)


addons = [FixedResponse()]


async def _run_lean(options: dict) -> None:
    from seedtape.addons.internals import build_master  # the Master `seedtape serve` runs

    m = build_master(dict(connection_strategy="lazy", termlog_verbosity="warn", **options), FixedResponse())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, m.shutdown)
    await m.run()


def main() -> None:
    p = argparse.ArgumentParser(description="Lean mitmproxy answering every request with a fixed response.")
    p.add_argument("--response", required=True, help="JSON file: status, headers, body")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    # The upstream is never contacted: every request is answered in the request hook.
    asyncio.run(_run_lean(dict(mode=["reverse:http://127.0.0.1:9"], listen_host=a.host, listen_port=a.port,
                               fixed_response=a.response)))


if __name__ == "__main__":
    main()
