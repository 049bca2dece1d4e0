"""A config large enough to be read over etcd's gRPC API (issue #17), through the real process.

The supervisor reads the first page over the gateway and the rest over gRPC; an invalid item in
that part is still rejected, the rest serves; workers restarted or reloaded afterwards (the
supervisor has grpcio's threads by then) get the whole config.
"""

from __future__ import annotations

import base64
import json
import os
import signal
from pathlib import Path

import requests

from tests.support.etcd import EtcdServer
from tests.support.gateway import Gateway, wait_until
from tests.support.upstream import Upstream
from tollway.config.etcd import GRPC_BULK_MIN

COUNT = GRPC_BULK_MIN + 1500  # the first page is 1,000 keys: 5,500 follow it
TXN_OPS = 128  # etcd's default --max-txn-ops


def _b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode()


def write_routes(etcd: EtcdServer, up: Upstream, bad: int) -> None:
    """COUNT routes /r/<i> in transactions; route ``bad`` is invalid (no uri)."""
    session = requests.Session()
    ops = []
    for i in range(COUNT):
        value = {"uri": f"/r/{i}", "upstream": {"nodes": {up.addr: 1}}}
        if i == bad:
            value = {"upstream": {"nodes": {up.addr: 1}}}
        ops.append(
            {
                "requestPut": {
                    "key": _b64(f"/apisix/routes/{i:05d}"),
                    "value": _b64(json.dumps(value)),
                }
            }
        )
        if len(ops) == TXN_OPS or i == COUNT - 1:
            r = session.post(f"{etcd.endpoint}/v3/kv/txn", json={"success": ops}, timeout=10)
            assert r.status_code == 200, r.text
            ops = []


def code(g: Gateway, path: str) -> int:
    return requests.get(g.url(path), timeout=5).status_code


def test_large_config_over_grpc_serves_and_survives_restart_and_reload(
    tmp_path: Path, etcd: EtcdServer, upstream: Upstream
) -> None:
    bad = COUNT - 7  # sorts into the part read over gRPC
    write_routes(etcd, upstream, bad)
    g = Gateway(
        tmp_path, mode="etcd", etcd=etcd.endpoint, workers=2,
        config={"apisix": {"enable_admin": False}},
    )  # fmt: skip
    with g.start(wait_ready=False):
        g.wait_ready(timeout=60)
        assert f"etcd: read {COUNT - 1000} keys over gRPC" in g.logs()
        assert "rejected config item /apisix/routes/" in g.logs()
        assert code(g, f"/r/{COUNT - 1}") == 200  # the last key
        assert code(g, "/r/0") == 200  # from the gateway's first page
        assert code(g, f"/r/{bad}") == 404  # rejected: never served
        pids = wait_until(lambda: len(g.worker_pids()) == 2 and g.worker_pids())
        os.kill(pids[0], signal.SIGKILL)
        wait_until(lambda: len(g.worker_pids()) == 2 and pids[0] not in g.worker_pids(), 30)
        g.wait_ready(timeout=60)
        old = set(g.worker_pids())
        g.signal(signal.SIGHUP)
        wait_until(lambda: not (set(g.worker_pids()) & old) and len(g.worker_pids()) == 2, 60)
        for i in (0, COUNT // 2, COUNT - 1):
            assert code(g, f"/r/{i}") == 200
