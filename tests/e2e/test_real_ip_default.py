"""nginx realip as APISIX sets it up by default: a client on 127.0.0.1 names the client address
in X-Real-IP (reference §2.1), for routing, plugins and the headers sent upstream."""

from __future__ import annotations

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: only-ten
    uri: /ten
    remote_addrs: ["10.0.0.0/8"]
    upstream: {nodes: {"%(up)s": 1}}
  - id: fwd
    uri: /fwd
    upstream: {nodes: {"%(up)s": 1}}
  - id: fwd-rewrite
    uri: /fwd-rewrite
    plugins:
      proxy-rewrite: {headers: {set: {X-Forwarded-Proto: https-rewrite, X-Forwarded-Port: "10080"}}}
    upstream: {nodes: {"%(up)s": 1}}
  - id: deny
    uri: /deny
    plugins:
      ip-restriction: {blacklist: ["10.0.0.7"]}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    return standalone_gateway(CONFIG % {"up": upstream.addr})


@pytest.fixture(scope="module")
def untrusting(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    conf = {"nginx_config": {"http": {"real_ip_from": ["192.0.2.0/24"]}}}
    return standalone_gateway(CONFIG % {"up": upstream.addr}, config=conf)


def test_a_loopback_client_names_the_client_address(gw: Gateway) -> None:
    assert requests.get(gw.url("/ten")).status_code == 404  # 127.0.0.1 is not in 10/8
    r = requests.get(gw.url("/ten"), headers={"X-Real-IP": "10.0.0.7"})
    assert r.status_code == 200
    h = r.json()["headers"]
    assert h["x-real-ip"] == "10.0.0.7"
    assert h["x-forwarded-for"] == "10.0.0.7"
    assert requests.get(gw.url("/deny"), headers={"X-Real-IP": "10.0.0.7"}).status_code == 403
    assert requests.get(gw.url("/deny"), headers={"X-Real-IP": "10.0.0.8"}).status_code == 200


def test_a_header_that_names_no_address_is_ignored(gw: Gateway) -> None:
    r = requests.get(gw.url("/deny"), headers={"X-Real-IP": "not-an-ip"})
    assert r.status_code == 200 and r.json()["headers"]["x-real-ip"] == "127.0.0.1"


FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "front.example"}


def test_forwarded_headers_of_a_trusted_proxy_are_passed_on(gw: Gateway) -> None:
    # APISIX proxy-rewrite2.t TEST 3: the X-Forwarded-Proto a proxy in front sent goes on
    h = requests.get(gw.url("/fwd"), headers=FORWARDED).json()["headers"]
    assert (h["x-forwarded-proto"], h["x-forwarded-host"]) == ("https", "front.example")
    assert h["x-forwarded-port"] == str(gw.port)  # not sent: this hop's
    h = requests.get(gw.url("/fwd")).json()["headers"]
    assert (h["x-forwarded-proto"], h["x-forwarded-host"]) == ("http", "127.0.0.1")


def test_a_plugin_sets_forwarded_headers(gw: Gateway) -> None:
    # proxy-rewrite2.t TEST 5/7: the plugin's value wins over the client's and the gateway's
    h = requests.get(gw.url("/fwd-rewrite"), headers={"X-Forwarded-Proto": "grpc"}).json()
    assert h["headers"]["x-forwarded-proto"] == "https-rewrite"
    assert h["headers"]["x-forwarded-port"] == "10080"


def test_an_untrusted_peer_cannot_name_the_client(untrusting: Gateway) -> None:
    assert (
        requests.get(untrusting.url("/ten"), headers={"X-Real-IP": "10.0.0.7"}).status_code == 404
    )
    r = requests.get(untrusting.url("/deny"), headers={"X-Real-IP": "10.0.0.7"})
    assert r.status_code == 200 and r.json()["headers"]["x-real-ip"] == "127.0.0.1"
    # nor tell the upstream how the client came in
    h = requests.get(untrusting.url("/fwd"), headers=FORWARDED).json()["headers"]
    assert (h["x-forwarded-proto"], h["x-forwarded-host"]) == ("http", "127.0.0.1")
