"""ip-restriction through the real process (the client is 127.0.0.1)."""

from __future__ import annotations

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: allow
    uri: /allow
    plugins:
      ip-restriction: {whitelist: ["127.0.0.0/24", "::1"]}
    upstream: {nodes: {"%(up)s": 1}}
  - id: deny
    uri: /deny
    plugins:
      ip-restriction: {blacklist: ["127.0.0.1"], message: "go away", response_code: 404}
    upstream: {nodes: {"%(up)s": 1}}
  - id: notlisted
    uri: /notlisted
    plugins:
      ip-restriction: {whitelist: ["10.0.0.0/8"]}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    return standalone_gateway(CONFIG % {"up": upstream.addr})


def test_whitelisted_client_passes(gw: Gateway) -> None:
    assert requests.get(gw.url("/allow")).status_code == 200


def test_rejections(gw: Gateway) -> None:
    r = requests.get(gw.url("/notlisted"))
    assert r.status_code == 403
    assert r.text == '{"message":"Your IP address is not allowed"}\n'
    r = requests.get(gw.url("/deny"))
    assert r.status_code == 404 and r.json() == {"message": "go away"}
