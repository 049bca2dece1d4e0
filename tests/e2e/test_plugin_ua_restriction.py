"""ua-restriction and referer-restriction through the real process."""

from __future__ import annotations

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: ua
    uri: /ua
    plugins:
      ua-restriction: {denylist: ["bot"], message: "no bots"}
    upstream: {nodes: {"%(up)s": 1}}
  - id: ref
    uri: /ref
    plugins:
      referer-restriction: {whitelist: ["*.good.com"]}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    return standalone_gateway(CONFIG % {"up": upstream.addr})


def test_user_agent_denied(gw: Gateway) -> None:
    r = requests.get(gw.url("/ua"), headers={"User-Agent": "some-bot/1.0"})
    assert r.status_code == 403 and r.text == '{"message":"no bots"}\n'
    assert requests.get(gw.url("/ua"), headers={"User-Agent": "curl/8"}).status_code == 200


def test_referer(gw: Gateway) -> None:
    assert (
        requests.get(gw.url("/ref"), headers={"Referer": "https://a.good.com/x"}).status_code == 200
    )
    r = requests.get(gw.url("/ref"), headers={"Referer": "https://evil.com/x"})
    assert r.status_code == 403
    assert r.json() == {"message": "Your referer host is not allowed"}
    assert requests.get(gw.url("/ref")).status_code == 403  # missing, not bypassed
