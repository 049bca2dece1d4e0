"""cors through the real process: OPTIONS answered 200, headers on proxied responses."""

from __future__ import annotations

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: default
    uri: /default
    plugins:
      cors: {}
    upstream: {nodes: {"%(up)s": 1}}
  - id: list
    uri: /list
    plugins:
      cors:
        allow_origins: "http://a.example,http://b.example"
        allow_methods: "GET,POST"
        allow_headers: "X-A"
        expose_headers: "X-Exposed"
        max_age: 60
        allow_credential: true
    upstream: {nodes: {"%(up)s": 1}}
  - id: regex
    uri: /regex
    plugins:
      cors: {allow_origins_by_regex: ["^http://.*\\\\.test\\\\.com$"]}
    upstream: {nodes: {"%(up)s": 1}}
  - id: force
    uri: /force
    plugins:
      cors: {allow_origins: "**", allow_methods: "**", allow_headers: "**"}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    return standalone_gateway(CONFIG % {"up": upstream.addr})


def test_every_options_request_is_200_empty(gw: Gateway, upstream: Upstream) -> None:
    hits = upstream.hits
    r = requests.options(gw.url("/default"))
    assert r.status_code == 200 and r.content == b""
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    r = requests.options(gw.url("/list"), headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and r.content == b""
    assert "Access-Control-Allow-Origin" not in r.headers
    assert upstream.hits == hits  # never proxied


def test_default_headers_on_proxied_response(gw: Gateway) -> None:
    r = requests.get(gw.url("/default"), headers={"Origin": "http://x.example"})
    assert r.status_code == 200
    assert r.json()["path"] == "/default"
    h = r.headers
    assert h["Access-Control-Allow-Origin"] == "*"
    assert h["Access-Control-Allow-Methods"] == "*"
    assert h["Access-Control-Allow-Headers"] == "*"
    assert h["Access-Control-Max-Age"] == "5"
    assert "Access-Control-Expose-Headers" not in h
    assert "Access-Control-Allow-Credentials" not in h
    assert "Vary" not in h or "Origin" not in h["Vary"]


def test_origin_list_with_credentials(gw: Gateway) -> None:
    r = requests.get(gw.url("/list"), headers={"Origin": "http://b.example"})
    h = r.headers
    assert h["Access-Control-Allow-Origin"] == "http://b.example"
    assert h["Access-Control-Allow-Methods"] == "GET,POST"
    assert h["Access-Control-Allow-Headers"] == "X-A"
    assert h["Access-Control-Expose-Headers"] == "X-Exposed"
    assert h["Access-Control-Max-Age"] == "60"
    assert h["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in h["Vary"]
    r = requests.get(gw.url("/list"), headers={"Origin": "http://c.example"})
    assert r.status_code == 200
    assert "Access-Control-Allow-Origin" not in r.headers


def test_origins_by_regex(gw: Gateway) -> None:
    r = requests.get(gw.url("/regex"), headers={"Origin": "http://sub.test.com"})
    assert r.headers["Access-Control-Allow-Origin"] == "http://sub.test.com"
    r = requests.get(gw.url("/regex"), headers={"Origin": "http://sub.other.com"})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_forced_wildcards_echo_the_request(gw: Gateway) -> None:
    r = requests.options(
        gw.url("/force"),
        headers={"Origin": "http://o.example", "Access-Control-Request-Headers": "X-B, X-C"},
    )
    h = r.headers
    assert h["Access-Control-Allow-Origin"] == "http://o.example"
    assert (
        h["Access-Control-Allow-Methods"] == "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE"
    )
    assert h["Access-Control-Allow-Headers"] == "X-B, X-C"
