"""`tollway stop` while an Admin API request hangs on a frozen etcd (issue #11): the proxy ports
refuse new connections at once (no backlog that nothing accepts from), and the process exits
within tollway.graceful_timeout, cancelling the Admin API request (the etcd client alone would
wait 30 s)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support.etcd import EtcdServer
from tests.support.gateway import Gateway
from tests.support.wait import wait_until

GRACE = 3.0


def etcd_backlog(etcd: EtcdServer) -> int:
    """Bytes that clients sent etcd and it has not read (it is frozen): a request reached it.
    From /proc/net/tcp (no iproute2 needed): established sockets on etcd's port, rx_queue."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if int(local.split(":")[1], 16) == etcd.client_port and state == "01":
            total += int(queues.split(":")[1], 16)
    return total


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_stop_during_an_admin_request_on_frozen_etcd(tmp_path: Path, etcd: EtcdServer) -> None:
    g = Gateway(
        tmp_path, mode="etcd", etcd=etcd.endpoint, workers=2,
        config={"tollway": {"graceful_timeout": GRACE}},
    )  # fmt: skip
    with g:
        headers = {"X-API-KEY": g.admin_key}
        body = {"uri": "/r", "plugins": {"fault-injection": {"abort": {"http_status": 200}}}}
        r = requests.put(g.admin_url("/routes/r"), json=body, headers=headers, timeout=5)
        assert r.status_code in (200, 201), r.text
        wait_until(lambda: requests.get(g.url("/r"), timeout=2).status_code == 200)
        etcd.pause()
        try:
            # A raw request: once sent, it is in flight whatever the client library does.
            admin = socket.create_connection(("127.0.0.1", g.admin_port), timeout=30)
            payload = json.dumps({**body, "desc": "never written"}).encode()
            admin.sendall(
                b"PUT /apisix/admin/routes/r HTTP/1.1\r\nHost: x\r\nX-API-KEY: "
                + g.admin_key.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(payload)).encode()
                + b"\r\n\r\n"
                + payload
            )
            wait_until(lambda: etcd_backlog(etcd) > 0)  # the write waits on frozen etcd
            subprocess.run(
                [sys.executable, "-m", "tollway.cli", "stop", "-c", str(g.config_path)],
                check=True, timeout=10,
            )  # fmt: skip
            t0 = time.monotonic()  # SIGTERM sent
            # New connections are refused while the instance is still stopping.
            wait_until(lambda: refused(g.port), timeout=2)
            assert g.proc is not None
            still_running = g.proc.poll() is None
            refused_after = time.monotonic() - t0
            g.proc.wait(GRACE + 10)
            took = time.monotonic() - t0
            answer = admin.recv(4096)  # the cancelled request: an error answer or a closed socket
            admin.close()
        finally:
            etcd.resume()
    print(f"refused after {refused_after:.2f} s, exited after {took:.2f} s ({answer[:40]!r})")
    assert still_running, "the ports must close before the process exits"
    assert g.proc.returncode == 0
    assert took <= GRACE + 1.0
    assert not answer.startswith(b"HTTP/1.1 2"), "the write was not done: no success answer"
