"""Health checks through the real process: active and passive checks, state kept across node
changes, passive-only recovery, the control API, new workers (tollway.upstream)."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web

from tests.support.gateway import Gateway, wait_until
from tests.support.upstream import Upstream


class Node(Upstream):
    """A test upstream that can be told to answer every request with one status."""

    fail_status = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.fail_status:
            self.hits += 1
            return web.Response(status=self.fail_status, headers={"X-Upstream": self.name})
        return await super()._handle(request)


def restart(node: Node) -> Node:
    """A new server on the same port (the old one must be stopped)."""
    new = Node(node.name)
    new.port = node.port
    return new.start()


class HealthGateway(Gateway):
    def __init__(self, root: Path, apisix_yaml: str, **kw: Any) -> None:
        super().__init__(root, apisix_yaml=apisix_yaml, **kw)  # control API on a free port

    def control(self, path: str = "/v1/healthcheck") -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.control_port}{path}", timeout=2)

    def states(self, src: str = "upstreams/1") -> dict[int, str]:
        """Node port -> status for one checker."""
        r = self.control(f"/v1/healthcheck/{src}")
        if r.status_code != 200:
            return {}
        return {n["port"]: n["status"] for n in r.json()["nodes"]}


def get(gw: Gateway, path: str = "/x") -> tuple[int, str]:
    r = requests.get(gw.url(path), timeout=5)
    return r.status_code, r.headers.get("X-Upstream", "")


def upstream_yaml(nodes: list[Upstream], checks: str, route: str = "") -> str:
    node_map = ", ".join(f'"{n.addr}": 1' for n in nodes)
    checks = f"    checks:\n{checks}" if checks else ""
    return f"""
