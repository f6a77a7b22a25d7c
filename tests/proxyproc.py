"""Tests start real proxies through the public Python API (seedtape.api.Proxy)."""

from seedtape.api import Proxy


class ProxyProcess(Proxy):
    """`seedtape serve --port 0 *args` as a child process."""

    def __init__(self, *args: str, env: dict | None = None, timeout: float = 30.0):
        super().__init__(args, env=env, timeout=timeout)
