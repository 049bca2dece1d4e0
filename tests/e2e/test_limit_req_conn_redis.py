"""limit-req and limit-conn with the ``redis`` policy: two real instances on one real
redis-server share the bucket and the connection count; APISIX's keys; Redis down."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.support.gateway import Gateway, free_port, wait_until
from tests.support.redis import RedisServer, redis_server
from tests.support.upstream import Upstream

__all__ = ["redis_server"]

ROUTES = """
routes:
  - id: req
    uri: /req
    plugins:
      limit-req: {rate: 1, burst: 0, key: remote_addr, nodelay: true, policy: redis, redis_host: "127.0.0.1", redis_port: %(port)d}
    upstream: {nodes: {"%(up)s": 1}}
  - id: req-delay
    uri: /req-delay
    plugins:
      limit-req: {rate: 2, burst: 1, key: http_x_k, policy: redis, redis_host: "127.0.0.1", redis_port: %(port)d}
    upstream: {nodes: {"%(up)s": 1}}
  - id: conn
    uri: /slow/*
    plugins:
      limit-conn: {conn: 1, burst: 1, default_conn_delay: 0.1, key: remote_addr, rejected_code: 429, policy: redis, redis_host: "127.0.0.1", redis_port: %(port)d}
    upstream: {nodes: {"%(up)s": 1}}
  - id: req-down
    uri: /req-down
    plugins:
      limit-req: {rate: 1, burst: 0, key: remote_addr, policy: redis, redis_host: "127.0.0.1", redis_port: %(dead)d}
    upstream: {nodes: {"%(up)s": 1}}
  - id: req-degrade
    uri: /req-degrade
    plugins:
      limit-req: {rate: 1, burst: 0, key: remote_addr, policy: redis, redis_host: "127.0.0.1", redis_port: %(dead)d, allow_degradation: true}
    upstream: {nodes: {"%(up)s": 1}}
  - id: conn-down
    uri: /conn-down
    plugins:
      limit-conn: {conn: 1, burst: 0, default_conn_delay: 0.1, key: remote_addr, policy: redis, redis_host: "127.0.0.1", redis_port: %(dead)d}
    upstream: {nodes: {"%(up)s": 1}}
  - id: conn-degrade
    uri: /conn-degrade
    plugins:
      limit-conn: {conn: 1, burst: 0, default_conn_delay: 0.1, key: remote_addr, policy: redis, redis_host: "127.0.0.1", redis_port: %(dead)d, allow_degradation: true}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def gws(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, redis_server: RedisServer
) -> Iterator[tuple[Gateway, Gateway]]:
    yaml = ROUTES % {"up": upstream.addr, "port": redis_server.port, "dead": free_port()}
    root: Path = tmp_path_factory.mktemp("gw")
    with (
        Gateway(root / "a", apisix_yaml=yaml, workers=2) as a,
        Gateway(root / "b", apisix_yaml=yaml) as b,
    ):
        yield a, b


def test_limit_req_bucket_is_shared_by_instances(
    gws: tuple[Gateway, Gateway], redis_server: RedisServer
) -> None:
    a, b = gws
    assert requests.get(a.url("/req")).status_code == 200
    # 1 request/s, no burst: the other instance sees the same bucket.
    assert requests.get(b.url("/req")).status_code == 503
    keys = redis_server.cli("--scan", "--pattern", "limit_req:/apisix/routes/req:*")
    assert len(keys.split()) == 1 and keys.endswith(":127.0.0.1"), keys
    fields = redis_server.cli("hgetall", keys).split()
    assert fields[0::2] == ["excess", "last"]
    assert abs(float(fields[3]) / 1000 - time.time()) < 5  # milliseconds, as APISIX
    assert 1 <= int(redis_server.cli("ttl", keys)) <= 2  # ceil(burst / rate) + 1
    # Drained after a second.
    wait_until(lambda: requests.get(b.url("/req")).status_code == 200, timeout=3)


def test_limit_req_delays_within_burst(gws: tuple[Gateway, Gateway]) -> None:
    a, b = gws

    def hit(i: int) -> tuple[int, float]:
        t0 = time.monotonic()
        r = requests.get((a, b)[i % 2].url("/req-delay"), headers={"X-K": "d"}, timeout=10)
        return r.status_code, time.monotonic() - t0

    with ThreadPoolExecutor(3) as pool:
        results = sorted(pool.map(hit, range(3)), key=lambda r: r[1])
    # 2/s with a burst of 1, at once: the first passes, the second waits its excess (1 at 2/s:
    # 0.5 s), the third is over the burst and rejected without waiting.
    statuses = sorted(s for s, _ in results)
    assert statuses == [200, 200, 503], results
    assert 0.35 <= max(t for s, t in results if s == 200) < 2.0, results
    assert next(t for s, t in results if s == 503) < 0.35, results


def test_limit_conn_counts_requests_in_flight_across_instances(
    gws: tuple[Gateway, Gateway], redis_server: RedisServer
) -> None:
    a, b = gws

    def hit(i: int) -> int:
        gw = (a, b)[i % 2]
        return requests.get(gw.url("/slow/1500"), timeout=10).status_code

    def scan() -> str:
        return redis_server.cli("--scan", "--pattern", "limit_conn:/apisix/routes/conn:*")

    with ThreadPoolExecutor(6) as pool:
        running = pool.map(hit, range(6))
        # In flight: APISIX's sorted set, one member per admitted request.
        key = wait_until(scan, timeout=5)
        wait_until(lambda: redis_server.cli("zcard", key) == "2", timeout=5)
        statuses = list(running)
    # conn 1 + burst 1: two in flight at most, over both instances; the rest get 429.
    assert statuses.count(200) == 2, statuses
    assert statuses.count(429) == 4, statuses
    # Every admitted request was counted out in the log phase (the empty set is gone).
    wait_until(lambda: scan() == "", timeout=5)
    assert requests.get(a.url("/slow/10")).status_code == 200


def test_redis_unreachable_fails_or_degrades(gws: tuple[Gateway, Gateway]) -> None:
    a, _ = gws
    assert requests.get(a.url("/req-down")).status_code == 500
    assert requests.get(a.url("/conn-down")).status_code == 500
    for _ in range(3):
        assert requests.get(a.url("/req-degrade")).status_code == 200
        assert requests.get(a.url("/conn-degrade")).status_code == 200
