"""traffic-split through the real process: weighted canary, header match, inline upstream,
the route's own upstream, and a missing upstream_id."""

from __future__ import annotations

import collections

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway
from tests.support.upstream import Upstream

CONFIG = """
upstreams:
  - id: canary
    nodes: {"%(up2)s": 1}
  - id: stable
    nodes: {"%(up1)s": 1}
routes:
  - id: weighted
    uri: /weighted
    plugins:
      traffic-split:
        rules:
          - weighted_upstreams:
              - {upstream_id: canary, weight: 3}
              - {weight: 1}
    upstream: {nodes: {"%(up1)s": 1}}
  - id: by-header
    uri: /by-header
    plugins:
      traffic-split:
        rules:
          - match:
              - vars: [["http_release", "==", "blue"]]
              - vars: [["arg_env", "==", "canary"], ["arg_user", "~~", "^[a-z]+$"]]
            weighted_upstreams:
              - upstream: {type: roundrobin, nodes: {"%(up2)s": 1}}
    upstream: {nodes: {"%(up1)s": 1}}
  - id: route-upstream-id
    uri: /route-upstream-id
    plugins:
      traffic-split:
        rules:
          - weighted_upstreams:
              - {upstream: {nodes: [{host: "127.0.0.1", port: %(port2)s, weight: 1}]}, weight: 1}
              - {weight: 1}
    upstream_id: stable
  - id: gone
    uri: /gone
    plugins:
      traffic-split:
        rules:
          - weighted_upstreams: [{upstream_id: nope}]
    upstream: {nodes: {"%(up1)s": 1}}
  - id: no-route-upstream
    uri: /plugin-only
    plugins:
      traffic-split:
        rules:
          - match: [{vars: [["arg_go", "==", "1"]]}]
            weighted_upstreams: [{upstream_id: canary}]
#END
"""


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream, upstream2: Upstream) -> Gateway:
    text = CONFIG % {"up1": upstream.addr, "up2": upstream2.addr, "port2": upstream2.port}
    return standalone_gateway(text, workers=1)


def served_by(gw: Gateway, path: str, n: int, **kw: object) -> collections.Counter[str]:
    got: collections.Counter[str] = collections.Counter()
    with requests.Session() as s:
        for _ in range(n):
            r = s.get(gw.url(path), timeout=5, **kw)  # type: ignore[arg-type]
            assert r.status_code == 200, r.text
            got[r.headers["X-Upstream"]] += 1
    return got


def test_canary_by_weight_exact_per_cycle(gw: Gateway) -> None:
    # resty.roundrobin: every cycle of 4 requests is exactly 3 canary + 1 route upstream.
    assert served_by(gw, "/weighted", 4) == {"up2": 3, "up1": 1}
    assert served_by(gw, "/weighted", 40) == {"up2": 30, "up1": 10}


def test_match_by_header_or_args_to_inline_upstream(gw: Gateway) -> None:
    assert served_by(gw, "/by-header", 3, headers={"Release": "blue"}) == {"up2": 3}
    assert served_by(gw, "/by-header?env=canary&user=jack", 2) == {"up2": 2}
    # one AND-ed var fails, the other match entry too: the route's own upstream
    assert served_by(gw, "/by-header?env=canary&user=Jack1", 2) == {"up1": 2}
    assert served_by(gw, "/by-header", 2, headers={"Release": "green"}) == {"up1": 2}


def test_weight_only_entry_means_the_routes_upstream_id(gw: Gateway) -> None:
    assert served_by(gw, "/route-upstream-id", 10) == {"up1": 5, "up2": 5}


def test_missing_upstream_id_is_502(gw: Gateway) -> None:
    r = requests.get(gw.url("/gone"), timeout=5)
    assert r.status_code == 502
    assert "502 Bad Gateway" in r.text


def test_route_without_upstream(gw: Gateway) -> None:
    assert served_by(gw, "/plugin-only?go=1", 2) == {"up2": 2}
    # no rule matched and the route has no upstream of its own: APISIX's 503
    assert requests.get(gw.url("/plugin-only"), timeout=5).status_code == 503
