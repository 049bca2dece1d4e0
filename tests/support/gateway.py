"""Runs the real ``tollway`` process for end-to-end tests, on free loopback ports."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import yaml

# re-exported: the e2e modules import it from here with Gateway
from tests.support.wait import wait_until as wait_until

_rng = random.Random()


_handed_out: set[int] = set()


def free_port() -> int:
    """A free loopback port below Linux's ephemeral range (32768+): the kernel never hands it to
    an outgoing connection between now and the moment a server binds it. Never the same port
    twice in one test process: two servers given one port (say a gateway's TLS and status
    listeners) would fail to start however often they were retried."""
    for _ in range(500):
        port = _rng.randrange(20000, 32000)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port in 20000-32000")


def send_raw(port: int, data: bytes, *, read_until_close: bool = True, timeout: float = 5) -> bytes:
    """``data`` in one write to 127.0.0.1:``port``; what comes back until the peer closes (or
    ``timeout`` passes without a byte), or the first read only."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if not read_until_close:
            return s.recv(65536)
        chunks = []
        while True:
            try:
                c = s.recv(65536)
            except TimeoutError:
                break
            if not c:
                break
            chunks.append(c)
        return b"".join(chunks)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Gateway:
    """One Tollway instance. ``mode`` is "yaml" (standalone) or "etcd"."""

    def __init__(
        self,
        root: Path,
        *,
        mode: str = "yaml",
        etcd: str | None = None,
        prefix: str = "/apisix",
        workers: int = 1,
        apisix_yaml: str | None = None,
        config: dict[str, Any] | None = None,
        admin_key: str = "test-admin-key-0123456789",
    ) -> None:
        self.root = root
        self.conf_dir = root / "conf"
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.status_port = free_port()
        self.admin_port = free_port()
        self.control_port = free_port()
        self.prometheus_port = free_port()
        self.tls_port = free_port()
        self.admin_key = admin_key
        self.mode = mode
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "tollway.log"
        role = "data_plane" if mode == "yaml" else "traditional"
        conf: dict[str, Any] = {
            "apisix": {
                "node_listen": [{"ip": "127.0.0.1", "port": self.port}],
                "status": {"ip": "127.0.0.1", "port": self.status_port},
                "control": {"ip": "127.0.0.1", "port": self.control_port},
                "ssl": {"listen": [{"ip": "127.0.0.1", "port": self.tls_port}]},
            },
            "deployment": {
                "role": role,
                f"role_{role}": {"config_provider": mode},
                "etcd": {"host": [etcd or "http://127.0.0.1:1"], "prefix": prefix},
                "admin": {
                    "admin_listen": {"ip": "127.0.0.1", "port": self.admin_port},
                    "admin_key": [{"name": "admin", "key": admin_key, "role": "admin"}],
                },
            },
            "nginx_config": {
                "worker_processes": workers,
                "error_log_level": "info",
                "error_log": "stderr",  # into tollway.log with stdout, for logs()
                "http": {"access_log": str(root / "logs" / "access.log")},
            },
            "tollway": {"run_dir": str(root / "run"), "graceful_timeout": 5},
            "plugin_attr": {
                "prometheus": {"export_addr": {"ip": "127.0.0.1", "port": self.prometheus_port}}
            },
        }
        self.config = _merge(conf, config or {})
        self.write_config()
        if apisix_yaml is not None:
            self.write_yaml(apisix_yaml)
        elif mode == "yaml":
            self.write_yaml("routes: []\n#END\n")

    @property
    def config_path(self) -> Path:
        return self.conf_dir / "config.yaml"

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))

    def write_yaml(self, text: str) -> None:
        # Write then rename, as a deploy tool would, so the watcher never sees half a file.
        tmp = self.conf_dir / ".apisix.yaml.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.conf_dir / "apisix.yaml")

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def admin_url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.admin_port}/apisix/admin{path}"

    def status(self, path: str = "/status/ready") -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.status_port}{path}", timeout=2)

    def start(self, *, wait_ready: bool = True, extra_env: dict[str, str] | None = None) -> Gateway:
        for attempt in range(3):
            self._spawn(extra_env)
            if not wait_ready:
                return self
            try:
                self.wait_ready()
                return self
            except (AssertionError, RuntimeError):
                # Another process took one of our ports between choosing and binding it: the
                # process says so and exits; try again on new ports.
                if attempt == 2 or "address already in use" not in self.logs():
                    raise
                self.stop()
                self._new_ports()
        return self

    def _new_ports(self) -> None:
        names = ("port", "status_port", "admin_port", "control_port", "prometheus_port", "tls_port")
        moved = {getattr(self, n): free_port() for n in names}
        for n in names:
            setattr(self, n, moved[getattr(self, n)])

        def remap(node: Any) -> Any:
            if isinstance(node, dict):
                return {k: remap(v) for k, v in node.items()}
            if isinstance(node, list):
                return [remap(v) for v in node]
            return moved.get(node, node) if isinstance(node, int) else node

        self.config = remap(self.config)
        self.write_config()

    def _spawn(self, extra_env: dict[str, str] | None) -> None:
        env = dict(os.environ)
        env.update(extra_env or {})
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tollway.cli", "start", "-c", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> str | bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return "exited"  # returned, not raised: wait_until would retry a raise
            return self.status().status_code == 200

        try:
            state = wait_until(ready, timeout)
        except AssertionError:
            raise AssertionError(f"tollway not ready in {timeout}s:\n{self.logs()}") from None
        if state == "exited":
            assert self.proc is not None
            raise RuntimeError(f"tollway exited with {self.proc.returncode}:\n{self.logs()}")

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # Never leave a worker behind, whatever happened.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> Gateway:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# The ``standalone_gateway`` fixture (tests/conftest.py): ``(apisix_yaml, **options) -> Gateway``.
StartGateway = Callable[..., Gateway]
