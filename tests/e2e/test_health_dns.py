"""Domain nodes through the real process (tollway.upstream.dns): localhost without a lookup,
Host for pass_host: node, a name that does not resolve leaves the others serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.gateway import Gateway, free_port, wait_until
from tests.support.upstream import Upstream

# RFC 6761: .invalid never resolves.
BAD = "no-such-node.invalid"


@pytest.fixture
def gw(tmp_path: Path, upstream: Upstream) -> Iterator[Gateway]:
    control = free_port()
    text = f"""
routes:
  - id: local
    uri: /local
    upstream: {{nodes: {{"localhost:{upstream.port}": 1}}, pass_host: node}}
  - id: checked
    uri: /checked
    upstream:
      nodes: {{"localhost:{upstream.port}": 1}}
      checks: {{active: {{type: tcp, healthy: {{interval: 1}}}}}}
  - id: mixed
    uri: /mixed
    upstream: {{nodes: {{"{BAD}:80": 1, "{upstream.addr}": 1}}}}
  - id: bad
    uri: /bad
    upstream: {{nodes: {{"{BAD}:80": 1}}}}
#END
"""
    config = {"apisix": {"control": {"ip": "127.0.0.1", "port": control}}}
    with Gateway(tmp_path, apisix_yaml=text, config=config) as g:
        g.control_port = control  # type: ignore[attr-defined]
        yield g


def test_localhost_node_and_pass_host_node(gw: Gateway, upstream: Upstream) -> None:
    r = requests.get(gw.url("/local"), timeout=5)
    assert r.status_code == 200
    # The node's name is the Host, not the IP it resolved to (APISIX pass_host: node).
    assert r.json()["headers"]["host"] == f"localhost:{upstream.port}"


def test_checker_shows_the_ip_of_a_localhost_node(gw: Gateway, upstream: Upstream) -> None:
    port = gw.control_port  # type: ignore[attr-defined]
    info = requests.get(f"http://127.0.0.1:{port}/v1/healthcheck/routes/checked", timeout=2).json()
    [node] = info["nodes"]
    # APISIX's target: the node's IP (the domain is resolved), or checks.active.host
    assert (node["ip"], node["port"], node["hostname"]) == ("127.0.0.1", upstream.port, "127.0.0.1")


def test_unresolvable_node_leaves_the_others_serving(gw: Gateway) -> None:
    # Before the answer arrives a retry covers the bad node; after it, the node is left out.
    codes = [requests.get(gw.url("/mixed"), timeout=10).status_code for _ in range(10)]
    assert codes == [200] * 10
    wait_until(lambda: requests.get(gw.url("/bad"), timeout=10).status_code == 503, timeout=15)
    codes = [requests.get(gw.url("/mixed"), timeout=10).status_code for _ in range(10)]
    assert codes == [200] * 10
