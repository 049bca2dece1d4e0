"""basic-auth through the real process."""

from __future__ import annotations

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: ba
    uri: /ba
    plugins:
      basic-auth: {}
    upstream: {nodes: {"%(up)s": 1}}
  - id: hidden
    uri: /hidden
    plugins:
      basic-auth: {hide_credentials: true, realm: staff}
    upstream: {nodes: {"%(up)s": 1}}
consumers:
  - username: foo
    plugins:
      basic-auth: {username: foo, password: bar}
#END
"""


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    return standalone_gateway(CONFIG % {"up": upstream.addr})


def test_rejections(gw: Gateway) -> None:
    r = requests.get(gw.url("/ba"))
    assert r.status_code == 401
    assert r.text == '{"message":"Missing authorization in request"}\n'
    assert r.headers["WWW-Authenticate"] == 'Basic realm="basic"'
    r = requests.get(gw.url("/ba"), headers={"Authorization": "Basic not-base64!"})
    assert r.json() == {"message": "Invalid authorization in request"}
    r = requests.get(gw.url("/ba"), auth=("foo", "wrong"))
    assert r.status_code == 401 and r.json() == {"message": "Invalid user authorization"}
    r = requests.get(gw.url("/hidden"), auth=("nobody", "bar"))
    assert r.headers["WWW-Authenticate"] == 'Basic realm="staff"'


def test_pass_through_and_hidden_credentials(gw: Gateway) -> None:
    r = requests.get(gw.url("/ba"), auth=("foo", "bar"))
    assert r.status_code == 200 and r.json()["headers"]["authorization"].startswith("Basic ")
    r = requests.get(gw.url("/hidden"), auth=("foo", "bar"))
    assert r.status_code == 200 and "authorization" not in r.json()["headers"]
