"""The three APISIX routers through the real process (issue #4)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import requests

from tests.support.gateway import Gateway
from tests.support.upstream import Upstream


def start(tmp_path: Path, kind: str, routes: str, up: Upstream) -> Gateway:
    text = f"upstreams:\n  - {{id: u, nodes: {{'{up.addr}': 1}}}}\nroutes:\n{routes}\n#END\n"
    return Gateway(tmp_path, apisix_yaml=text, config={"apisix": {"router": {"http": kind}}})


def tag(name: str) -> str:
    return f"plugins: {{response-rewrite: {{headers: {{set: {{X-Route: {name}}}}}}}}}"


def hit(g: Gateway, path: str, **kw: object) -> str | None:
    r = requests.get(g.url(path), timeout=5, **kw)  # type: ignore[arg-type]
    return r.headers.get("X-Route") if r.status_code < 400 else str(r.status_code)


HOST_VS_URI = f"""
  - {{id: wild, uri: /*, hosts: ["*.test.com"], upstream_id: u, {tag("wild")}}}
  - {{id: exact, uri: /server_port, upstream_id: u, {tag("exact")}}}
"""


def test_host_uri_router_prefers_host_routes(tmp_path: Path, upstream: Upstream) -> None:
    with start(tmp_path, "radixtree_host_uri", HOST_VS_URI, upstream) as g:
        assert hit(g, "/server_port", headers={"Host": "www.test.com"}) == "wild"
        assert hit(g, "/server_port") == "exact"


def test_uri_router_prefers_exact_paths(tmp_path: Path, upstream: Upstream) -> None:
    with start(tmp_path, "radixtree_uri", HOST_VS_URI, upstream) as g:
        assert hit(g, "/server_port", headers={"Host": "www.test.com"}) == "exact"


def test_parameters_and_vars(tmp_path: Path, upstream: Upstream) -> None:
    routes = f"""
  - id: user
    uri: /user/:name/files/*path
    upstream_id: u
    plugins:
      proxy-rewrite: {{uri: "/echo/$uri_param_name/$uri_param_path"}}
  - id: beta
    uri: /v
    vars: [["arg_beta", "==", "1"], ["http_x_team", "~~", "^core"]]
    upstream_id: u
    {tag("beta")}
  - {{id: plain, uri: /v, upstream_id: u, {tag("plain")}}}
  - {{id: local, uri: /ip, remote_addrs: ["127.0.0.0/8"], upstream_id: u, {tag("local")}}}
  - {{id: other, uri: /ip6, remote_addrs: ["10.0.0.0/8"], upstream_id: u, {tag("other")}}}
"""
    with start(tmp_path, "radixtree_uri_with_parameter", routes, upstream) as g:
        r = requests.get(g.url("/user/ann/files/a/b.txt"), timeout=5)
        assert r.json()["path"] == "/echo/ann/a/b.txt"
        assert requests.get(g.url("/user//files/x"), timeout=5).status_code == 404
        assert hit(g, "/v?beta=1", headers={"X-Team": "core-infra"}) == "beta"
        assert hit(g, "/v?beta=1", headers={"X-Team": "edge"}) == "plain"
        assert hit(g, "/v") == "plain"
        assert hit(g, "/ip") == "local"
        assert hit(g, "/ip6") == "404"


@pytest.mark.parametrize("path", ["/admin/../public/x", "/public/%2e%2e/admin/x", "/public//x"])
def test_normalised_path_is_what_matches_and_what_upstream_gets(
    tmp_path: Path, upstream: Upstream, path: str
) -> None:
    routes = f"""
  - {{id: public, uri: /public/*, upstream_id: u, {tag("public")}}}
  - {{id: admin, uri: /admin/*, upstream_id: u, {tag("admin")}}}
"""
    with start(tmp_path, "radixtree_host_uri", routes, upstream) as g:
        with socket.create_connection(("127.0.0.1", g.port), timeout=5) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        expected = "admin" if "%2e%2e/admin" in path else "public"
        assert f"X-Route: {expected}".encode() in head
        seen = json.loads(body)["path"]
        assert ".." not in seen and "//" not in seen and "%2e" not in seen


def test_delete_uri_tail_slash_is_the_uri_everyone_sees(tmp_path: Path, upstream: Upstream) -> None:
    # radixtree-uri-keep-end-slash.t TEST 3: /hello/ matches /hello and goes up as /hello;
    # vars see the stripped uri too
    text = (
        f"upstreams:\n  - {{id: u, nodes: {{'{upstream.addr}': 1}}}}\nroutes:\n"
        f'  - {{id: t, uri: /tail, upstream_id: u, vars: [["uri", "==", "/tail"]]}}\n#END\n'
    )
    with Gateway(
        tmp_path, apisix_yaml=text, config={"apisix": {"delete_uri_tail_slash": True}}
    ) as g:
        r = requests.get(g.url("/tail/?a=1"), timeout=5)
        assert r.status_code == 200 and r.json()["path"] == "/tail?a=1"
