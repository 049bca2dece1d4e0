"""apisix.yaml standalone mode, routing basics, status API and the CLI (issue #2)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.gateway import Gateway, wait_until
from tests.support.upstream import Upstream


def routes_yaml(up: Upstream, extra: str = "", end: bool = True) -> str:
    text = f"""
upstreams:
  - id: u1
    nodes: {{"{up.addr}": 1}}
routes:
  - id: base
    uri: /base
    upstream_id: u1
{extra}
"""
    return text + ("#END\n" if end else "")


@pytest.fixture
def gw(tmp_path: Path, upstream: Upstream) -> Iterator[Gateway]:
    with Gateway(tmp_path, apisix_yaml=routes_yaml(upstream)) as g:
        yield g


def code(gw: Gateway, path: str, **kw: object) -> int:
    return requests.get(gw.url(path), timeout=5, **kw).status_code  # type: ignore[arg-type]


def test_status_endpoints(gw: Gateway) -> None:
    r = gw.status("/status")
    assert r.status_code == 200 and r.content == b'{"status":"ok"}'  # compact, as APISIX
    assert gw.status("/status/ready").json() == {"status": "ok"}


def test_change_is_applied_within_a_second(gw: Gateway, upstream: Upstream) -> None:
    assert code(gw, "/new") == 404
    gw.write_yaml(routes_yaml(upstream, "  - {id: new, uri: /new, upstream_id: u1}"))
    wait_until(lambda: code(gw, "/new") == 200, timeout=1.5)


def test_file_without_end_marker_keeps_last_good_config(gw: Gateway, upstream: Upstream) -> None:
    gw.write_yaml(routes_yaml(upstream, "  - {id: x, uri: /x, upstream_id: u1}", end=False))
    wait_until(lambda: "does not end with #END" in gw.logs(), timeout=5)
    assert code(gw, "/base") == 200
    assert code(gw, "/x") == 404


def test_invalid_item_is_skipped_others_serve(gw: Gateway, upstream: Upstream) -> None:
    gw.write_yaml(
        routes_yaml(
            upstream,
            "  - {id: bad, uri: 12, upstream_id: u1}\n  - {id: good, uri: /good, upstream_id: u1}",
        )
    )
    wait_until(lambda: code(gw, "/good") == 200)
    assert code(gw, "/base") == 200
    assert "rejected config item /apisix/routes/bad" in gw.logs()


def test_broken_yaml_keeps_last_good(gw: Gateway) -> None:
    gw.write_yaml("routes: [ {id: 1\n#END\n")
    wait_until(lambda: "invalid YAML" in gw.logs(), timeout=5)
    assert code(gw, "/base") == 200


def test_env_substitution(tmp_path: Path, upstream: Upstream) -> None:
    text = (
        "routes:\n  - id: e\n    uri: ${{ROUTE_URI}}\n"
        '    upstream: {nodes: {"${{UP_ADDR:=' + upstream.addr + '}}": 1}}\n#END\n'
    )
    g = Gateway(tmp_path, apisix_yaml=text)
    with g.start(extra_env={"ROUTE_URI": "/from-env"}):
        assert code(g, "/from-env") == 200


def test_routing_rules(gw: Gateway, upstream: Upstream) -> None:
    extra = """
  - {id: exact, uri: /r/a, upstream_id: u1, plugins: {response-rewrite: {headers: {set: {X-R: exact}}}}}
  - {id: prefix, uri: /r/*, upstream_id: u1, plugins: {response-rewrite: {headers: {set: {X-R: prefix}}}}}
  - {id: hi, uri: /p/*, priority: 10, upstream_id: u1, plugins: {response-rewrite: {headers: {set: {X-R: hi}}}}}
  - {id: lo, uri: /p/*, priority: 1, upstream_id: u1, plugins: {response-rewrite: {headers: {set: {X-R: lo}}}}}
  - {id: post, uri: /m, methods: [POST], upstream_id: u1}
  - {id: host, uri: /h, hosts: ["*.example.com"], upstream_id: u1}
  - {id: off, uri: /off, status: 0, upstream_id: u1}
"""
    gw.write_yaml(routes_yaml(upstream, extra))
    wait_until(lambda: code(gw, "/r/a") == 200)

    def tag(path: str) -> str | None:
        return requests.get(gw.url(path), timeout=5).headers.get("X-R")

    assert tag("/r/a") == "exact"
    assert tag("/r/b") == "prefix"
    assert tag("/p/x") == "hi"
    assert code(gw, "/m") == 404
    assert requests.post(gw.url("/m"), timeout=5).status_code == 200
    assert code(gw, "/h") == 404
    assert code(gw, "/h", headers={"Host": "a.example.com"}) == 200
    assert code(gw, "/h", headers={"Host": "example.com"}) == 404
    assert code(gw, "/off") == 404


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tollway.cli", *args], capture_output=True, text=True, check=False
    )


def test_validate_reports_file_and_key(tmp_path: Path, upstream: Upstream) -> None:
    g = Gateway(tmp_path, apisix_yaml=routes_yaml(upstream))
    r = run_cli("validate", "-c", str(g.config_path))
    assert r.returncode == 0, r.stderr
    g.write_yaml(routes_yaml(upstream, "  - {id: bad, uri: /b, upstream: {nodes: {'x:1': -1}}}"))
    r = run_cli("validate", "-c", str(g.config_path))
    assert r.returncode == 1
    assert "apisix.yaml: routes[bad]" in r.stderr and "nodes" in r.stderr
    g.config["apisix"]["node_listen"] = "not-a-port"
    g.write_config()
    r = run_cli("validate", "-c", str(g.config_path))
    assert r.returncode == 1 and "apisix.node_listen" in r.stderr and "config.yaml" in r.stderr


def test_start_with_bad_config_exits_with_message(tmp_path: Path) -> None:
    g = Gateway(tmp_path, config={"nginx_config": {"worker_processes": "many"}})
    r = run_cli("start", "-c", str(g.config_path))
    assert r.returncode == 1 and "nginx_config.worker_processes" in r.stderr


def test_global_rules_apply_to_every_response(gw: Gateway, upstream: Upstream) -> None:
    extra = """
global_rules:
  - id: g1
    plugins:
      response-rewrite: {headers: {set: {X-Global: "1"}}}
      limit-count: {count: 100, time_window: 60, key: remote_addr}
"""
    gw.write_yaml(routes_yaml(upstream, end=False) + extra + "#END\n")
    wait_until(lambda: requests.get(gw.url("/base"), timeout=5).headers.get("X-Global") == "1")
    r = requests.get(gw.url("/base"), timeout=5)
    assert r.headers["X-RateLimit-Limit"] == "100"  # the global rule's header_filter ran
    r = requests.get(gw.url("/missing"), timeout=5)
    assert r.status_code == 404 and r.headers.get("X-Global") == "1"
