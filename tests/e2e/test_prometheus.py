"""prometheus through the real process: workers count, the supervisor exports the sum."""

from __future__ import annotations

import json
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.etcd import EtcdServer
from tests.support.gateway import Gateway, StartGateway, free_port, wait_until
from tests.support.upstream import Upstream

URI = "/apisix/prometheus/metrics"

CONFIG = """
routes:
  - id: "1"
    uri: /hello
    plugins:
      prometheus: {}
    upstream: {nodes: {"%(up)s": 1}}
  - id: "2"
    uri: /global
    upstream: {nodes: {"%(up)s": 1}}
  - id: "3"
    name: named-route
    uri: /named
    plugins:
      prometheus: {prefer_name: true}
    upstream: {nodes: {"%(up)s": 1}}
  - id: checked
    uri: /checked
    upstream:
      nodes: {"%(up)s": 1}
      checks: {active: {type: tcp, healthy: {interval: 1}}}
global_rules:
  - id: "1"
    plugins:
      prometheus: {}
#END
"""

PLAIN = """
routes:
  - {id: "1", uri: /hello, upstream: {nodes: {"%(up)s": 1}}}
#END
"""


class Metrics:
    """One scrape, checked by prometheus-client's parser (which names counter samples
    ``*_total``; the text keeps APISIX's names)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def get(self, sample: str, **labels: str) -> float | None:
        found = [
            s.value
            for s in self.samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        return float(sum(found)) if found else None


def exporter(port: int) -> dict[str, Any]:
    return {"plugin_attr": {"prometheus": {"export_addr": {"ip": "127.0.0.1", "port": port}}}}


def scrape(port: int) -> Metrics:
    r = requests.get(f"http://127.0.0.1:{port}{URI}", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return Metrics(r.text)


def wait_for(port: int, sample: str, want: float, **labels: str) -> Metrics:
    """Workers flush about once a second: poll until the sum is exactly ``want``."""
    return wait_until(lambda: (m := scrape(port)).get(sample, **labels) == want and m, 10)


def hit(g: Gateway, path: str, n: int, status: int = 200) -> None:
    """``n`` requests on fresh connections, in parallel, so both workers take some."""
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: requests.get(g.url(path), timeout=5).status_code, range(n)))
    assert codes == [status] * n


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream, port: int) -> Gateway:
    config = exporter(port)
    return standalone_gateway(CONFIG % {"up": upstream.addr}, workers=2, config=config)


def test_route_requests_are_counted_once_across_workers(gw: Gateway, port: int) -> None:
    n = 40
    hit(gw, "/hello", n)
    labels = {"route": "1", "matched_uri": "/hello", "node": "127.0.0.1", "consumer": ""}
    m = wait_for(port, "apisix_http_status_total", n, code="200", **labels)
    # The route's own conf wins over the global rule's (prefer_route): counted once, not twice.
    assert m.get("apisix_http_status_total", route="1") == n
    assert 'apisix_http_status{code="200",route="1",matched_uri="/hello",matched_host=""' in m.text
    for kind in ("request", "upstream", "apisix"):
        assert m.get("apisix_http_latency_count", type=kind, route="1") == n
        assert m.get("apisix_http_latency_bucket", type=kind, route="1", le="+Inf") == n
    request_ms = m.get("apisix_http_latency_sum", type="request", route="1")
    upstream_ms = m.get("apisix_http_latency_sum", type="upstream", route="1")
    assert request_ms is not None and upstream_ms is not None and 0 < upstream_ms <= request_ms
    ingress = m.get("apisix_bandwidth_total", type="ingress", route="1")
    egress = m.get("apisix_bandwidth_total", type="egress", route="1")
    assert ingress is not None and ingress > n * len("GET /hello HTTP/1.1\r\n")
    assert egress is not None and egress > 0


def test_global_rule_counts_other_routes_and_misses(gw: Gateway, port: int) -> None:
    hit(gw, "/global", 5)
    hit(gw, "/no/such/route", 3, status=404)
    wait_for(port, "apisix_http_status_total", 5, code="200", route="2")
    m = wait_for(port, "apisix_http_status_total", 3, code="404", route="")
    assert m.get("apisix_http_latency_count", type="request", route="", node="") == 3


def test_prefer_name(gw: Gateway, port: int) -> None:
    hit(gw, "/named", 2)
    m = wait_for(port, "apisix_http_status_total", 2, code="200", route="named-route")
    assert m.get("apisix_http_status_total", route="3") is None


def test_instance_gauges_and_endpoint(gw: Gateway, port: int, upstream: Upstream) -> None:
    node = {"name": "/apisix/routes/checked", "ip": "127.0.0.1", "port": str(upstream.port)}
    m = wait_until(lambda: (m := scrape(port)).get("apisix_upstream_status", **node) == 1 and m)
    info = [s for s in m.samples if s.name == "apisix_node_info"]
    assert len(info) == 1 and info[0].value == 1 and info[0].labels["hostname"]
    revision = m.get("tollway_config_revision")
    assert revision is not None and revision >= 1
    assert m.get("tollway_config_rejected_total") == 0
    assert m.get("apisix_etcd_reachable") is None  # standalone: no etcd, as APISIX
    other = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert other.status_code == 404


def test_request_total_and_connection_states(gw: Gateway, port: int) -> None:
    # APISIX exports nginx's stub_status: every request, whatever its route or plugins.
    before = scrape(port).get("apisix_http_requests_total") or 0
    hit(gw, "/no/such/route", 6, status=404)
    wait_until(lambda: (scrape(port).get("apisix_http_requests_total") or 0) >= before + 6)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as idle:
        idle.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")
        # kept alive and idle: an active, waiting connection until it closes
        m = wait_until(
            lambda: (
                (
                    (m := scrape(port)).get(
                        "apisix_nginx_http_current_connections", state="waiting"
                    )
                    or 0
                )
                >= 1
                and m
            )
        )
        active = m.get("apisix_nginx_http_current_connections", state="active")
        accepted = m.get("apisix_nginx_http_current_connections", state="accepted")
        assert active is not None and active >= 1
        assert accepted is not None and accepted >= 7
    assert "# TYPE apisix_http_requests_total gauge" in m.text


def test_counts_survive_a_reload(gw: Gateway, port: int) -> None:
    before = scrape(port).get("apisix_http_status_total", route="1") or 0  # settled earlier
    hit(gw, "/hello", 1)
    wait_for(port, "apisix_http_status_total", before + 1, route="1")
    old = set(wait_until(lambda: len(gw.worker_pids()) == 2 and gw.worker_pids()))
    gw.signal(signal.SIGHUP)
    wait_until(lambda: not (set(gw.worker_pids()) & old) and len(gw.worker_pids()) == 2, 20)
    hit(gw, "/hello", 4)
    # The old workers' totals were kept when they exited; the new ones add to them.
    m = wait_for(port, "apisix_http_status_total", before + 5, code="200", route="1")
    assert (m.get("apisix_http_requests_total") or 0) >= before + 5


def test_not_exported_when_the_plugin_is_not_enabled(tmp_path: Path, upstream: Upstream) -> None:
    port = free_port()
    config = exporter(port) | {"plugins": ["proxy-rewrite"]}
    plain = PLAIN % {"up": upstream.addr}
    with Gateway(tmp_path, apisix_yaml=plain, config=config) as g:
        assert requests.get(g.url("/hello"), timeout=5).status_code == 200
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}{URI}", timeout=2)


def test_etcd_gauges(tmp_path: Path, etcd: EtcdServer, upstream: Upstream) -> None:
    route = {
        "uri": "/hello",
        "plugins": {"prometheus": {}},
        "upstream": {"nodes": {upstream.addr: 1}},
    }
    etcd.put("/apisix/routes/1", json.dumps(route))
    port = free_port()
    config = exporter(port) | {"apisix": {"enable_admin": False}}
    with Gateway(tmp_path, mode="etcd", etcd=etcd.endpoint, workers=2, config=config) as g:
        hit(g, "/hello", 3)
        m = wait_for(port, "apisix_http_status_total", 3, code="200", route="1")
        assert m.get("apisix_etcd_reachable") == 1
        routes = m.get("apisix_etcd_modify_indexes", key="routes")
        assert routes is not None and routes > 0
        assert m.get("apisix_etcd_modify_indexes", key="max_modify_index") == routes
        x_index = m.get("apisix_etcd_modify_indexes", key="x_etcd_index")
        assert x_index is not None and x_index >= routes
        assert m.get("tollway_config_revision") == x_index
        assert m.get("tollway_config_lag") == 0
        etcd.put("/apisix/routes/2", json.dumps(route | {"uri": "/two"}))
        wait_until(
            lambda: (scrape(port).get("apisix_etcd_modify_indexes", key="routes") or 0) > routes
        )
