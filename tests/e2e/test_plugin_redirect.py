"""redirect through the real process."""

from __future__ import annotations

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: r1
    uri: /old/*
    plugins:
      redirect: {regex_uri: ["^/old/(.*)", "/new/$1"], ret_code: 301}
    upstream: {nodes: {"%(up)s": 1}}
  - id: r2
    uri: /tpl
    plugins:
      redirect: {uri: "/to/$arg_x", append_query_string: true}
    upstream: {nodes: {"%(up)s": 1}}
  - id: r3
    uri: /secure
    plugins:
      redirect: {http_to_https: true}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    return standalone_gateway(CONFIG % {"up": upstream.addr})


def test_regex_redirect(gw: Gateway) -> None:
    r = requests.get(gw.url("/old/a/b"), allow_redirects=False)
    assert r.status_code == 301 and r.headers["Location"] == "/new/a/b"


def test_template_with_query(gw: Gateway) -> None:
    r = requests.get(gw.url("/tpl?x=1&y=2"), allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == "/to/1?x=1&y=2"


def test_http_to_https(gw: Gateway) -> None:
    r = requests.get(gw.url("/secure?a=1"), allow_redirects=False, headers={"Host": "h.example"})
    assert r.status_code == 301
    # the port of the HTTPS listener (APISIX: one of apisix.ssl.listen)
    assert r.headers["Location"] == f"https://h.example:{gw.tls_port}/secure?a=1"
    r = requests.post(gw.url("/secure"), allow_redirects=False)
    assert r.status_code == 308
