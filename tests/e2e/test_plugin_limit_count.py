"""limit-count through the real process, with two workers sharing the counters."""

from __future__ import annotations

import http.client
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway, free_port, wait_until
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: lc
    uri: /lc
    plugins:
      limit-count: {count: 3, time_window: 60}
    upstream: {nodes: {"%(up)s": 1}}
  - id: msg
    uri: /msg
    plugins:
      limit-count: {count: 1, time_window: 60, rejected_code: 429, rejected_msg: "slow down", key: http_x_user}
    upstream: {nodes: {"%(up)s": 1}}
  - id: nohdr
    uri: /nohdr
    plugins:
      limit-count: {count: 1, time_window: 60, show_limit_quota_header: false}
    upstream: {nodes: {"%(up)s": 1}}
  - id: short
    uri: /short
    plugins:
      limit-count: {count: 1, time_window: 1, key_type: constant, key: all}
    upstream: {nodes: {"%(up)s": 1}}
  - id: redis
    uri: /redis
    plugins:
      limit-count: {count: 1, time_window: 60, policy: redis, redis_host: "127.0.0.1"}
    upstream: {nodes: {"%(up)s": 1}}
  - id: grouped-a
    uri: /group-a
    plugins:
      limit-count: {count: 2, time_window: 60, group: g1}
    upstream: {nodes: {"%(up)s": 1}}
  - id: grouped-b
    uri: /group-b
    plugins:
      limit-count: {count: 2, time_window: 60, group: g1}
    upstream: {nodes: {"%(up)s": 1}}
  - id: concurrent
    uri: /concurrent
    plugins:
      limit-count: {count: 20, time_window: 60, key_type: constant, key: all}
    upstream: {nodes: {"%(up)s": 1}}
  - id: upstream-quota
    uri: /with-headers
    plugins:
      limit-count: {count: 100, time_window: 60}
    upstream: {nodes: {"%(up)s": 1}}
  - id: rewritten-quota
    uri: /rewritten-quota
    plugins:
      limit-count: {count: 100, time_window: 60}
      response-rewrite: {headers: {set: {X-RateLimit-Limit: "rewritten"}}}
    upstream: {nodes: {"%(up)s": 1}}
  - id: down
    uri: /down
    plugins:
      limit-count: {count: 100, time_window: 60}
    upstream: {nodes: {"%(down)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    g = standalone_gateway(CONFIG % {"up": upstream.addr, "down": down}, workers=2)
    wait_until(lambda: len(g.worker_pids()) == 2)
    return g


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def _server_inode(client_port: int, server_port: int) -> str | None:
    """The inode of the gateway's side of the loopback connection from ``client_port``."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            local, remote, inode = parts[1], parts[2], parts[9]
            if (
                int(local.split(":")[1], 16) == server_port
                and int(remote.split(":")[1], 16) == client_port
            ):
                return inode if inode != "0" else None  # 0: not accepted yet
    return None


def _connections_on_both_workers(gw: Gateway, n: int) -> list[http.client.HTTPConnection]:
    """Open connections until both workers own at least one, then return ``n`` of them
    (at least one per worker)."""
    pids = gw.worker_pids()
    assert len(pids) == 2
    by_pid: dict[int, list[http.client.HTTPConnection]] = {p: [] for p in pids}
    opened: list[http.client.HTTPConnection] = []

    def both() -> bool:
        c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        c.connect()
        opened.append(c)
        port = c.sock.getsockname()[1]
        inode = wait_until(lambda: _server_inode(port, gw.port), timeout=5)
        owner = wait_until(
            lambda: next((p for p in pids if inode in _socket_inodes(p)), None), timeout=5
        )
        by_pid[owner].append(c)
        return all(by_pid.values()) and sum(map(len, by_pid.values())) >= n

    wait_until(both, timeout=20, interval=0)
    chosen = [by_pid[pids[0]][0], by_pid[pids[1]][0]]
    rest = [c for c in opened if c not in chosen]
    for c in rest[n - 2 :]:
        c.close()
    return chosen + rest[: n - 2]


def test_limit_is_instance_wide_across_workers(gw: Gateway) -> None:
    conns = _connections_on_both_workers(gw, 10)
    statuses = []
    remaining = []
    for c in conns:
        c.request("GET", "/lc")
        r = c.getresponse()
        r.read()
        statuses.append(r.status)
        remaining.append(r.getheader("X-RateLimit-Remaining"))
        c.close()
    assert statuses.count(200) == 3, statuses
    assert statuses.count(503) == 7, statuses
    assert statuses[:3] == [200, 200, 200]
    assert remaining == ["2", "1", "0"] + ["0"] * 7


def test_concurrent_requests_on_both_workers_get_exactly_the_limit(gw: Gateway) -> None:
    # Ten keep-alive connections spread over the two workers send at once: the counter is
    # one read-modify-write per request across processes, so exactly `count` get through.
    conns = _connections_on_both_workers(gw, 10)

    def send(c: http.client.HTTPConnection) -> list[int]:
        out = []
        for _ in range(6):
            c.request("GET", "/concurrent")
            r = c.getresponse()
            r.read()
            out.append(r.status)
        c.close()
        return out

    with ThreadPoolExecutor(len(conns)) as pool:
        statuses = [s for got in pool.map(send, conns) for s in got]
    assert len(statuses) == 60
    assert statuses.count(200) == 20, statuses
    assert statuses.count(503) == 40, statuses


def test_quota_headers_and_empty_rejection_body(gw: Gateway) -> None:
    # /lc's budget is spent by the test above when run in order; use the header route instead.
    r = requests.get(gw.url("/msg"), headers={"X-User": "h1"})
    assert r.status_code == 200
    assert r.headers["X-RateLimit-Limit"] == "1"
    assert r.headers["X-RateLimit-Remaining"] == "0"
    assert 59 <= int(r.headers["X-RateLimit-Reset"]) <= 60
    r = requests.get(gw.url("/msg"), headers={"X-User": "h1"})
    assert r.status_code == 429
    assert r.text == '{"error_msg":"slow down"}\n'
    assert r.headers["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(r.headers["X-RateLimit-Reset"]) <= 60
    # Another key value has its own budget.
    assert requests.get(gw.url("/msg"), headers={"X-User": "h2"}).status_code == 200


def test_default_rejection_is_503_with_the_default_page(gw: Gateway) -> None:
    assert requests.get(gw.url("/nohdr")).status_code == 200
    r = requests.get(gw.url("/nohdr"))
    assert r.status_code == 503
    assert b"<title>503 Service Temporarily Unavailable</title>" in r.content  # nginx's page
    assert "X-RateLimit-Limit" not in r.headers


def test_window_resets(gw: Gateway) -> None:
    wait_until(lambda: requests.get(gw.url("/short")).status_code == 200, timeout=5)
    assert requests.get(gw.url("/short")).status_code == 503
    # A 1 s window: a request succeeds again once it is over.
    wait_until(lambda: requests.get(gw.url("/short")).status_code == 200, timeout=5)


def test_group_shares_one_counter_between_routes(gw: Gateway) -> None:
    assert requests.get(gw.url("/group-a")).status_code == 200
    assert requests.get(gw.url("/group-b")).status_code == 200
    assert requests.get(gw.url("/group-a")).status_code == 503


def test_redis_policy_without_redis_answers_500(gw: Gateway) -> None:
    r = requests.get(gw.url("/redis"))
    assert r.status_code == 500
    assert r.json() == {"error_msg": "failed to limit count"}


def _get(gw: Gateway, path: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("GET", path)
    res = conn.getresponse()
    res.read()
    conn.close()
    return res


def test_quota_headers_replace_the_upstreams(gw: Gateway) -> None:
    # APISIX sets them in access (core.response.set_header): the upstream's value of the same
    # name is replaced, its other headers kept.
    res = _get(gw, "/with-headers?X-RateLimit-Limit=999&X-Other=kept")
    assert res.status == 200
    assert res.headers.get_all("X-RateLimit-Limit") == ["100"]
    assert res.headers.get_all("X-RateLimit-Remaining") == ["99"]
    assert res.headers["X-Other"] == "kept"


def test_quota_headers_seen_and_edited_by_a_later_header_filter(gw: Gateway) -> None:
    res = _get(gw, "/rewritten-quota")
    assert res.status == 200
    assert res.headers.get_all("X-RateLimit-Limit") == ["rewritten"]
    assert res.headers["X-RateLimit-Remaining"] == "99"


def test_quota_headers_on_a_local_answer(gw: Gateway) -> None:
    res = _get(gw, "/down")  # the gateway's own 502
    assert res.status == 502
    assert res.headers.get_all("X-RateLimit-Limit") == ["100"]
    assert res.headers["X-RateLimit-Remaining"] == "99"
