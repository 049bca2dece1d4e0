"""uri-blocker through the real process."""

from __future__ import annotations

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: ub
    uri: /ub/*
    plugins:
      uri-blocker: {block_rules: ["root.exe", "root.m+"]}
    upstream: {nodes: {"%(up)s": 1}}
  - id: ubmsg
    uri: /ubmsg/*
    plugins:
      uri-blocker: {block_rules: ["^/ubmsg/ADMIN"], case_insensitive: true, rejected_msg: blocked, rejected_code: 410}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    return standalone_gateway(CONFIG % {"up": upstream.addr})


def test_blocked_without_message_gets_the_default_page(gw: Gateway) -> None:
    # APISIX exits with 403 and no body: nginx answers with its own 403 page
    r = requests.get(gw.url("/ub/root.exe"))
    assert r.status_code == 403 and r.headers["Content-Type"] == "text/html"
    assert b"<title>403 Forbidden</title>" in r.content
    assert requests.get(gw.url("/ub/x?f=rootmmm")).status_code == 403
    assert requests.get(gw.url("/ub/fine")).status_code == 200


def test_blocked_with_message(gw: Gateway) -> None:
    r = requests.get(gw.url("/ubmsg/admin/x"))
    assert r.status_code == 410 and r.text == '{"error_msg":"blocked"}\n'
