"""key-auth through the real process: rejections, pass-through, hidden credentials, anonymous."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway, wait_until
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: ka
    uri: /ka
    plugins:
      key-auth: {}
    upstream: {nodes: {"%(up)s": 1}}
  - id: hidden
    uri: /hidden
    plugins:
      key-auth: {hide_credentials: true}
    upstream: {nodes: {"%(up)s": 1}}
  - id: custom
    uri: /custom
    plugins:
      key-auth: {header: X-Key, query: k, realm: mine}
    upstream: {nodes: {"%(up)s": 1}}
  - id: anon
    uri: /anon
    plugins:
      key-auth: {anonymous_consumer: guest}
    upstream: {nodes: {"%(up)s": 1}}
  - id: anon-hidden
    uri: /anon-hidden
    plugins:
      key-auth: {anonymous_consumer: guest, hide_credentials: true, query: auth}
    upstream: {nodes: {"%(up)s": 1}}
  - id: anon-missing
    uri: /anon-missing
    plugins:
      key-auth: {anonymous_consumer: nobody}
    upstream: {nodes: {"%(up)s": 1}}
consumers:
  - username: jack
    labels: {custom_id: "jack-001"}
    plugins:
      key-auth: {key: k1}
      proxy-rewrite: {headers: {set: {X-Consumer-Plugin: "jack"}}}
  - username: orphan
    group_id: no-such-group
    plugins:
      key-auth: {key: k3}
  - username: jill
    credentials:
      - id: cred-1
        plugins:
          key-auth: {key: k2}
  - username: guest
    plugins:
      key-auth: {key: guest-key-never-sent}
#END
"""


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    return standalone_gateway(CONFIG % {"up": upstream.addr})


def test_missing_key_is_401_with_challenge(gw: Gateway) -> None:
    r = requests.get(gw.url("/ka"))
    assert r.status_code == 401
    assert r.text == '{"message":"Missing API key in request"}\n'
    assert r.headers["WWW-Authenticate"] == 'apikey realm="key"'
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"  # as APISIX's docs show


def test_invalid_key_is_401(gw: Gateway) -> None:
    r = requests.get(gw.url("/ka"), headers={"apikey": "nope"})
    assert r.status_code == 401
    assert r.json() == {"message": "Invalid API key in request"}
    assert r.headers["WWW-Authenticate"] == 'apikey realm="key"'


def test_valid_key_in_header_or_query_passes_and_consumer_plugins_apply(gw: Gateway) -> None:
    r = requests.get(gw.url("/ka"), headers={"apikey": "k1"})
    assert r.status_code == 200
    h = r.json()["headers"]
    assert h["apikey"] == "k1"  # not hidden by default
    assert h["x-consumer-plugin"] == "jack"
    r = requests.get(gw.url("/ka?apikey=k1&x=1"))
    assert r.status_code == 200
    assert r.json()["path"] == "/ka?apikey=k1&x=1"


def test_the_upstream_learns_the_consumer_and_the_client_cannot_forge_it(gw: Gateway) -> None:
    # APISIX consumer.attach_consumer: X-Consumer-Username, X-Credential-Identifier and
    # X-Consumer-Custom-Id are set, or removed when there is no value.
    forged = {"X-Consumer-Username": "admin", "X-Credential-Identifier": "x"}
    r = requests.get(gw.url("/ka"), headers={"apikey": "k1", **forged})
    h = r.json()["headers"]
    assert h["x-consumer-username"] == "jack"
    assert h["x-consumer-custom-id"] == "jack-001"
    assert "x-credential-identifier" not in h  # the key is on the consumer itself
    r = requests.get(gw.url("/ka"), headers={"apikey": "k2", "X-Consumer-Custom-Id": "forged"})
    h = r.json()["headers"]
    assert h["x-consumer-username"] == "jill"
    assert h["x-credential-identifier"] == "cred-1"
    assert "x-consumer-custom-id" not in h


def test_a_consumer_of_a_missing_group_gets_503(gw: Gateway) -> None:
    # APISIX: "failed to fetch consumer group config by id" ends the request with 503.
    assert requests.get(gw.url("/ka"), headers={"apikey": "k3"}).status_code == 503


def test_header_is_read_before_query(gw: Gateway) -> None:
    r = requests.get(gw.url("/ka?apikey=k1"), headers={"apikey": "bad"})
    assert r.status_code == 401
    assert r.json() == {"message": "Invalid API key in request"}


def test_hide_credentials_removes_header_and_query_arg(gw: Gateway) -> None:
    r = requests.get(gw.url("/hidden"), headers={"apikey": "k1"})
    assert r.status_code == 200 and "apikey" not in r.json()["headers"]
    r = requests.get(gw.url("/hidden?a=1&apikey=k1&b=2"))
    assert r.status_code == 200
    assert r.json()["path"] == "/hidden?a=1&b=2"


def test_custom_header_query_and_realm(gw: Gateway) -> None:
    assert requests.get(gw.url("/custom"), headers={"X-Key": "k1"}).status_code == 200
    assert requests.get(gw.url("/custom?k=k1")).status_code == 200
    r = requests.get(gw.url("/custom"), headers={"apikey": "k1"})
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'apikey realm="mine"'


def test_anonymous_consumer(gw: Gateway) -> None:
    r = requests.get(gw.url("/anon"))
    assert r.status_code == 200
    assert "x-consumer-plugin" not in r.json()["headers"]
    r = requests.get(gw.url("/anon"), headers={"apikey": "k1"})
    assert r.json()["headers"]["x-consumer-plugin"] == "jack"
    # key-auth-anonymous-consumer.t TEST 9-11: an invalid key is not passed on either
    r = requests.get(gw.url("/anon-hidden?auth=bad&x=1"), headers={"apikey": "bad"})
    seen = r.json()
    assert seen["headers"]["x-consumer-username"] == "guest"
    assert "apikey" not in seen["headers"] and "bad" not in seen["path"]
    r = requests.get(gw.url("/anon-missing"))
    assert r.status_code == 401
    assert r.json() == {"message": "Invalid user authorization"}
    assert "WWW-Authenticate" not in r.headers


PC_CONFIG = """
plugin_configs:
  - id: pc
    plugins:
      ip-restriction: {whitelist: [%(allowed)s]}
routes:
  - id: r
    uri: /pc
    plugin_config_id: pc
    plugins:
      key-auth: {}
    upstream: {nodes: {"%(up)s": 1}}
consumers:
  - username: jack
    plugins:
      key-auth: {key: k1}
#END
"""


def test_a_plugin_config_change_reaches_requests_with_a_consumer(
    tmp_path: Path, upstream: Upstream
) -> None:
    # APISIX consumer-plugin2.t TEST 9: the chain merged for a consumer follows the config
    text = PC_CONFIG % {"up": upstream.addr, "allowed": '"1.1.1.1"'}
    with Gateway(tmp_path, apisix_yaml=text) as g:
        assert requests.get(g.url("/pc"), headers={"apikey": "k1"}).status_code == 403
        g.write_yaml(PC_CONFIG % {"up": upstream.addr, "allowed": '"1.1.1.1", "127.0.0.1"'})
        wait_until(lambda: requests.get(g.url("/pc"), headers={"apikey": "k1"}).status_code == 200)