upstreams:
  - id: 1
    nodes: {{{node_map}}}
{checks}
routes:
  - id: 1
    uri: /*
    upstream_id: 1
{route}
#END
"""


ACTIVE = """
      active:
        type: http
        http_path: /status/200
        timeout: 1
        healthy: {interval: 1, successes: 2}
        unhealthy: {interval: 1, tcp_failures: 2, http_failures: 2}
"""

PASSIVE = """
      passive:
        healthy: {successes: 1}
        unhealthy: {http_statuses: [500], http_failures: 3}
"""


@pytest.fixture
def nodes() -> Any:
    made = [Node("a").start(), Node("b").start()]
    yield made
    for n in made:
        n.stop()


def test_active_eject_and_readmit(tmp_path: Path, nodes: list[Node]) -> None:
    a, b = nodes
    with HealthGateway(tmp_path, upstream_yaml(nodes, ACTIVE)) as gw:
        # The checker exists from config load, before any request (APISIX: first request).
        assert gw.states() == {a.port: "healthy", b.port: "healthy"}
        seen = Counter(get(gw)[1] for _ in range(20))
        assert seen["a"] > 0 and seen["b"] > 0

        b.stop()
        t0 = time.monotonic()
        results: list[tuple[int, str]] = []

        def ejected() -> bool:
            results.append(get(gw))  # traffic while the node goes down
            return gw.states().get(b.port) == "unhealthy"

        wait_until(ejected, timeout=10, interval=0.05)
        ejection = time.monotonic() - t0
        after = [get(gw) for _ in range(30)]
        assert all(r == (200, "a") for r in results + after), results + after
        # 2 tcp failures at a 1 s interval: the second probe fails between 1 and 2 s after.
        assert ejection < 3.5, ejection

        b = nodes[1] = restart(b)
        t0 = time.monotonic()
        wait_until(lambda: gw.states().get(b.port) == "healthy", timeout=10, interval=0.05)
        readmission = time.monotonic() - t0
        assert readmission < 3.5, readmission
        wait_until(lambda: get(gw)[1] == "b", timeout=2)
        print(f"\nactive: ejected in {ejection:.2f}s, readmitted in {readmission:.2f}s")


def test_passive_eject_and_state_kept_when_nodes_change(tmp_path: Path, nodes: list[Node]) -> None:
    a, b = nodes
    b.fail_status = 500
    c = Node("c").start()
    nodes.append(c)
    with HealthGateway(tmp_path, upstream_yaml([a, b], PASSIVE)) as gw:
        assert gw.states() == {a.port: "healthy", b.port: "healthy"}
        failures = 0
        t0 = time.monotonic()

        def ejected() -> bool:
            nonlocal failures
            status, _ = get(gw)
            failures += status == 500
            return gw.states().get(b.port) == "unhealthy"

        wait_until(ejected, timeout=5, interval=0.0)
        ejection = time.monotonic() - t0
        # http_failures: 3, plus the failures of requests sent while the reports are batched
        # (the workers send them every 100 ms).
        assert failures >= 3 and ejection < 1.0, (failures, ejection)
        assert [get(gw) for _ in range(20)] == [(200, "a")] * 20

        # Add a third node: the unhealthy node stays out (APISIX resets it to healthy).
        hits_b = b.hits
        gw.write_yaml(upstream_yaml([a, b, c], PASSIVE))
        wait_until(lambda: c.port in gw.states(), timeout=5)
        assert gw.states() == {a.port: "healthy", b.port: "unhealthy", c.port: "healthy"}
        seen = Counter(get(gw) for _ in range(30))
        assert set(seen) == {(200, "a"), (200, "c")}, seen
        assert b.hits == hits_b

        # Passive-only checks readmit the node after the recovery period (10 s by default).
        b.fail_status = 0
        wait_until(lambda: gw.states().get(b.port) == "healthy", timeout=15, interval=0.1)
        recovery = time.monotonic() - t0 - ejection
        assert 9 <= recovery <= 12, recovery
        wait_until(lambda: get(gw)[1] == "b", timeout=2)
        print(
            f"\npassive: ejected after {failures} failures in {ejection:.2f}s, "
            f"recovered after {recovery:.2f}s"
        )


def test_new_worker_gets_the_health_table(tmp_path: Path, nodes: list[Node]) -> None:
    _, b = nodes
    b.fail_status = 503  # every answer of b is an http failure, probes included
    checks = """
      active:
        http_path: /
        healthy: {interval: 1}
        unhealthy: {interval: 1, http_failures: 1}
"""
    with HealthGateway(tmp_path, upstream_yaml(nodes, checks), workers=2) as gw:
        wait_until(lambda: gw.states().get(b.port) == "unhealthy", timeout=5)
        assert all(get(gw) == (200, "a") for _ in range(20))
        for pid in gw.worker_pids():
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: get(gw)[0] == 200, timeout=10)
        wait_until(lambda: len(gw.worker_pids()) == 2, timeout=10)
        # Restarted workers got the table before their first load: b never answers.
        results = [get(gw) for _ in range(40)]
        assert results == [(200, "a")] * 40, Counter(results)


def test_control_api(tmp_path: Path, nodes: list[Node]) -> None:
    a = nodes[0]
    route = f"""
  - id: inline
    uri: /inline
    upstream:
      nodes: {{"{a.addr}": 1}}
      checks: {{active: {{type: tcp, healthy: {{interval: 1}}}}}}
  - id: plain
    uri: /plain
    upstream: {{nodes: {{"{a.addr}": 1}}}}
"""
    with HealthGateway(tmp_path, upstream_yaml(nodes, ACTIVE, route)) as gw:
        all_ = gw.control().json()
        # standalone: APISIX names checkers by "/<type>/<id>" (etcd keys carry the prefix)
        assert [c["name"] for c in all_] == ["/routes/inline", "/upstreams/1"]
        inline = gw.control("/v1/healthcheck/routes/inline").json()
        assert inline["type"] == "tcp"
        assert inline["nodes"] == [
            {
                "ip": "127.0.0.1",
                "port": a.port,
                "hostname": "127.0.0.1",
                "status": "healthy",
                "counter": {
                    "success": 0,
                    "http_failure": 0,
                    "tcp_failure": 0,
                    "timeout_failure": 0,
                },
            }
        ]
        r = gw.control("/v1/healthcheck/routes/plain")
        assert r.status_code == 404 and r.json() == {"error_msg": "no checker for routes[plain]"}
        r = gw.control("/v1/healthcheck/routes/nope")
        assert r.status_code == 404 and r.json() == {"error_msg": "routes[nope] not found"}
        r = gw.control("/v1/healthcheck/consumers/1")
        assert r.status_code == 400
        html = requests.get(
            f"http://127.0.0.1:{gw.control_port}/v1/healthcheck",
            headers={"Accept": "text/html"},
            timeout=2,
        )
        assert html.headers["Content-Type"].startswith("text/html")
        assert f"127.0.0.1:{a.port}" in html.text

        # Removing the checks removes the checker (and its probes).
        gw.write_yaml(upstream_yaml(nodes, ""))
        wait_until(lambda: gw.control("/v1/healthcheck/upstreams/1").status_code == 404)
        assert gw.control().json() == {}  # no checker left: an empty Lua table, as APISIX


def test_control_api_dumps_schema_and_actions(tmp_path: Path, nodes: list[Node]) -> None:
    a = nodes[0]
    route = """
  - id: r1
    uri: /r1
    upstream_id: 1
plugin_metadata:
  - id: http-logger
    log_format: {host: "$host"}
"""
    checks = (
        f"      active: {{type: tcp, port: {a.port}, host: probe.test, healthy: {{interval: 1}}}}\n"
    )
    with HealthGateway(tmp_path, upstream_yaml(nodes, checks, route)) as gw:
        # checks.active.port/host: the probed address and the hostname, as APISIX's targets
        [node] = gw.control("/v1/healthcheck/upstreams/1").json()["nodes"]
        assert (node["port"], node["hostname"]) == (a.port, "probe.test")
        routes = gw.control("/v1/routes").json()
        assert [r["value"]["uri"] for r in routes] == ["/*", "/r1"]
        assert {"key", "value", "createdIndex", "modifiedIndex"} <= set(routes[0])
        assert gw.control("/v1/route/r1").json()["value"]["upstream_id"] == 1
        r = gw.control("/v1/route/nope")
        assert r.status_code == 404 and r.json() == {"error_msg": "route[nope] not found"}
        up = gw.control("/v1/upstream/1").json()
        assert up["key"].endswith("/upstreams/1")
        # the upstream as served (t/control/upstreams.t): id a string, array nodes, defaults
        value = up["value"]
        assert value["id"] == "1" and value["pass_host"] == "pass" and value["type"] == "roundrobin"
        assert {"host": "127.0.0.1", "port": a.port, "weight": 1} in value["nodes"]
        assert gw.control("/v1/services").json() == []
        meta = gw.control("/v1/plugin_metadatas").json()
        assert meta == [{"id": "http-logger", "log_format": {"host": "$host"}}]
        assert gw.control("/v1/plugin_metadata/nope").status_code == 404
        schema = gw.control("/v1/schema").json()
        assert "uri" in schema["main"]["route"]["properties"]
        assert schema["plugins"]["key-auth"]["priority"] == 2500
        assert schema["main"]["upstream_hash_vars_schema"]["type"] == "string"
        base = f"http://127.0.0.1:{gw.control_port}"
        assert requests.post(f"{base}/v1/gc", timeout=5).status_code == 200
        r = requests.put(f"{base}/v1/plugins/reload", timeout=5)
        assert r.status_code == 200 and r.text == "done"
        assert requests.post(f"{base}/v1/plugins/reload", timeout=5).status_code == 404
