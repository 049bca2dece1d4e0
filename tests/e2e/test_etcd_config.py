"""etcd as the config center, through the real process (issue #3)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.etcd import EtcdServer
from tests.support.gateway import Gateway, wait_until
from tests.support.upstream import Upstream


def route(up: Upstream, uri: str, **extra: object) -> str:
    return json.dumps({"uri": uri, "upstream": {"nodes": {up.addr: 1}}, **extra})


def code(g: Gateway, path: str) -> int:
    return requests.get(g.url(path), timeout=5).status_code


def gateway(tmp_path: Path, etcd: EtcdServer, workers: int = 1) -> Gateway:
    return Gateway(
        tmp_path, mode="etcd", etcd=etcd.endpoint, workers=workers,
        config={"apisix": {"enable_admin": False}},
    )  # fmt: skip


@pytest.fixture
def gw(tmp_path: Path, etcd: EtcdServer, upstream: Upstream) -> Iterator[Gateway]:
    etcd.put("/apisix/routes/1", route(upstream, "/one"))
    with gateway(tmp_path, etcd, workers=2) as g:
        yield g


def config_status(g: Gateway) -> dict[str, object]:
    r = g.status("/status/config")
    assert r.status_code == 200
    body: dict[str, object] = r.json()
    return body


def test_put_and_delete_reach_the_data_plane(
    gw: Gateway, etcd: EtcdServer, upstream: Upstream
) -> None:
    assert code(gw, "/one") == 200
    etcd.put("/apisix/routes/2", route(upstream, "/two"))
    wait_until(lambda: code(gw, "/two") == 200, timeout=2)
    etcd.delete("/apisix/routes/1")
    wait_until(lambda: code(gw, "/one") == 404, timeout=2)
    # Directory placeholders are ignored.
    etcd.put("/apisix/routes/", "init_dir")
    assert code(gw, "/two") == 200


def test_invalid_updates_keep_the_previous_value(
    gw: Gateway, etcd: EtcdServer, upstream: Upstream
) -> None:
    etcd.put("/apisix/routes/1", "{not json")
    etcd.put("/apisix/routes/1", json.dumps({"uri": "/one", "upstream": {"nodes": {"x:1": -5}}}))
    etcd.put("/apisix/routes/1", json.dumps([1, 2]))
    etcd.put("/apisix/routes/3", route(upstream, "/three"))  # a later valid change still applies
    wait_until(lambda: code(gw, "/three") == 200)
    assert code(gw, "/one") == 200
    logs = gw.logs()
    assert "rejected config item /apisix/routes/1: invalid JSON" in logs
    assert "it should be an object" in logs
    assert config_status(gw)["rejected"] == 3


def test_workers_apply_the_same_revision(gw: Gateway, etcd: EtcdServer, upstream: Upstream) -> None:
    for i in range(20):
        etcd.put(f"/apisix/routes/r{i}", route(upstream, f"/r{i}"))
    rev = etcd.revision()

    def all_at_rev() -> bool:
        workers = config_status(gw)["workers"]
        assert isinstance(workers, list) and len(workers) == 2
        return all(w["revision"] == rev for w in workers)

    wait_until(all_at_rev)
    assert all(code(gw, f"/r{i}") == 200 for i in range(20))


def test_compaction_then_writes_lose_nothing(
    gw: Gateway, etcd: EtcdServer, upstream: Upstream
) -> None:
    for i in range(10):
        etcd.put(f"/apisix/routes/c{i}", route(upstream, f"/c{i}"))
    etcd.compact()
    for i in range(10, 15):
        etcd.put(f"/apisix/routes/c{i}", route(upstream, f"/c{i}"))
    wait_until(lambda: all(code(gw, f"/c{i}") == 200 for i in range(15)), timeout=10)


def test_etcd_outage_keeps_serving_and_recovers(
    gw: Gateway, etcd: EtcdServer, upstream: Upstream
) -> None:
    failures: list[int] = []
    done: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        s = requests.Session()
        while not stop.is_set():
            status = s.get(gw.url("/one"), timeout=5).status_code
            done.append(1)
            if status != 200:
                failures.append(status)

    t = threading.Thread(target=traffic)
    t.start()
    try:
        wait_until(lambda: len(done) > 10)
        etcd.kill()
        n = len(done)
        wait_until(lambda: len(done) > n + 50)
        etcd.restart()
        etcd.put("/apisix/routes/after", route(upstream, "/after"))
        wait_until(lambda: code(gw, "/after") == 200, timeout=15)
    finally:
        stop.set()
        t.join(10)
    assert failures == []


def test_etcd_wiped_triggers_full_reload(gw: Gateway, etcd: EtcdServer, upstream: Upstream) -> None:
    for i in range(5):
        etcd.put(f"/apisix/routes/w{i}", route(upstream, f"/w{i}"))
    wait_until(lambda: code(gw, "/w4") == 200)
    etcd.wipe_and_restart()
    etcd.put("/apisix/routes/fresh", route(upstream, "/fresh"))
    wait_until(lambda: code(gw, "/fresh") == 200, timeout=15)
    wait_until(lambda: code(gw, "/one") == 404, timeout=5)


def test_starts_from_snapshot_when_etcd_is_down(
    tmp_path: Path, etcd: EtcdServer, upstream: Upstream
) -> None:
    etcd.put("/apisix/routes/1", route(upstream, "/snap"))
    g = gateway(tmp_path, etcd)
    with g:
        assert code(g, "/snap") == 200
        snapshot = tmp_path / "run" / "config-snapshot.bin"
        wait_until(snapshot.exists)
    etcd.stop()
    with g.start(wait_ready=False):
        g.wait_ready(timeout=30)
        assert code(g, "/snap") == 200
        assert config_status(g)["from_snapshot"] is True
        assert "SERVING THE LAST-KNOWN-GOOD SNAPSHOT" in g.logs()
        etcd.restart()
        etcd.put("/apisix/routes/2", route(upstream, "/later"))
        wait_until(lambda: code(g, "/later") == 200, timeout=20)
        assert config_status(g)["from_snapshot"] is False


def test_not_ready_until_loaded(tmp_path: Path, etcd: EtcdServer) -> None:
    etcd.stop()
    g = gateway(tmp_path, etcd)
    with g.start(wait_ready=False):
        wait_until(lambda: g.status("/status").status_code == 200, timeout=20)
        assert g.status("/status/ready").status_code == 503
        etcd.restart()
        g.wait_ready(timeout=30)


def test_disable_sync_during_start_serves_before_etcd(
    tmp_path: Path, etcd: EtcdServer, upstream: Upstream
) -> None:
    etcd.put("/apisix/routes/1", route(upstream, "/late"))
    etcd.stop()
    g = Gateway(
        tmp_path, mode="etcd", etcd=etcd.endpoint,
        config={"apisix": {"enable_admin": False, "disable_sync_configuration_during_start": True}},
    )  # fmt: skip
    with g.start(wait_ready=False):
        wait_until(lambda: code(g, "/late") == 404, timeout=20)  # serving, config not synced yet
        etcd.restart()
        wait_until(lambda: code(g, "/late") == 200, timeout=20)
