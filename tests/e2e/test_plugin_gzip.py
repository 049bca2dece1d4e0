"""gzip and api-breaker through the real process."""

from __future__ import annotations

import gzip

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: gz
    uri: /big/*
    plugins:
      gzip: {types: ["application/octet-stream", "application/json"], vary: true}
    upstream: {nodes: {"%(up)s": 1}}
  - id: breaker
    uri: /status/*
    plugins:
      api-breaker:
        break_response_code: 502
        break_response_body: "circuit open"
        unhealthy: {http_statuses: [500], failures: 2}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    return standalone_gateway(CONFIG % {"up": upstream.addr})


def test_gzip_compresses_when_accepted(gw: Gateway) -> None:
    r = requests.get(gw.url("/big/100000"), headers={"Accept-Encoding": "gzip"}, stream=True)
    raw = r.raw.read(decode_content=False)
    assert r.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in r.headers["Vary"]
    assert len(raw) < 100000
    assert len(gzip.decompress(raw)) == 100000
    r = requests.get(gw.url("/big/100000"), headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in r.headers and len(r.content) == 100000


def test_api_breaker_opens_after_failures(gw: Gateway, upstream: Upstream) -> None:
    assert requests.get(gw.url("/status/500")).status_code == 500
    assert requests.get(gw.url("/status/500")).status_code == 500
    hits = upstream.hits
    r = requests.get(gw.url("/status/500"))
    assert r.status_code == 502 and r.text == "circuit open"
    assert upstream.hits == hits
