"""A throwaway etcd for tests: free loopback ports, a temporary data dir, process control.

Each server owns its ports for its whole life, so ``restart()`` and ``wipe_and_restart()`` come
back on the same endpoint (a client pointed at it reconnects, like after a real etcd restart).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.process import ServerProcess

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
START_DEADLINE = 15.0
T = TypeVar("T")


def free_port() -> int:
    from tests.support.gateway import free_port as below_ephemeral_range

    return below_ephemeral_range()


def make_test_pki(directory: Path) -> None:
    """A CA, a server cert for 127.0.0.1 and a client cert, with the openssl CLI."""

    def sh(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2"]
    sh("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=test-ca")
    # etcd's gateway dials its own gRPC server with the server cert as a client certificate,
    # so with --client-cert-auth that cert needs clientAuth as well.
    for name, usage in (("server", "serverAuth,clientAuth"), ("client", "clientAuth")):
        ext = f"subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n"
        (directory / f"{name}.ext").write_text(ext)
        sh("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        sh(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            *ca,
            "-out",
            f"{name}.pem",
            "-extfile",
            f"{name}.ext",
        )


class EtcdServer(ServerProcess):
    """``tls=True``: https with client-certificate auth (files in ``pki``: ca.pem,
    server.pem/key, client.pem/key)."""

    def __init__(
        self,
        *,
        progress_notify_interval: str = "1s",
        name: str = "tollway-test",
        tls: bool = False,
    ) -> None:
        self.name = name
        self.tls = tls
        self.client_port = free_port()
        self.peer_port = free_port()
        self.progress_notify_interval = progress_notify_interval
        self.workdir = Path(tempfile.mkdtemp(prefix="tollway-etcd-"))
        self.data_dir = self.workdir / "data0"
        self._generation = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.pki = self.workdir / "pki"
        if tls:
            self.pki.mkdir()
            make_test_pki(self.pki)

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    def _tls_args(self) -> list[str]:
        if not self.tls:
            return []
        p = self.pki
        return ["--cert-file", str(p / "server.pem"), "--key-file", str(p / "server.key"),
                "--client-cert-auth", "--trusted-ca-file", str(p / "ca.pem")]  # fmt: skip

    @property
    def log_path(self) -> Path:
        return self.workdir / "etcd.log"

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def cluster_args(self) -> list[str]:
        """The membership flags: a cluster of one (tests.support.etcd_cluster has three)."""
        return [
            "--initial-cluster", f"{self.name}={self.peer_url}",
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"tollway-{self.client_port}",
        ]  # fmt: skip

    def start(self) -> EtcdServer:
        self.spawn()
        self.wait_healthy()
        return self

    def spawn(self) -> None:
        """Start the process without waiting for it to be healthy (a cluster member is healthy
        only once a quorum of its peers runs)."""
        assert self.proc is None, "already running"
        peer = self.peer_url
        args = [
            ETCD,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            *self.cluster_args(),
            "--experimental-watch-progress-notify-interval", self.progress_notify_interval,
            "--log-level", "warn",
            "--logger", "zap",
            *self._tls_args(),
        ]  # fmt: skip
        log = open(self.log_path, "ab")  # the child keeps its own copy of the fd
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        self.paused = False

    def healthy(self) -> bool:
        ctx = None
        if self.tls:
            ctx = ssl.create_default_context(cafile=str(self.pki / "ca.pem"))
            ctx.load_cert_chain(self.pki / "client.pem", self.pki / "client.key")
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=1, context=ctx) as r:
                return b'"health":"true"' in r.read()
        except (OSError, urllib.error.URLError):
            return False

    def wait_healthy(self, timeout: float = START_DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self._log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd not healthy within {timeout}s: {self._log_tail()}")
            time.sleep(0.03)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (after SIGCONT if paused) and wait; SIGKILL if it does not exit."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if self.paused:
            proc.send_signal(signal.SIGCONT)
            self.paused = False
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same data dir and ports."""
        self.stop()
        self.start()

    def wipe_and_restart(self) -> None:
        """Kill, start with a new empty data dir on the same ports (revision restarts at 1)."""
        self.kill()
        old = self.data_dir
        self._generation += 1
        self.data_dir = self.workdir / f"data{self._generation}"
        shutil.rmtree(old, ignore_errors=True)
        self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- etcdctl --------------------------------------------------------------------------

    def etcdctl(self, *args: str, user: str | None = None, input: bytes | None = None) -> str:
        cmd = [ETCDCTL, "--endpoints", self.endpoint, "--dial-timeout", "3s"]
        if user is not None:
            cmd += ["--user", user]
        if self.tls:
            p = self.pki
            cmd += ["--cacert", str(p / "ca.pem"), "--cert", str(p / "client.pem"),
                    "--key", str(p / "client.key")]  # fmt: skip
        env = {**os.environ, "ETCDCTL_API": "3"}
        out = subprocess.run(
            [*cmd, *args], input=input, capture_output=True, env=env, timeout=20, check=False
        )
        if out.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {out.stderr.decode(errors='replace')}")
        return out.stdout.decode()

    def put(self, key: str, value: str | bytes, *, user: str | None = None) -> int:
        """Put and return the new store revision."""
        data = value.encode() if isinstance(value, str) else value
        # The value goes through stdin so any bytes (and values starting with '-') are safe.
        self.etcdctl("put", key, user=user, input=data)
        return self.revision(user=user)

    def get(self, key: str, *, user: str | None = None) -> str | None:
        out = self.etcdctl("get", key, "--print-value-only", user=user)
        return out[:-1] if out else None

    def delete(self, key: str, *, prefix: bool = False, user: str | None = None) -> int:
        args = ["del", key] + (["--prefix"] if prefix else [])
        return int(self.etcdctl(*args, user=user).strip() or 0)

    def compact(self, revision: int | None = None, *, user: str | None = None) -> int:
        rev = self.revision(user=user) if revision is None else revision
        self.etcdctl("compact", str(rev), "--physical", user=user)
        return rev

    def revision(self, *, user: str | None = None) -> int:
        out = self.etcdctl("endpoint", "status", "-w", "json", user=user)
        return int(json.loads(out)[0]["Status"]["header"]["revision"])


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    """A fresh etcd per test (about 0.5 s to start)."""
    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def shared_etcd() -> Iterator[EtcdServer]:
    """One etcd for a whole module: for tests that do not stop, pause or reconfigure it."""
    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


def arun(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run one async test body on a fresh loop, with an overall deadline."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())
