"""The ``redis-cluster`` policy on a real 3-master cluster and the ``redis-sentinel`` policy
through a real sentinel, with the real process: counts land on the masters that own the keys'
slots (or on the sentinel's master) and are shared by two instances."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.support.gateway import Gateway, wait_until
from tests.support.redis import RedisCluster, RedisSentinel, redis_cluster, redis_sentinel
from tests.support.upstream import Upstream

__all__ = ["redis_cluster", "redis_sentinel"]

ROUTES = """
routes:
  - id: cc
    uri: /cc
    plugins:
      limit-count: {count: 2, time_window: 60, key: http_x_user, policy: redis-cluster, redis_cluster_nodes: %(nodes)s, redis_cluster_name: c1, redis_timeout: 500}
    upstream: {nodes: {"%(up)s": 1}}
  - id: cc-sliding
    uri: /cc-sliding
    plugins:
      limit-count: {count: 2, time_window: 60, window_type: sliding, key: http_x_user, policy: redis-cluster, redis_cluster_nodes: %(nodes)s, redis_cluster_name: c1}
    upstream: {nodes: {"%(up)s": 1}}
  - id: creq
    uri: /creq
    plugins:
      limit-req: {rate: 1, burst: 0, key: http_x_user, nodelay: true, policy: redis-cluster, redis_cluster_nodes: %(nodes)s, redis_cluster_name: c1}
    upstream: {nodes: {"%(up)s": 1}}
  - id: cconn
    uri: /slow/*
    plugins:
      limit-conn: {conn: 1, burst: 0, default_conn_delay: 0.1, key: remote_addr, policy: redis-cluster, redis_cluster_nodes: %(nodes)s, redis_cluster_name: c1}
    upstream: {nodes: {"%(up)s": 1}}
  - id: sentinel
    uri: /sentinel
    plugins:
      limit-count: {count: 3, time_window: 60, key_type: constant, key: all, policy: redis-sentinel, redis_sentinels: [{host: "127.0.0.1", port: %(sentinel)d}], redis_master_name: mymaster}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def gws(
    tmp_path_factory: pytest.TempPathFactory,
    upstream: Upstream,
    redis_cluster: RedisCluster,
    redis_sentinel: RedisSentinel,
) -> Iterator[tuple[Gateway, Gateway]]:
    yaml = ROUTES % {
        "up": upstream.addr,
        "nodes": json.dumps(redis_cluster.addrs),
        "sentinel": redis_sentinel.port,
    }
    root: Path = tmp_path_factory.mktemp("gw")
    with (
        Gateway(root / "a", apisix_yaml=yaml, workers=2) as a,
        Gateway(root / "b", apisix_yaml=yaml) as b,
    ):
        yield a, b


def test_cluster_counts_each_key_on_its_slots_master(
    gws: tuple[Gateway, Gateway], redis_cluster: RedisCluster
) -> None:
    a, b = gws
    users = [f"user{i}" for i in range(12)]
    for u in users:
        got = [requests.get(gw.url("/cc"), headers={"X-User": u}).status_code for gw in (a, b, a)]
        assert got == [200, 200, 503], (u, got)
    # Twelve keys spread over the three masters (each holds only the slots it owns).
    sizes = [int(n.cli("dbsize")) for n in redis_cluster.nodes]
    assert sum(sizes) == 12 and sum(1 for s in sizes if s) >= 2, sizes


def test_cluster_sliding_window(gws: tuple[Gateway, Gateway]) -> None:
    a, b = gws
    got = [requests.get(gw.url("/cc-sliding"), headers={"X-User": "s"}).status_code
           for gw in (a, b, a)]  # fmt: skip
    assert got == [200, 200, 503]


def test_cluster_limit_req_and_limit_conn(gws: tuple[Gateway, Gateway]) -> None:
    a, b = gws
    assert requests.get(a.url("/creq"), headers={"X-User": "r"}).status_code == 200
    assert requests.get(b.url("/creq"), headers={"X-User": "r"}).status_code == 503

    def hit(i: int) -> int:
        return requests.get((a, b)[i % 2].url("/slow/1000"), timeout=10).status_code

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(hit, range(4)))
    assert statuses.count(200) == 1 and statuses.count(503) == 3, statuses
    wait_until(lambda: requests.get(a.url("/slow/1")).status_code == 200, timeout=5)


def test_sentinel_finds_the_master(
    gws: tuple[Gateway, Gateway], redis_sentinel: RedisSentinel
) -> None:
    a, b = gws
    got = [requests.get(gw.url("/sentinel")).status_code for gw in (a, b, a, b)]
    assert got == [200, 200, 200, 503]
    keys = redis_sentinel.master.cli("--scan", "--pattern", "plugin-limit-count:v1:*")
    assert len(keys.split()) == 1
    assert redis_sentinel.master.cli("get", keys) == "4"


FAILOVER = """
routes:
  - id: sf
    uri: /sf
    plugins:
      limit-count: {count: 100, time_window: 60, key_type: constant, key: all, policy: redis-sentinel, redis_sentinels: [{host: "127.0.0.1", port: %(sentinel)d}], redis_master_name: mymaster, redis_connect_timeout: 300, redis_read_timeout: 300}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


def test_sentinel_failover_is_followed_without_restart(tmp_path: Path, upstream: Upstream) -> None:
    s = RedisSentinel(replica=True).start()
    replica = s.replica
    assert replica is not None
    yaml = FAILOVER % {"up": upstream.addr, "sentinel": s.port}
    try:
        with Gateway(tmp_path, apisix_yaml=yaml) as gw:
            assert requests.get(gw.url("/sf")).headers["X-RateLimit-Remaining"] == "99"
            # Wait for the replica to hold the count, then lose the master.
            pattern = "plugin-limit-count:v1:*"
            key = wait_until(lambda: replica.cli("--scan", "--pattern", pattern))
            wait_until(s.knows_replica, timeout=30)
            s.master.kill()
            assert requests.get(gw.url("/sf")).status_code == 500  # no master for now
            # The sentinel promotes the replica; the next requests count there.
            wait_until(lambda: s.master_port() == replica.port, timeout=60)

            def counted() -> requests.Response | None:
                r = requests.get(gw.url("/sf"))
                return r if r.status_code == 200 else None

            r = wait_until(counted, timeout=15)
            assert int(r.headers["X-RateLimit-Remaining"]) < 99
            assert int(replica.cli("get", key)) >= 2
    finally:
        s.close()
