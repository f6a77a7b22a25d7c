"""Tests start real proxies through the public Python API (seedtape.api.Proxy)."""

import time

from seedtape.api import Proxy


def wait_for(predicate, timeout: float = 10.0, every: float = 0.02) -> bool:
    """Poll instead of sleeping: proxies log and write after the client already has its answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


class ProxyProcess(Proxy):
    """`seedtape serve --port 0 *args` as a child process."""

    def __init__(self, *args: str, env: dict | None = None, timeout: float = 30.0):
        super().__init__(args, env=env, timeout=timeout)

    def logged(self, text: str, timeout: float = 10.0) -> bool:
        """Whether ``text`` appears in the output within ``timeout``: log lines trail the responses."""
        return wait_for(lambda: text in self.output, timeout)
