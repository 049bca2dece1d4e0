"""fault-injection through the real process."""

from __future__ import annotations

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: abort
    uri: /abort
    plugins:
      fault-injection:
        abort: {http_status: 418, body: "teapot $arg_who\\n", headers: {X-Fault: "yes"}}
    upstream: {nodes: {"%(up)s": 1}}
  - id: vars
    uri: /vars
    plugins:
      fault-injection:
        abort: {http_status: 403, vars: [[["arg_name", "==", "jack"]]]}
    upstream: {nodes: {"%(up)s": 1}}
  - id: delay
    uri: /delay
    plugins:
      fault-injection: {delay: {duration: 0.3}}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    return standalone_gateway(CONFIG % {"up": upstream.addr})


def test_abort(gw: Gateway, upstream: Upstream) -> None:
    hits = upstream.hits
    r = requests.get(gw.url("/abort?who=me"))
    assert r.status_code == 418 and r.text == "teapot me\n"
    assert r.headers["X-Fault"] == "yes"
    assert upstream.hits == hits


def test_abort_only_when_vars_match(gw: Gateway) -> None:
    assert requests.get(gw.url("/vars?name=jack")).status_code == 403
    assert requests.get(gw.url("/vars?name=rose")).status_code == 200


def test_delay(gw: Gateway) -> None:
    import time

    t0 = time.monotonic()
    assert requests.get(gw.url("/delay")).status_code == 200
    assert time.monotonic() - t0 >= 0.3
