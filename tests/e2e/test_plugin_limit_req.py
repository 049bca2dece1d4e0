"""limit-req and limit-conn through the real process (two workers share the state)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway, wait_until
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: nodelay
    uri: /nodelay
    plugins:
      limit-req: {rate: 1, burst: 0, key: remote_addr, nodelay: true, rejected_code: 429}
    upstream: {nodes: {"%(up)s": 1}}
  - id: delayed
    uri: /delayed
    plugins:
      limit-req: {rate: 5, burst: 10, key: remote_addr}
    upstream: {nodes: {"%(up)s": 1}}
  - id: conn
    uri: /slow/*
    plugins:
      limit-conn: {conn: 1, burst: 0, default_conn_delay: 0.1, key: remote_addr, rejected_msg: busy}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    g = standalone_gateway(CONFIG % {"up": upstream.addr}, workers=2)
    wait_until(lambda: len(g.worker_pids()) == 2)
    return g


def test_limit_req_rejects_over_rate(gw: Gateway) -> None:
    statuses = [requests.get(gw.url("/nodelay")).status_code for _ in range(4)]
    assert statuses[0] == 200 and 429 in statuses
    r = requests.get(gw.url("/nodelay"))
    if r.status_code == 429:
        assert b"<title>429 Too Many Requests</title>" in r.content  # nginx's page


def test_limit_req_delays_within_burst(gw: Gateway) -> None:
    t0 = time.monotonic()
    statuses = [requests.get(gw.url("/delayed")).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    # The 2nd and 3rd requests each waited about 1/rate (0.2 s) minus the time that passed.
    assert time.monotonic() - t0 >= 0.3


def test_limit_conn_rejects_concurrent_requests(gw: Gateway) -> None:
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: requests.get(gw.url("/slow/500")), range(4)))
    statuses = sorted(r.status_code for r in results)
    assert statuses.count(200) == 1 and statuses.count(503) == 3, statuses
    rejected = next(r for r in results if r.status_code == 503)
    assert rejected.json() == {"error_msg": "busy"}
    # Every connection was counted out again: a lone request passes.
    wait_until(lambda: requests.get(gw.url("/slow/1")).status_code == 200, timeout=5)
