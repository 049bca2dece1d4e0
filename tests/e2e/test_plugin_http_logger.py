"""http-logger through the real process: entries reach a collector in APISIX's batches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway, free_port, wait_until
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: single
    uri: /single
    plugins:
      http-logger:
        uri: "http://%(col)s/single-log?src=gw"
        batch_max_size: 1
        auth_header: "Bearer t0k"
        include_req_body: true
    upstream: {nodes: {"%(up)s": 1}}
  - id: batched
    uri: /batched
    plugins:
      http-logger: {uri: "http://%(col)s/batched-log", batch_max_size: 3, inactive_timeout: 1}
    upstream: {nodes: {"%(up)s": 1}}
  - id: lines
    uri: /lines
    plugins:
      http-logger:
        uri: "http://%(col)s/lines-log"
        batch_max_size: 2
        concat_method: new_line
        log_format: {host: "$host", path: "$uri", fixed: "x"}
    upstream: {nodes: {"%(up)s": 1}}
  - id: collector-down
    uri: /down
    plugins:
      http-logger: {uri: "http://127.0.0.1:%(dead)s/log", batch_max_size: 1}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""
SHUTDOWN_CONFIG = """
routes:
  - id: slow-batches
    uri: /slow-batches
    plugins:
      http-logger: {uri: "http://%(col)s/shutdown-log", inactive_timeout: 600}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def collector() -> Iterator[Upstream]:
    up = Upstream("collector").start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream, collector: Upstream) -> Gateway:
    text = CONFIG % {"up": upstream.addr, "col": collector.addr, "dead": free_port()}
    return standalone_gateway(text)


def posts_to(collector: Upstream, path: str, n: int = 1) -> list[dict[str, Any]]:
    def got() -> list[dict[str, Any]] | None:
        found = [r for r in collector.requests if r["path"] == path]
        return found if len(found) >= n else None

    found: list[dict[str, Any]] = wait_until(got, timeout=10)
    return found


def test_single_entries_in_apisix_shape(gw: Gateway, collector: Upstream) -> None:
    r = requests.post(gw.url("/single?q=1"), data=b"hello", headers={"X-A": "1"}, timeout=5)
    assert r.status_code == 200
    post = posts_to(collector, "/single-log?src=gw")[0]
    assert post["method"] == "POST"
    assert post["headers"]["content-type"] == "application/json"
    assert post["headers"]["authorization"] == "Bearer t0k"
    entry = json.loads(post["body"])  # batch_max_size 1: a single object
    assert entry["route_id"] == "single"
    assert entry["request"]["uri"] == "/single?q=1"
    assert entry["request"]["method"] == "POST"
    assert entry["request"]["querystring"] == {"q": "1"}
    assert entry["request"]["headers"]["x-a"] == "1"
    assert entry["request"]["body"] == "hello"
    assert entry["response"]["status"] == 200
    assert entry["response"]["headers"]["x-upstream"] == "up1"
    assert entry["upstream"].startswith("127.0.0.1:")
    assert entry["client_ip"] == "127.0.0.1"
    assert entry["latency"] >= entry["upstream_latency"] >= 0


def test_batches_by_size_then_by_inactivity(gw: Gateway, collector: Upstream) -> None:
    for i in range(5):
        assert requests.get(gw.url(f"/batched?i={i}"), timeout=5).status_code == 200
    posts = posts_to(collector, "/batched-log", 2)
    batches = [json.loads(p["body"]) for p in posts]
    assert [len(b) for b in batches] == [3, 2]  # a full batch, then the rest after 1 s idle
    assert [e["request"]["querystring"]["i"] for b in batches for e in b] == list("01234")


def test_new_line_batches_with_log_format(gw: Gateway, collector: Upstream) -> None:
    for _ in range(2):
        assert requests.get(gw.url("/lines"), timeout=5).status_code == 200
    post = posts_to(collector, "/lines-log")[0]
    assert post["headers"]["content-type"] == "text/plain"
    lines = [json.loads(line) for line in post["body"].split("\n")]
    assert lines == [{"host": "127.0.0.1", "path": "/lines", "fixed": "x", "route_id": "lines"}] * 2


def test_collector_down_never_fails_requests(gw: Gateway) -> None:
    for _ in range(3):
        assert requests.get(gw.url("/down"), timeout=5).status_code == 200


def test_buffered_entries_are_flushed_at_shutdown(
    tmp_path: Path, upstream: Upstream, collector: Upstream
) -> None:
    text = SHUTDOWN_CONFIG % {"up": upstream.addr, "col": collector.addr}
    g = Gateway(tmp_path, apisix_yaml=text).start()
    try:
        for _ in range(2):
            assert requests.get(g.url("/slow-batches"), timeout=5).status_code == 200
        assert not [r for r in collector.requests if r["path"] == "/shutdown-log"]
    finally:
        assert g.stop() == 0
    batch = json.loads(posts_to(collector, "/shutdown-log")[0]["body"])
    assert [e["route_id"] for e in batch] == ["slow-batches"] * 2


META_CONFIG = """
routes:
  - id: meta
    uri: /meta
    plugins:
      http-logger: {uri: "http://%(col)s/meta-log", batch_max_size: 1}
    upstream: {nodes: {"%(up)s": 1}}
plugin_metadata:
  - id: http-logger
    log_format: {client: "$remote_addr", path: "$uri", tag: "%(tag)s"}
#END
"""


def test_log_format_from_plugin_metadata(
    tmp_path: Path, upstream: Upstream, collector: Upstream
) -> None:
    # APISIX log-util: without a log_format of its own, a route logs plugin_metadata's.
    args = {"up": upstream.addr, "col": collector.addr}
    with Gateway(tmp_path, apisix_yaml=META_CONFIG % {**args, "tag": "one"}) as g:
        assert requests.get(g.url("/meta"), timeout=5).status_code == 200
        entry = json.loads(posts_to(collector, "/meta-log")[0]["body"])
        assert entry == {"client": "127.0.0.1", "path": "/meta", "tag": "one", "route_id": "meta"}
        g.write_yaml(META_CONFIG % {**args, "tag": "two"})  # a change reaches the workers

        def tagged_two() -> bool:
            requests.get(g.url("/meta"), timeout=5)
            bodies = [json.loads(p["body"]) for p in collector.requests if p["path"] == "/meta-log"]
            return any(b.get("tag") == "two" for b in bodies)

        wait_until(tagged_two, timeout=10)
