"""`seedtape serve --workers N`: N proxy processes on one port and one store, and their supervisor.

mitmproxy runs on one thread, so one proxy uses one core. The supervisor (this process)
picks the port once, starts N workers (`seedtape serve` each, told so by the environment:
seedtape/proxy/workerrun.py) that listen on it with ``SO_REUSEPORT`` (the kernel spreads new
connections over them), and prints the ``OPENAI_BASE_URL=`` line once they all listen.

- The port: ``--port 0`` is chosen here, by binding a socket with ``SO_REUSEPORT`` that is
  kept (bound, not listening, so it takes no connections) until every worker listens: no
  other program can take the port meanwhile.
- Signals: the workers run in sessions of their own, so a Ctrl-C in a terminal (sent to the
  whole foreground process group) reaches the supervisor only, which forwards every SIGINT
  or SIGTERM to each worker as a SIGTERM: the first one is each worker's graceful stop
  (seedtape/addons/shutdown.py), the second stops them at once.
- A worker that exits while nobody asked it to: one line says which and how, the others
  are stopped (gracefully), and the supervisor exits 1. A worker that cannot start (a
  store that cannot be opened, ...) ends the start, with its own exit status.
- Output: the supervisor reads every worker's stdout and stderr and writes them on, whole
  lines only, each tagged ``[worker I]`` (after its time); the lines every worker prints at start-up are
  printed once, unprefixed. A worker whose supervisor is gone (its stdin closes) stops.
- What the workers share beyond the store lives in a run directory made here (the
  occurrence counter of ``--repeats sequence``, what each one served); with
  ``--report-unused`` the supervisor writes the one report, the union of what every worker
  served, after they all stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import click

from seedtape.proxy import workerrun

URL_LINE = b"OPENAI_BASE_URL="
STAMP = re.compile(rb"\[\d\d:\d\d:\d\d\.\d+\] ")  # mitmproxy's time prefix of a log line
START_TIMEOUT = 60.0  # seconds for every worker to listen
POLL = 0.05


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT, not listening: holds the port for the workers.

    OSError when it cannot be had; port 0 picks a free one (the kernel gives no port another
    SO_REUSEPORT socket already has)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    s = socket.socket(family, kind, proto)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(addr)
    except OSError:
        s.close()
        raise
    return s


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Worker:
    def __init__(self, index: int, proc: subprocess.Popen) -> None:
        self.index = index
        self.proc = proc
        self.url = b""
        self.ready = threading.Event()
        self.seen_startup: set[tuple[int, bytes]] = set()  # start-up lines of another worker this one repeated (dropped once)
        self.code: int | None = None
        self.signalled = False  # it was sent a SIGTERM
        self.readers: list[threading.Thread] = []


class Supervisor:
    def __init__(self, values: dict[str, Any], workers: int, run_dir: Path, quiet: bool) -> None:
        self.values = values
        self.n = workers
        self.run_dir = run_dir
        self.quiet = quiet
        self.workers: list[Worker] = []
        self.lock = threading.Lock()  # one line at a time on our stdout/stderr
        self.announced = False
        self.startup_lines: set[tuple[int, bytes]] = set()  # printed (once) before every worker listened
        self.signals = 0
        self.failure = ""  # why the run failed, once it did

    # -- output -----------------------------------------------------------

    def say(self, text: str, err: bool = False) -> None:
        with self.lock:
            out = sys.stderr if err else sys.stdout
            out.write(text + "\n")
            out.flush()

    def _pump(self, w: Worker, pipe: IO[bytes], out: IO[bytes]) -> None:
        for line in pipe:
            if not line.endswith(b"\n"):
                line += b"\n"  # the last line of a worker that died mid-write
            if line.startswith(URL_LINE) and not w.url:
                w.url = line.strip()
                w.ready.set()
                continue
            stamp = m.group() if (m := STAMP.match(line)) else b""
            text = line[len(stamp) :]
            said = (out.fileno(), text)
            with self.lock:
                if said in self.startup_lines and said not in w.seen_startup:
                    w.seen_startup.add(said)  # every worker says it at start-up: said once
                    continue
                if not self.announced and said not in self.startup_lines:
                    self.startup_lines.add(said)
                    w.seen_startup.add(said)
                else:
                    line = stamp + b"[worker %d] " % w.index + text
                out.write(line)
                out.flush()
        pipe.close()

    # -- processes ----------------------------------------------------------

    def start(self, index: int, values: dict[str, Any]) -> None:
        env = {**os.environ, workerrun.RUN_ENV: str(self.run_dir), workerrun.INDEX_ENV: str(index)}
        env.pop("PYTHONUNBUFFERED", None)  # the worker buffers by line itself
        proc = subprocess.Popen(
            [sys.executable, "-c", "from seedtape.cli.workers import worker_main; worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only, which forwards it
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        w = Worker(index, proc)
        self.workers.append(w)
        for pipe, out in ((proc.stdout, sys.stdout.buffer), (proc.stderr, sys.stderr.buffer)):
            t = threading.Thread(target=self._pump, args=(w, pipe, out), daemon=True)
            t.start()
            w.readers.append(t)
        proc.stdin.write(json.dumps(values).encode() + b"\n")
        proc.stdin.flush()  # stdin stays open: its end tells the worker its supervisor is gone

    def signal_all(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.signalled = True
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGTERM)

    def on_signal(self, signum: int, frame: object) -> None:
        self.signals += 1
        self.signal_all()

    def fail(self, why: str) -> None:
        if not self.failure:
            self.failure = why
            if why:
                self.say(f"seedtape: {why}", err=True)
            self.signal_all()

    def run(self, worker_values: dict[str, Any]) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.on_signal)
        deadline = time.monotonic() + START_TIMEOUT
        for i in range(1, self.n + 1):
            if self.signals:
                break
            self.start(i, worker_values)
        start_status = 0
        while True:
            for w in self.workers:
                if w.code is None and (code := w.proc.poll()) is not None:
                    w.code = code
                    if self.signals or self.failure:
                        continue
                    if not w.ready.is_set() and code > 0:  # it could not start: its own lines said why
                        start_status = code
                        self.fail("")
                    else:
                        self.fail(
                            f"worker {w.index} (pid {w.proc.pid}) {describe_exit(code)} "
                            f"{'before it listened' if not w.ready.is_set() else 'unexpectedly'}; "
                            f"stopping the other{'s' if self.n > 2 else ''}"
                        )
            if all(w.code is not None for w in self.workers):
                break
            if not self.announced and not self.signals and not self.failure:
                if len(self.workers) == self.n and all(w.ready.is_set() for w in self.workers):
                    with self.lock:
                        self.announced = True
                        sys.stdout.buffer.write(self.workers[0].url + b"\n")
                        sys.stdout.flush()
                    self.on_ready()
                elif time.monotonic() > deadline:
                    self.fail(f"the workers did not all listen within {START_TIMEOUT:g}s; stopping them")
            time.sleep(POLL)
        for w in self.workers:
            for t in w.readers:
                t.join(5)
            if w.proc.stdin is not None:
                w.proc.stdin.close()
        return self.finish(start_status)

    def on_ready(self) -> None:
        """Every worker listens (a hook for the port reservation to be let go)."""

    def finish(self, start_status: int) -> int:
        if start_status:
            return start_status
        unclean = [w for w in self.workers if w.code not in (0, -signal.SIGTERM if w.signalled else 0)]
        if self.failure or unclean:
            for w in unclean:
                if not self.failure:
                    self.say(
                        f"seedtape: worker {w.index} (pid {w.proc.pid}) {describe_exit(w.code or 0)} while stopping", err=True
                    )
            self.report_unused(clean=False)
            return 1
        self.report_unused(clean=True)
        if not self.quiet:
            self.say(f"seedtape: all {self.n} workers stopped")
        return 0

    def report_unused(self, clean: bool) -> None:
        report = self.values.get("report_unused", "")
        if not report:
            return
        served, missing = workerrun.served_by(self.run_dir, self.n)
        if not clean or missing:
            which = ", ".join(str(i) for i in missing) or "one"
            self.say(
                f"seedtape: no unused report written to {report}: worker {which} did not stop cleanly, so what it "
                "served is unknown (a partial report would list used recordings as unused)",
                err=True,
            )
            return
        from seedtape.proxy.tapes import unused
        from seedtape.proxy.tapes.store import Store, StoreError

        try:
            with Store(self.values["store"]) as store:
                n = unused.write_report(store, served, report)
        except (OSError, StoreError) as e:
            self.say(f"seedtape: could not write the unused report {report}: {e}", err=True)
            return
        if not self.quiet:
            self.say(f"seedtape: {n} recordings were not used in this run (by any of the {self.n} workers): listed in {report}")


def supervise(values: dict[str, Any]) -> int:
    """Run ``values["workers"]`` workers of `seedtape serve` on one port; the exit status."""
    host, port, n = values["host"], values["port"], values["workers"]
    try:
        reserved = reserve_port(host, port)
    except OSError as e:
        raise click.UsageError(
            f"cannot listen on {host}:{port}: {e.strerror or e}. Pick another --port (0 picks a free one)."
        ) from None
    run_dir = Path(tempfile.mkdtemp(prefix="seedtape-run-"))
    sup = Supervisor(values, n, run_dir, values["quiet"])
    sup.on_ready = reserved.close  # type: ignore[method-assign]
    worker_values = {**values, "port": reserved.getsockname()[1], "workers": 1, "report_unused": ""}
    try:
        return sup.run(worker_values)
    finally:
        reserved.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def _watch_supervisor() -> None:
    """Stop (gracefully) when the supervisor is gone: it holds our stdin open while it lives."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def worker_main() -> None:
    """A worker: `seedtape serve` with the option values its supervisor sent on stdin, on a shared port."""
    from seedtape.cli import serve

    assert sys.stdout is not None
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # whole lines, as they come
    line = b""
    while not line.endswith(b"\n"):  # read byte-wise from the fd: nothing of it stays in a buffer
        chunk = os.read(0, 1)
        if not chunk:
            sys.exit(1)  # the supervisor is gone already
        line += chunk
    values = json.loads(line)
    threading.Thread(target=_watch_supervisor, daemon=True).start()
    serve.run(values, shared_port=True)
