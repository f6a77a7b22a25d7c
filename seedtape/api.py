"""The Python API for test harnesses: start and stop a real seedtape proxy.

    with seedtape.serve(mode="replay", tapes="tests/tapes") as proxy:
        client = openai.OpenAI(base_url=proxy.base_url)

The proxy is a real `seedtape serve` child process on a free loopback port.
With ``tapes`` it works on a private LMDB store: the tapes are imported before
it starts, and, in a mode that records, exported back when it stops.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from seedtape.proxy.key import routing

_LINE = re.compile(r"OPENAI_BASE_URL=(\S+)")


class Proxy:
    """A running `seedtape serve` process; ``lines`` collects everything it prints."""

    def __init__(self, args: Sequence[str], env: dict | None = None, timeout: float = 30.0):
        cmd = [sys.executable, "-m", "seedtape", "serve", "--port", "0", *args]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            text=True,
            bufsize=1,
            errors="backslashreplace",
        )  # a raw byte in a logged path must not stop the reader
        self.lines: list[str] = []
        self.base_url = ""
        self.store = ""
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout) or not self.base_url:
            self.stop()
            raise RuntimeError(f"seedtape serve did not start:\n{self.output}")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = _LINE.search(line)
            if m and not self.base_url:
                self.base_url = m.group(1)
                self._ready.set()
        self._ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def origin(self) -> str:
        """``http://host:port``, without ``/v1``."""
        return self.base_url.rsplit("/v1", 1)[0]

    @property
    def port(self) -> int:
        return int(self.origin.rsplit(":", 1)[1])

    def url(self, mode: str | None = None, namespace: str | None = None, scope: str | None = None) -> str:
        """A base URL that makes this proxy use ``mode`` and ``namespace`` for the requests sent to it
        (and count their repeats in ``scope``, with --repeats sequence)."""
        return f"{self.origin}{routing.prefix(mode, namespace, scope)}/v1"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)  # the pipe is drained once the process is gone
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def serve(
    mode: str = "auto",
    *,
    tapes: str | os.PathLike | None = None,
    store: str | os.PathLike | None = None,
    upstream: str | None = None,
    args: Sequence[str] = (),
    env: dict | None = None,
) -> Iterator[Proxy]:
    """Run a seedtape proxy for the duration of the block.

    ``tapes``: a directory of exported tapes (``seedtape export``) to replay from, and
    to write new recordings back to when ``mode`` records (auto, record).
    ``store``: an LMDB store to use directly instead (default ./.seedtape without tapes).
    ``args``: any other `seedtape serve` options.
    """
    from seedtape.proxy.modes import Mode
    from seedtape.proxy.tapes import tapefile
    from seedtape.proxy.tapes.store import Store

    with tempfile.TemporaryDirectory(prefix="seedtape-") as tmp:
        store_path = str(store) if store is not None else (os.path.join(tmp, "store") if tapes else ".seedtape")
        if tapes is not None and Path(tapes).exists():
            with Store(store_path) as st:
                tapefile.import_(st, tapes)
        elif tapes is not None and mode == "replay":
            warnings.warn(
                f"seedtape: no tapes directory at {Path(tapes).resolve()}: in {mode} mode every request "
                "will miss (record first in mode auto, or check the path)",
                stacklevel=3,
            )
            Store(store_path).close()  # an empty store: the proxy starts, and every request misses as warned
        cmd = ["--mode", mode, "--store", store_path, *(["--upstream", upstream] if upstream else []), *args]
        proxy = Proxy(cmd, env=env)
        proxy.store = store_path
        try:
            yield proxy
        finally:
            proxy.stop()
        if tapes is not None and Mode(mode).records:
            with Store(store_path) as st:
                tapefile.export(st, tapes)
