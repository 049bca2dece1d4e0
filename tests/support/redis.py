"""Real ``redis-server`` processes for tests: a server, a 3-master cluster, a sentinel; each on
free loopback ports with a temp dir, no persistence."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import free_port
from tests.support.process import ServerProcess

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
START_DEADLINE = 10.0


def ping(port: int, timeout: float = 0.5) -> bool:
    """PING answered (PONG, or NOAUTH from a server with a password): a plain socket, no client
    library in the fixture."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer(ServerProcess):
    """One redis-server. ``stop``/``kill`` then ``start`` again serve on the same port (empty:
    nothing is persisted); ``pause``/``resume`` make it hang (SIGSTOP) and come back."""

    def __init__(self, *extra: str, port: int | None = None, workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self.extra = extra
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="tollway-redis-"))
        self._own_dir = workdir is None
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def log_path(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    def args(self) -> list[str]:
        return [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            *self.extra,
        ]  # fmt: skip

    def start(self) -> RedisServer:
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.paused = False
        deadline = time.monotonic() + START_DEADLINE
        while not ping(self.port):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited: {err} {self._log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server not up within {START_DEADLINE}s")
            time.sleep(0.02)
        return self

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [REDIS_CLI, "-p", str(self.port), *args], capture_output=True, timeout=10, check=True
        )
        return out.stdout.decode().strip()

    def close(self) -> None:
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisCluster:
    """Three masters, no replicas, slots spread by ``redis-cli --cluster create``."""

    def __init__(self, size: int = 3) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="tollway-redis-cluster-"))
        self.nodes: list[RedisServer] = []
        for _ in range(size):
            port = free_port()
            d = self.workdir / str(port)
            d.mkdir()
            args = ["--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf"),
                    # the bus port defaults to port + 10000: in the ephemeral range, maybe taken
                    "--cluster-port", str(free_port())]  # fmt: skip
            self.nodes.append(RedisServer(*args, port=port, workdir=d))

    @property
    def addrs(self) -> list[str]:
        return [f"127.0.0.1:{n.port}" for n in self.nodes]

    def start(self) -> RedisCluster:
        for n in self.nodes:
            n.start()
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *self.addrs, "--cluster-replicas", "0",
             "--cluster-yes"],
            capture_output=True, timeout=30, check=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not all("cluster_state:ok" in n.cli("cluster", "info") for n in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster not ok within 20s")
            time.sleep(0.05)
        return self

    def close(self) -> None:
        for n in self.nodes:
            n.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class RedisSentinel:
    """A master (with a replica if asked) and one sentinel watching it as ``master_name``; the
    sentinel fails over to the replica a second after the master stops answering."""

    def __init__(self, master_name: str = "mymaster", replica: bool = False) -> None:
        self.master_name = master_name
        self.workdir = Path(tempfile.mkdtemp(prefix="tollway-redis-sentinel-"))
        self.master = RedisServer(workdir=self.workdir)
        self.replica = (
            RedisServer("--replicaof", "127.0.0.1", str(self.master.port), workdir=self.workdir)
            if replica
            else None
        )
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisSentinel:
        self.master.start()
        if self.replica is not None:
            self.replica.start()
        conf = self.workdir / "sentinel.conf"  # the sentinel rewrites it: it must be writable
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n"
            f"logfile {self.workdir / 'sentinel.log'}\n"
            f"sentinel monitor {self.master_name} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.master_name} 1000\n"
            f"sentinel failover-timeout {self.master_name} 5000\n"
        )
        self.proc = subprocess.Popen(
            [REDIS_SERVER, str(conf), "--sentinel"], stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_DEADLINE
        while not self._knows_master():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis sentinel did not start")
            time.sleep(0.05)
        return self

    def master_port(self) -> int | None:
        """The master's port as the sentinel names it now."""
        out = subprocess.run(
            [REDIS_CLI, "-p", str(self.port), "sentinel", "get-master-addr-by-name",
             self.master_name],
            capture_output=True, timeout=5,
        ).stdout.decode().split()  # fmt: skip
        return int(out[1]) if len(out) == 2 else None

    def knows_replica(self) -> bool:
        """The sentinel has discovered the replica (from the master's INFO, refreshed every
        10 s) and sees it up: before that, a failover finds no replica to promote."""
        if self.replica is None:
            return False
        out = subprocess.run(
            [REDIS_CLI, "-p", str(self.port), "--no-raw", "sentinel", "replicas",
             self.master_name],
            capture_output=True, timeout=5,
        ).stdout.decode()  # fmt: skip
        return str(self.replica.port) in out and "disconnected" not in out and "s_down" not in out

    def _knows_master(self) -> bool:
        try:
            out = subprocess.run(
                [REDIS_CLI, "-p", str(self.port), "sentinel", "get-master-addr-by-name",
                 self.master_name],
                capture_output=True, timeout=5,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return False
        return str(self.master.port) in out.stdout.decode()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.replica is not None:
            self.replica.close()
        self.master.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as r:
        yield r


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    c = RedisCluster().start()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def redis_sentinel() -> Iterator[RedisSentinel]:
    s = RedisSentinel().start()
    try:
        yield s
    finally:
        s.close()
