"""limit-count's ``redis`` policy through the real process and a real redis-server: one count
for a fleet, APISIX's keys, allow_degradation, Redis killed, hung and restarted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.support.gateway import Gateway, wait_until
from tests.support.redis import RedisServer, redis_server
from tests.support.upstream import Upstream

__all__ = ["redis_server"]

ROUTES = """
routes:
  - id: fixed
    uri: /fixed
    plugins:
      limit-count: {count: 3, time_window: 60, policy: redis, redis_host: "127.0.0.1", redis_port: %(port)d}
    upstream: {nodes: {"%(up)s": 1}}
  - id: fleet
    uri: /fleet
    plugins:
      limit-count: {count: 10, time_window: 60, key_type: constant, key: all, policy: redis, redis_host: "127.0.0.1", redis_port: %(port)d}
    upstream: {nodes: {"%(up)s": 1}}
  - id: grouped
    uri: /grouped
    plugins:
      limit-count: {count: 2, time_window: 60, group: shared, key: http_x_user, rejected_code: 429, rejected_msg: "too many", policy: redis, redis_host: "127.0.0.1", redis_port: %(port)d}
    upstream: {nodes: {"%(up)s": 1}}
  - id: sliding
    uri: /sliding
    plugins:
      limit-count: {count: 2, time_window: 2, window_type: sliding, key_type: constant, key: s, policy: redis, redis_host: "127.0.0.1", redis_port: %(port)d}
    upstream: {nodes: {"%(up)s": 1}}
  - id: sliding-local
    uri: /sliding-local
    plugins:
      limit-count: {count: 2, time_window: 2, window_type: sliding, key_type: constant, key: s}
    upstream: {nodes: {"%(up)s": 1}}
  - id: synced
    uri: /synced
    plugins:
      limit-count: {count: 10, time_window: 60, key_type: constant, key: s, sync_interval: 0.2, policy: redis, redis_host: "127.0.0.1", redis_port: %(port)d}
    upstream: {nodes: {"%(up)s": 1}}
  - id: db
    uri: /db
    plugins:
      limit-count: {count: 5, time_window: 60, group: dbg, key_type: constant, key: k, policy: redis, redis_host: "127.0.0.1", redis_port: %(port)d, redis_database: 3}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def gws(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, redis_server: RedisServer
) -> Iterator[tuple[Gateway, Gateway]]:
    """Two instances on one Redis: one with 2 workers, one with 1."""
    yaml = ROUTES % {"up": upstream.addr, "port": redis_server.port}
    root: Path = tmp_path_factory.mktemp("gw")
    with (
        Gateway(root / "a", apisix_yaml=yaml, workers=2) as a,
        Gateway(root / "b", apisix_yaml=yaml, workers=1) as b,
    ):
        wait_until(lambda: len(a.worker_pids()) == 2)
        yield a, b


def test_counts_in_redis_with_the_local_policys_answers(
    gws: tuple[Gateway, Gateway], redis_server: RedisServer
) -> None:
    a, _ = gws
    seen = []
    for _ in range(3):
        r = requests.get(a.url("/fixed"))
        assert r.status_code == 200
        assert r.headers["X-RateLimit-Limit"] == "3"
        seen.append(r.headers["X-RateLimit-Remaining"])
        assert 59 <= int(r.headers["X-RateLimit-Reset"]) <= 60
    assert seen == ["2", "1", "0"]
    r = requests.get(a.url("/fixed"))
    assert r.status_code == 503
    assert b"503 Service Temporarily Unavailable" in r.content  # nginx's page (no rejected_msg)
    assert r.headers["X-RateLimit-Remaining"] == "0"
    # APISIX's key and format: the route's scope, a string count, the window as TTL; a
    # rejected request is counted too (INCRBY before the check).
    keys = redis_server.cli("--scan", "--pattern", "plugin-limit-count:v1:/apisix/routes/fixed:*")
    assert len(keys.split()) == 1, keys
    assert redis_server.cli("get", keys) == "4"
    assert 58 <= int(redis_server.cli("ttl", keys)) <= 60


def test_two_instances_let_exactly_n_through(gws: tuple[Gateway, Gateway]) -> None:
    a, b = gws

    def hit(i: int) -> int:
        gw = a if i % 2 else b
        return requests.get(gw.url("/fleet"), timeout=10).status_code

    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(hit, range(40)))
    assert statuses.count(200) == 10, statuses
    assert statuses.count(503) == 30, statuses


def test_group_key_is_apisixs(gws: tuple[Gateway, Gateway], redis_server: RedisServer) -> None:
    a, b = gws
    # An APISIX instance with the same group on this Redis counts in this very key.
    redis_server.cli("set", "plugin-limit-count:v1:shared:u1", "1", "EX", "60")
    r = requests.get(a.url("/grouped"), headers={"X-User": "u1"})
    assert r.status_code == 200
    assert r.headers["X-RateLimit-Remaining"] == "0"
    r = requests.get(b.url("/grouped"), headers={"X-User": "u1"})
    assert r.status_code == 429
    assert r.json() == {"error_msg": "too many"}
    assert requests.get(b.url("/grouped"), headers={"X-User": "u2"}).status_code == 200
    assert redis_server.cli("get", "plugin-limit-count:v1:shared:u1") == "3"


def test_database_is_selected(gws: tuple[Gateway, Gateway], redis_server: RedisServer) -> None:
    a, _ = gws
    assert requests.get(a.url("/db")).status_code == 200
    assert redis_server.cli("-n", "3", "get", "plugin-limit-count:v1:dbg:k") == "1"
    assert redis_server.cli("-n", "0", "exists", "plugin-limit-count:v1:dbg:k") == "0"


