"""Real Redis servers for tests: standalone and a three-master cluster, on free loopback ports.

Each server runs from the Debian ``redis-server`` binary in a temporary directory, with no
persistence (``--save '' --appendonly no``), bound to 127.0.0.1, and is stopped (killed if it
will not stop) when its context ends, whatever the test did. Without the binary the tests skip,
unless ``CI`` is true: there a missing Redis fails the run instead of hiding the tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
START_TIMEOUT = 10.0


def require_redis() -> None:
    """Skip the calling test when redis-server is missing (fail instead on CI)."""
    missing = [p for p in (REDIS_SERVER, REDIS_CLI) if not os.access(p, os.X_OK)]
    if missing:
        reason = f"redis-server/redis-cli not found ({', '.join(missing)}): install the Debian package redis-server"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason + " (CI is set: the remote-tier tests must run)")
        pytest.skip(reason)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(cluster: bool = False) -> int:
    """A loopback port free now; for a cluster node also its bus port (port + 10000)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not cluster or (port + 10000 < 65536 and _free(port + 10000)):
            return port
    raise RuntimeError("no free loopback port found")


class RedisServer:
    """One redis-server process; ``stop``/``start`` keep its port and directory (a restart loses its data)."""

    def __init__(self, directory: Path, *, password: str | None = None, cluster: bool = False, port: int | None = None):
        self.dir = Path(directory)
        self.password = password
        self.cluster = cluster
        self.port = port or free_port(cluster)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        a = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        a += ["--dir", str(self.dir), "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
        a += ["--enable-debug-command", "local"]  # DEBUG SLEEP: a hung server, for timeout tests
        if self.password:
            a += ["--requirepass", self.password]
        if self.cluster:
            a += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.dir / "nodes.conf")]
            a += ["--cluster-node-timeout", "2000"]
        return a

    def cli(self, *args: str, timeout: float = 10.0) -> str:
        """Run redis-cli against this server (the password through the environment, never argv)."""
        env = {**os.environ, "REDISCLI_AUTH": self.password} if self.password else None
        out = subprocess.run(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port), *args], capture_output=True, text=True, timeout=timeout, env=env
        )
        return out.stdout + out.stderr

    def start(self) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:] if (self.dir / "redis.log").exists() else ""
                raise RuntimeError(f"redis-server on port {self.port} exited with {self.proc.returncode}: {log}")
            if "PONG" in self.cli("ping", timeout=2):
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {START_TIMEOUT}s")

    def stop(self) -> None:
        """Terminate (then kill) the process; safe to call twice, and on a paused server."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGCONT)
            p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def restart(self) -> RedisServer:
        """The same port again (redis-server binds with SO_REUSEADDR, so closed connections do not hold it)."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the server accepts connections (the kernel does) but never answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def redis_server(password: str | None = None) -> Iterator[RedisServer]:
    """A standalone server for the length of the block."""
    require_redis()
    with tempfile.TemporaryDirectory(prefix="seedtape-redis-") as d:
        server = RedisServer(Path(d), password=password)
        try:
            yield server.start()
        finally:
            server.stop()


class RedisCluster:
    """Three masters joined by ``redis-cli --cluster create`` (no replicas)."""

    def __init__(self, nodes: list[RedisServer]):
        self.nodes = nodes

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"


@contextlib.contextmanager
def redis_cluster(masters: int = 3) -> Iterator[RedisCluster]:
    """A local cluster for the length of the block, up when every node says ``cluster_state:ok``."""
    require_redis()
    with tempfile.TemporaryDirectory(prefix="seedtape-redis-cluster-") as d:
        nodes: list[RedisServer] = []
        try:
            for i in range(masters):
                nodes.append(RedisServer(Path(d) / f"node{i}", cluster=True).start())
            addrs = [f"127.0.0.1:{n.port}" for n in nodes]
            out = nodes[0].cli("--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes", timeout=60)
            if "[OK] All 16384 slots covered" not in out:
                raise RuntimeError(f"redis-cli --cluster create failed: {out[-2000:]}")
            deadline = time.monotonic() + 30
            while not all("cluster_state:ok" in n.cli("cluster", "info") for n in nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError("the local Redis cluster did not reach cluster_state:ok within 30s")
                time.sleep(0.1)
            yield RedisCluster(nodes)
        finally:
            for n in nodes:
                n.stop()


# pytest fixtures: bind them in a test module (``redis = redis_support.redis``) to use them there.


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as s:
        yield s


@pytest.fixture
def redis_with_password() -> Iterator[RedisServer]:
    with redis_server(password="s3cret-Redis-PASSWORD-4242") as s:
        yield s


@pytest.fixture(scope="module")
def redis_cluster_3() -> Iterator[RedisCluster]:
    with redis_cluster(3) as c:
        yield c
