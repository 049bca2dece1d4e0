"""proxy-mirror through the real process: the mirror gets a copy, the client the main answer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway, free_port, wait_until
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: mirrored
    uris: [/m, /m/*]
    plugins:
      proxy-mirror: {host: "http://%(mirror)s"}
    upstream: {nodes: {"%(up)s": 1}}
  - id: replaced
    uri: /replace/*
    plugins:
      proxy-mirror: {host: "http://%(mirror)s", path: /mirror-path}
    upstream: {nodes: {"%(up)s": 1}}
  - id: prefixed
    uri: /prefix/*
    plugins:
      proxy-mirror: {host: "http://%(mirror)s", path: /pre, path_concat_mode: prefix}
    upstream: {nodes: {"%(up)s": 1}}
  - id: mirror-down
    uri: /down
    plugins:
      proxy-mirror: {host: "http://127.0.0.1:%(dead)s"}
    upstream: {nodes: {"%(up)s": 1}}
  - id: mirror-hangs
    uri: /quick
    plugins:
      proxy-mirror: {host: "http://%(mirror)s", path: /hang}
    upstream: {nodes: {"%(up)s": 1}}
  - id: rejected
    uri: /rejected
    plugins:
      proxy-mirror: {host: "http://%(mirror)s"}
      key-auth: {}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def mirror() -> Iterator[Upstream]:
    up = Upstream("mirror").start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream, mirror: Upstream) -> Gateway:
    text = CONFIG % {"up": upstream.addr, "mirror": mirror.addr, "dead": free_port()}
    return standalone_gateway(text)


def mirrored(mirror: Upstream, path: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next((r for r in mirror.requests if r["path"] == path), None)

    found: dict[str, Any] = wait_until(find, timeout=5)
    return found


def test_mirror_gets_method_path_headers_and_body(gw: Gateway, mirror: Upstream) -> None:
    r = requests.post(
        gw.url("/m/post?a=1"), data=b"hello mirror", headers={"X-Trace": "t1"}, timeout=5
    )
    assert r.status_code == 200 and r.headers["X-Upstream"] == "up1"
    assert r.json()["body"] == "hello mirror"  # the main upstream still gets the body
    copy = mirrored(mirror, "/m/post?a=1")
    assert copy["method"] == "POST"
    assert copy["body"] == "hello mirror"
    assert copy["headers"]["x-trace"] == "t1"
    assert copy["headers"]["host"] == f"127.0.0.1:{gw.port}"


def test_get_and_chunked_bodies(gw: Gateway, mirror: Upstream) -> None:
    assert requests.get(gw.url("/m?q=2"), timeout=5).status_code == 200
    assert mirrored(mirror, "/m?q=2")["method"] == "GET"
    chunks = iter([b"part1-", b"part2"])
    r = requests.put(gw.url("/m/chunked"), data=chunks, timeout=5)
    assert r.status_code == 200 and r.json()["body"] == "part1-part2"
    copy = mirrored(mirror, "/m/chunked")
    assert (copy["method"], copy["body"]) == ("PUT", "part1-part2")


def test_path_replace_and_prefix(gw: Gateway, mirror: Upstream) -> None:
    assert requests.get(gw.url("/replace/x?k=v"), timeout=5).status_code == 200
    mirrored(mirror, "/mirror-path?k=v")
    assert requests.get(gw.url("/prefix/y"), timeout=5).status_code == 200
    mirrored(mirror, "/pre/prefix/y")


def test_mirror_down_never_fails_the_request(gw: Gateway) -> None:
    for _ in range(5):
        r = requests.post(gw.url("/down"), data=b"x", timeout=5)
        assert r.status_code == 200 and r.headers["X-Upstream"] == "up1"


def test_hanging_mirror_never_delays_the_request(gw: Gateway, mirror: Upstream) -> None:
    t0 = time.monotonic()
    r = requests.get(gw.url("/quick"), timeout=5)
    assert r.status_code == 200 and r.headers["X-Upstream"] == "up1"
    assert time.monotonic() - t0 < 2
    mirrored(mirror, "/hang")  # the copy arrived and is still waiting for its answer


def test_request_rejected_before_proxy_is_not_mirrored(gw: Gateway, mirror: Upstream) -> None:
    assert requests.get(gw.url("/rejected?n=1"), timeout=5).status_code == 401
    assert requests.get(gw.url("/m?after-rejected"), timeout=5).status_code == 200
    mirrored(mirror, "/m?after-rejected")  # later copies arrive; the rejected one never did
    assert all(not r["path"].startswith("/rejected") for r in mirror.requests)