@pytest.mark.parametrize("path", ["/sliding", "/sliding-local"])
def test_sliding_window_weighs_the_previous_window(
    gws: tuple[Gateway, Gateway], redis_server: RedisServer, path: str
) -> None:
    a, _ = gws
    # Start just after a 2 s window begins, so both requests land in one window.
    wait_until(lambda: time.time() % 2 < 0.5, timeout=3, interval=0.01)
    statuses = [requests.get(a.url(path)).status_code for _ in range(3)]
    assert statuses == [200, 200, 503]
    wid = int(time.time() // 2)
    if path == "/sliding":  # the local policy counts in the instance's table
        keys = redis_server.cli("--scan", "--pattern", f"plugin-limit-count:*.{wid}.counter")
        assert (
            len(keys.split()) == 1 and redis_server.cli("get", keys) == "2"
        )  # rejected: not counted
    # Early in the next window the previous one's 2 still weigh more than 1.5: one request
    # fits, not two (a fixed window would let both through).
    wait_until(lambda: int(time.time() // 2) == wid + 1 and time.time() % 2 < 0.5, timeout=4)
    r = requests.get(a.url(path))
    assert r.status_code == 200
    assert r.headers["X-RateLimit-Remaining"] == "0"
    r = requests.get(a.url(path))
    assert r.status_code == 503
    assert int(r.headers["X-RateLimit-Reset"]) >= 1


def test_sync_interval_counts_in_the_instance_and_syncs_in_the_background(
    gws: tuple[Gateway, Gateway], redis_server: RedisServer
) -> None:
    a, b = gws
    # One request reads the quota (its count is stored with the next sync, not at once).
    assert requests.get(a.url("/synced")).headers["X-RateLimit-Remaining"] == "9"
    pattern = "plugin-limit-count:v1:/apisix/routes/synced:*"
    key = wait_until(lambda: redis_server.cli("--scan", "--pattern", pattern), timeout=5)
    wait_until(lambda: redis_server.cli("get", key) == "1", timeout=5)
    # Both workers of instance a spend one quota: exactly 10 in all (a new connection per
    # request spreads them over the workers).
    statuses = [requests.get(a.url("/synced"), headers={"Connection": "close"}).status_code
                for _ in range(12)]  # fmt: skip
    assert statuses.count(200) == 9 and statuses.count(503) == 3, statuses
    wait_until(lambda: redis_server.cli("get", key) == "10", timeout=5)
    # Another instance reads the quota Redis holds: nothing left.
    assert requests.get(b.url("/synced")).status_code == 503


DEGRADE = """
routes:
  - id: strict
    uri: /strict
    plugins:
      limit-count: {count: 2, time_window: 60, key_type: constant, key: k, policy: redis, redis_host: "127.0.0.1", redis_port: %(port)d, redis_timeout: 300}
    upstream: {nodes: {"%(up)s": 1}}
  - id: lenient
    uri: /lenient
    plugins:
      limit-count: {count: 2, time_window: 60, key_type: constant, key: k, policy: redis, redis_host: "127.0.0.1", redis_port: %(port)d, redis_timeout: 300, allow_degradation: true}
    upstream: {nodes: {"%(up)s": 1}}
  - id: synced
    uri: /synced
    plugins:
      limit-count: {count: 3, time_window: 60, key_type: constant, key: k, sync_interval: 0.2, policy: redis, redis_host: "127.0.0.1", redis_port: %(port)d, redis_timeout: 300}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


def _timed(gw: Gateway, path: str) -> tuple[int, float]:
    t0 = time.monotonic()
    r = requests.get(gw.url(path), timeout=10)
    return r.status_code, time.monotonic() - t0


def test_redis_down_hung_and_back(tmp_path: Path, upstream: Upstream) -> None:
    with (
        RedisServer() as redis,
        Gateway(tmp_path, apisix_yaml=DEGRADE % {"up": upstream.addr, "port": redis.port}) as gw,
    ):
        assert requests.get(gw.url("/strict")).status_code == 200
        # Killed: refused at once, 500 (APISIX's body) or no limit with allow_degradation.
        redis.kill()
        r = requests.get(gw.url("/strict"))
        assert r.status_code == 500
        assert r.json() == {"error_msg": "failed to limit count"}
        for _ in range(4):
            assert requests.get(gw.url("/lenient")).status_code == 200
        # With sync_interval the instance counts by itself meanwhile (APISIX's fallback).
        statuses = [requests.get(gw.url("/synced")).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 503]
        # Back on the same port, empty: counted again, no gateway restart.
        redis.start()
        statuses = [requests.get(gw.url("/strict")).status_code for _ in range(3)]
        assert statuses == [200, 200, 503]
        # Hung (SIGSTOP): answered within the 300 ms timeout, and the worker keeps serving
        # other requests meanwhile.
        redis.pause()
        try:
            status, took = _timed(gw, "/strict")
            assert status == 500 and took < 1.5, took
            with ThreadPoolExecutor(4) as pool:
                results = list(pool.map(lambda _: _timed(gw, "/lenient"), range(8)))
            assert all(s == 200 for s, _ in results), results
            assert max(t for _, t in results) < 2.0, results
        finally:
            redis.resume()
        # Resumed: the count is there and enforced.
        assert requests.get(gw.url("/strict")).status_code == 503
