"""A request sees one runtime from its start to its end (ARCHITECTURE; issue #12).

The real process on etcd: a request waits in limit-req's delay (an await in the access phase)
while its route's upstream, its plugin config, the global rules and a plugin_metadata change in
etcd; it must reach the OLD upstream with the OLD plugin conf and metadata, while a request
started after the changes gets the new ones.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.etcd import EtcdServer
from tests.support.gateway import Gateway, free_port, wait_until
from tests.support.upstream import Upstream

HELD_DELAY = 6.0  # limit-req: the second request waits 1/rate seconds


def put(etcd: EtcdServer, key: str, value: dict[str, Any]) -> None:
    etcd.put(f"/apisix/{key}", json.dumps(value))


def writing(port: int) -> float:
    """Requests being answered, as the workers last reported (stub_status "writing")."""
    text = requests.get(f"http://127.0.0.1:{port}/apisix/prometheus/metrics", timeout=5).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "apisix_nginx_http_current_connections" and s.labels.get("state") == "writing"
    )


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def gw(
    tmp_path: Path, etcd: EtcdServer, upstream: Upstream, upstream2: Upstream, metrics_port: int
) -> Iterator[Gateway]:
    put(etcd, "upstreams/u", {"nodes": {upstream.addr: 1}})
    conf = {"proxy-rewrite": {"headers": {"set": {"X-Conf": "old"}}}}
    put(etcd, "plugin_configs/p", {"plugins": conf})
    # cors answers with the origins plugin_metadata/cors names (read in header_filter, after
    # limit-req's await)
    put(etcd, "plugin_metadata/cors", {"allow_origins": {"site": "http://old.example"}})
    cors = {"cors": {"allow_origins_by_metadata": ["site"]}}
    limit = {"limit-req": {"rate": 1 / HELD_DELAY, "burst": 5, "key": "remote_addr"}}
    put(etcd, "routes/held", {"uri": "/held", "upstream_id": "u", "plugin_config_id": "p",
                              "plugins": {**limit, **cors}})  # fmt: skip
    put(etcd, "routes/probe", {"uri": "/probe", "upstream_id": "u", "plugin_config_id": "p",
                               "plugins": cors})  # fmt: skip
    config = {
        "apisix": {"enable_admin": False},
        "plugin_attr": {"prometheus": {"export_addr": {"ip": "127.0.0.1", "port": metrics_port}}},
    }
    with Gateway(tmp_path, mode="etcd", etcd=etcd.endpoint, workers=1, config=config) as g:
        yield g


def test_request_finishes_with_the_config_it_started_with(
    gw: Gateway, etcd: EtcdServer, upstream: Upstream, upstream2: Upstream, metrics_port: int
) -> None:
    old_origin = {"Origin": "http://old.example"}
    first = requests.get(gw.url("/held"), headers=old_origin, timeout=5)  # the next one waits
    assert first.status_code == 200 and first.json()["headers"]["x-conf"] == "old"
    assert first.headers.get("Access-Control-Allow-Origin") == "http://old.example"
    result: dict[str, requests.Response] = {}
    held = threading.Thread(
        target=lambda: result.setdefault(
            "r", requests.get(gw.url("/held"), headers=old_origin, timeout=30)
        )
    )
    held.start()
    # it is in its delay (limit-req awaits) once the worker reports a request being answered
    wait_until(lambda: writing(metrics_port) >= 1, timeout=HELD_DELAY / 2)
    put(etcd, "upstreams/u", {"nodes": {upstream2.addr: 1}})
    put(etcd, "plugin_configs/p",
        {"plugins": {"proxy-rewrite": {"headers": {"set": {"X-Conf": "new"}}}}})  # fmt: skip
    put(etcd, "global_rules/g",
        {"plugins": {"response-rewrite": {"headers": {"set": {"X-Global": "new"}}}}})  # fmt: skip
    put(etcd, "plugin_metadata/cors", {"allow_origins": {"site": "http://new.example"}})

    def probe_is_new() -> bool:
        r = requests.get(gw.url("/probe"), headers=old_origin, timeout=5)
        body = r.json()
        return bool(
            body["name"] == "up2"
            and body["headers"].get("x-conf") == "new"
            and r.headers.get("X-Global") == "new"
            and "Access-Control-Allow-Origin" not in r.headers  # the new metadata
        )

    wait_until(probe_is_new, timeout=HELD_DELAY / 2)
    assert held.is_alive(), "the held request must still be waiting when the changes are live"
    held.join(30)
    r = result["r"]
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == "up1"  # the OLD upstream
    assert body["headers"]["x-conf"] == "old"  # the OLD plugin config
    assert "X-Global" not in r.headers  # no global rule: there was none when it started
    # the OLD plugin_metadata/cors: its origin is still allowed
    assert r.headers.get("Access-Control-Allow-Origin") == "http://old.example"
    # and a request started now gets the new config on the same route
    after = requests.get(gw.url("/held"), timeout=30)
    assert after.json()["name"] == "up2" and after.json()["headers"]["x-conf"] == "new"
