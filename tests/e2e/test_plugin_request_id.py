"""request-id through the real process."""

from __future__ import annotations

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: rid
    uri: /rid
    plugins:
      request-id: {}
    upstream: {nodes: {"%(up)s": 1}}
  - id: nanoid
    uri: /nanoid
    plugins:
      request-id: {algorithm: nanoid, header_name: X-Trace, include_in_response: false}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    return standalone_gateway(CONFIG % {"up": upstream.addr})


def test_generated_id_goes_upstream_and_back(gw: Gateway) -> None:
    r = requests.get(gw.url("/rid"))
    sent = r.json()["headers"]["x-request-id"]
    assert len(sent) == 36 and r.headers["X-Request-Id"] == sent
    r2 = requests.get(gw.url("/rid"))
    assert r2.headers["X-Request-Id"] != sent


def test_incoming_id_is_kept(gw: Gateway) -> None:
    r = requests.get(gw.url("/rid"), headers={"X-Request-Id": "given-1"})
    assert r.json()["headers"]["x-request-id"] == "given-1"
    assert r.headers["X-Request-Id"] == "given-1"


def test_custom_header_not_in_response(gw: Gateway) -> None:
    r = requests.get(gw.url("/nanoid"))
    assert len(r.json()["headers"]["x-trace"]) == 21
    assert "X-Trace" not in r.headers
