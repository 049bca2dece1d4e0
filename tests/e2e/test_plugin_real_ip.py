"""real-ip through the real process (seen by a later ip-restriction)."""

from __future__ import annotations

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: rip
    uri: /rip
    plugins:
      real-ip: {source: http_x_real_ip}
      ip-restriction: {whitelist: ["10.1.1.1"]}
    upstream: {nodes: {"%(up)s": 1}}
  - id: xff
    uri: /xff
    plugins:
      real-ip: {source: http_x_forwarded_for, trusted_addresses: ["127.0.0.1"], recursive: true}
      ip-restriction: {blacklist: ["9.9.9.9"]}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    return standalone_gateway(CONFIG % {"up": upstream.addr})


def test_source_header_becomes_the_client_address(gw: Gateway) -> None:
    assert requests.get(gw.url("/rip"), headers={"X-Real-IP": "10.1.1.1"}).status_code == 200
    assert requests.get(gw.url("/rip"), headers={"X-Real-IP": "10.1.1.2"}).status_code == 403
    assert requests.get(gw.url("/rip")).status_code == 403  # no header: the peer, 127.0.0.1


def test_recursive_forwarded_for(gw: Gateway) -> None:
    r = requests.get(gw.url("/xff"), headers={"X-Forwarded-For": "9.9.9.9, 127.0.0.1"})
    assert r.status_code == 403
    r = requests.get(gw.url("/xff"), headers={"X-Forwarded-For": "8.8.8.8, 127.0.0.1"})
    assert r.status_code == 200
