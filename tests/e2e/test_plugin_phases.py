"""The request phases as a route's compiled chain runs them (issue #13): a global rule's rewrite
before the route's and before the 404, the consumer's own plugins merged once it is known (and
their rewrite run then), the consumer's headers upstream, a body request on the task path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.gateway import Gateway
from tests.support.upstream import Upstream


def config(up: Upstream) -> str:
    return f"""
upstreams:
  - id: u1
    nodes: {{"{up.addr}": 1}}
consumers:
  - username: jack
    plugins:
      key-auth: {{key: jack-key}}
      proxy-rewrite: {{headers: {{set: {{X-From-Consumer: jack}}}}}}
  - username: anna
    labels: {{custom_id: a-1}}
    plugins:
      key-auth: {{key: anna-key}}
global_rules:
  - id: g
    plugins:
      key-auth: {{}}
routes:
  - id: r
    uri: /echo/*
    upstream_id: u1
    plugins:
      limit-count: {{count: 1000, time_window: 60}}
#END
"""


@pytest.fixture
def gw(tmp_path: Path, upstream: Upstream) -> Iterator[Gateway]:
    with Gateway(tmp_path, apisix_yaml=config(upstream)) as g:
        yield g


def get(gw: Gateway, path: str, key: str | None = None, **headers: str) -> requests.Response:
    if key is not None:
        headers["apikey"] = key
    return requests.get(gw.url(path), headers=headers, timeout=5)


def seen(r: requests.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    headers: dict[str, Any] = r.json()["headers"]
    return headers


def test_a_global_rules_rewrite_runs_before_the_route_and_the_404(gw: Gateway) -> None:
    assert get(gw, "/nowhere").status_code == 401  # before the 404, as APISIX
    assert get(gw, "/nowhere", "bad").status_code == 401
    assert get(gw, "/nowhere", "anna-key").status_code == 404
    r = get(gw, "/echo/x")
    assert r.status_code == 401 and "X-RateLimit-Remaining" not in r.headers  # access never ran


def test_a_consumer_without_plugins_keeps_the_routes_chain(gw: Gateway) -> None:
    r = get(gw, "/echo/a", "anna-key", **{"X-Credential-Identifier": "forged"})
    h = seen(r)
    assert h["x-consumer-username"] == "anna" and h["x-consumer-custom-id"] == "a-1"
    assert "x-credential-identifier" not in h and "x-from-consumer" not in h
    assert "apikey" in h  # not hidden by default
    assert r.headers["X-RateLimit-Limit"] == "1000"  # the route's access and header_filter


def test_a_consumers_plugins_join_the_chain_and_their_rewrite_runs(gw: Gateway) -> None:
    for _ in range(2):  # the merged chain is built once, then reused
        r = get(gw, "/echo/j", "jack-key")
        h = seen(r)
        assert h["x-consumer-username"] == "jack" and h["x-from-consumer"] == "jack"
        assert "x-consumer-custom-id" not in h
        assert r.headers["X-RateLimit-Limit"] == "1000"


def test_a_body_request_runs_the_same_phases_in_a_task(gw: Gateway) -> None:
    r = requests.post(gw.url("/echo/b"), data=b"hello", headers={"apikey": "jack-key"}, timeout=5)
    assert r.status_code == 200
    info = r.json()
    assert info["body"] == "hello" and info["headers"]["x-from-consumer"] == "jack"
    r = requests.post(gw.url("/nowhere"), data=b"x", headers={"apikey": "jack-key"}, timeout=5)
    assert r.status_code == 404
    assert requests.post(gw.url("/echo/b"), data=b"x", timeout=5).status_code == 401
