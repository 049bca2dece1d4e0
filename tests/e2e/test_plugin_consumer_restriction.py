"""consumer-restriction through the real process (behind key-auth)."""

from __future__ import annotations

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: wl
    uri: /wl
    plugins:
      key-auth: {}
      consumer-restriction: {whitelist: [jack]}
    upstream: {nodes: {"%(up)s": 1}}
  - id: methods
    uri: /methods
    plugins:
      key-auth: {}
      consumer-restriction:
        allowed_by_methods: [{user: rose, methods: [POST]}]
        rejected_code: 405
        rejected_msg: "method not allowed for you"
    upstream: {nodes: {"%(up)s": 1}}
  - id: noauth
    uri: /noauth
    plugins:
      consumer-restriction: {blacklist: [jack]}
    upstream: {nodes: {"%(up)s": 1}}
consumers:
  - username: jack
    plugins: {key-auth: {key: jack-key}}
  - username: rose
    plugins: {key-auth: {key: rose-key}}
#END
"""


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    return standalone_gateway(CONFIG % {"up": upstream.addr})


def test_whitelist(gw: Gateway) -> None:
    assert requests.get(gw.url("/wl"), headers={"apikey": "jack-key"}).status_code == 200
    r = requests.get(gw.url("/wl"), headers={"apikey": "rose-key"})
    assert r.status_code == 403
    assert r.text == '{"message":"The consumer_name is forbidden."}\n'


def test_allowed_by_methods(gw: Gateway) -> None:
    assert requests.post(gw.url("/methods"), headers={"apikey": "rose-key"}).status_code == 200
    r = requests.get(gw.url("/methods"), headers={"apikey": "rose-key"})
    assert r.status_code == 405 and r.json() == {"message": "method not allowed for you"}
    assert requests.get(gw.url("/methods"), headers={"apikey": "jack-key"}).status_code == 200


def test_no_consumer_is_401(gw: Gateway) -> None:
    r = requests.get(gw.url("/noauth"))
    assert r.status_code == 401
    assert r.json() == {
        "message": "The request is rejected, please check the consumer_name for this request"
    }
