"""Start and stop a real `seedtape serve` process (used by tests and benchmarks)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

_LINE = re.compile(r"OPENAI_BASE_URL=(\S+)")


class ProxyProcess:
    """A `seedtape serve` child on a free port; ``output`` collects everything it prints."""

    def __init__(self, *args: str, env: dict | None = None, timeout: float = 20.0):
        self.args = ["serve", "--port", "0", *args]
        cmd = [sys.executable, "-m", "seedtape", *self.args]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.base_url = ""
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(timeout) or not self.base_url:
            self.stop()
            raise RuntimeError(f"seedtape serve did not start: {self.output}")

    def _pump(self) -> None:
        assert self.proc.stdout
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
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1].split("/")[0])

    @property
    def origin(self) -> str:
        return self.base_url.rsplit("/v1", 1)[0]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        time.sleep(0.05)  # let the pump thread drain the pipe
        return self.proc.returncode

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
