"""Admin API core (issue #6) through the real process and a real etcd: listener, auth,
headers, routes/services/upstreams CRUD with APISIX's bodies, validation order, and a route
written through the API going live on the data plane."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.etcd import EtcdServer
from tests.support.gateway import Gateway, wait_until
from tests.support.upstream import Upstream
from tollway import APISIX_VERSION, __version__

KEY = "test-admin-key-0123456789"
VIEWER = "viewer-key-0123456789"


class Admin:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.s = requests.Session()
        self.s.headers["X-API-KEY"] = KEY

    def __call__(self, method: str, path: str, body: Any = None, **kw: Any) -> requests.Response:
        if body is not None and not isinstance(body, str | bytes):
            kw["data"] = json.dumps(body)
        elif body is not None:
            kw["data"] = body
        return self.s.request(method, self.gw.admin_url(path), timeout=10, **kw)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, shared_etcd: EtcdServer) -> Iterator[Gateway]:
    root: Path = tmp_path_factory.mktemp("admin")
    g = Gateway(
        root,
        mode="etcd",
        etcd=shared_etcd.endpoint,
        admin_key=KEY,
        config={
            "deployment": {
                "admin": {
                    "admin_key": [
                        {"name": "admin", "key": KEY, "role": "admin"},
                        {"name": "viewer", "key": VIEWER, "role": "viewer"},
                    ]
                }
            }
        },
    )
    with g:
        yield g


@pytest.fixture
def admin(gw: Gateway) -> Admin:
    return Admin(gw)


def ups(up: Upstream) -> dict[str, Any]:
    return {"type": "roundrobin", "nodes": {up.addr: 1}}


def err(r: requests.Response) -> str:
    return str(r.json()["error_msg"])


# -- listener, auth, headers ------------------------------------------------------------------


def test_auth_missing_wrong_and_viewer(gw: Gateway) -> None:
    url = gw.admin_url("/routes")
    r = requests.get(url, timeout=5)
    assert r.status_code == 401
    assert r.json() == {"error_msg": "failed to check token", "description": "missing apikey"}
    r = requests.get(url, headers={"X-API-KEY": "nope"}, timeout=5)
    assert r.json()["description"] == "wrong apikey"
    assert requests.get(url, params={"api_key": KEY}, timeout=5).status_code == 200
    assert requests.get(url, cookies={"X-API-KEY": KEY}, timeout=5).status_code == 200
    # token.t TEST 3: nginx's $http_x_api_key also reads an "x_api_key" header
    assert requests.get(url, headers={"x_api_key": KEY}, timeout=5).status_code == 200
    assert requests.get(url, headers={"X-API-KEY": VIEWER}, timeout=5).status_code == 200
    r = requests.put(gw.admin_url("/routes/v"), headers={"X-API-KEY": VIEWER}, timeout=5)
    assert r.status_code == 401
    assert r.json()["description"] == "invalid method for role viewer"


def test_headers_options_and_head(gw: Gateway, admin: Admin) -> None:
    r = admin("GET", "/routes")
    # APISIX clients read the version from Server (ADC: /APISIX\/(.*)/, features gated on it).
    assert r.headers["Server"] == f"APISIX/{APISIX_VERSION}"
    assert r.headers["X-Tollway-Version"] == __version__
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["X-API-VERSION"] == "v3"
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert r.headers["Access-Control-Expose-Headers"] == "*"
    assert r.headers["Access-Control-Max-Age"] == "3600"
    r = requests.options(gw.admin_url("/routes"), timeout=5)  # preflight: no key
    assert r.status_code == 200 and r.text == ""
    assert requests.head(gw.admin_url(""), timeout=5).status_code == 200


def test_unknown_type_and_bad_bodies(admin: Admin) -> None:
    r = admin("GET", "/nothing")
    assert r.status_code == 404
    assert r.json() == {"error_msg": "Unsupported resource type: nothing"}
    r = admin("PUT", "/routes/bad", "{not json")
    assert r.status_code == 400
    assert r.json()["error_msg"].startswith("invalid request body: ")
    assert r.json()["req_body"] == "{not json"
    big = json.dumps({"uri": "/x", "desc": "a" * (1024 * 1024 * 2)})
    r = admin("PUT", "/routes/big", big)
    assert r.status_code == 400
    assert err(r) == (
        f"invalid request body: request size {len(big)} is greater than the maximum size "
        "1572864 allowed"
    )
    assert admin("GET", "/routes/big").status_code == 404
    r = admin("PUT", "/routes/t?ttl=abc", {"uri": "/t", "plugins": {}})
    assert r.status_code == 400 and err(r) == "invalid argument ttl: should be a number"
    r = admin("PUT", "/routes/t?ttl=nan", {"uri": "/t", "plugins": {}})
    assert r.status_code == 400 and err(r) == "invalid argument ttl: should be a number"
    # Found by schemathesis: etcd refuses a lease this long; that is the client's 400, not a 503.
    r = admin("POST", "/services?ttl=99999999999", {})
    assert r.status_code == 400 and "ttl" in err(r)


# -- CRUD bodies ----------------------------------------------------------------------------


def test_route_crud_bodies(admin: Admin, upstream: Upstream) -> None:
    body = {"uri": "/crud", "upstream": ups(upstream)}
    r = admin("PUT", "/routes/crud", body)
    assert r.status_code == 201
    got = r.json()
    assert set(got) == {"key", "value"}
    assert got["key"] == "/apisix/routes/crud"
    v = got["value"]
    assert v["id"] == "crud" and v["uri"] == "/crud"
    assert isinstance(v["create_time"], int) and v["update_time"] >= v["create_time"]
    # Defaults are not stored (APISIX >= 3.14).
    assert "priority" not in v and "status" not in v and "hash_on" not in v["upstream"]
    r = admin("PUT", "/routes/crud", body)
    assert r.status_code == 200
    assert r.json()["value"]["create_time"] == v["create_time"]
    r = admin("GET", "/routes/crud")
    assert r.status_code == 200
    one = r.json()
    assert set(one) == {"key", "value", "createdIndex", "modifiedIndex"}
    assert one["modifiedIndex"] > one["createdIndex"]
    r = admin("DELETE", "/routes/crud")
    assert r.status_code == 200 and r.json() == {"deleted": "1", "key": "/apisix/routes/crud"}
    r = admin("DELETE", "/routes/crud")
    assert r.status_code == 404 and r.json() == {"message": "Key not found"}
    r = admin("GET", "/routes/crud")
    assert r.status_code == 404 and r.json() == {"message": "Key not found"}


def test_put_id_rules(admin: Admin) -> None:
    r = admin("PUT", "/routes", {"uri": "/x", "plugins": {}})
    assert r.status_code == 400 and err(r) == "missing route id"
    r = admin("PUT", "/routes/a", {"id": "b", "uri": "/x", "plugins": {}})
    assert r.status_code == 400 and err(r) == "wrong route id"
    r = admin("PUT", "/routes/a%20b", {"uri": "/x", "plugins": {}})
    assert r.status_code == 400
    assert err(r) == (
        'invalid configuration: property "id" validation failed: '
        "object matches none of the required"
    )
    r = admin("PUT", "/routes", {"id": 77, "uri": "/n", "plugins": {}})
    assert r.status_code == 201 and r.json()["value"]["id"] == 77
    assert r.json()["key"] == "/apisix/routes/77"
    assert admin("DELETE", "/routes/77").status_code == 200


def test_post_generates_id_from_revision(admin: Admin, upstream: Upstream) -> None:
    r = admin("POST", "/upstreams", ups(upstream))
    assert r.status_code == 201
    key, value = r.json()["key"], r.json()["value"]
    new_id = value["id"]
    assert len(new_id) == 20 and new_id.isdigit() and key == f"/apisix/upstreams/{new_id}"
    assert value["create_time"] == value["update_time"]
    r = admin("POST", "/upstreams/1", ups(upstream))
    assert r.status_code == 400 and err(r) == "wrong upstream id, do not need it"
    r = admin("POST", "/upstreams", {"id": "1", **ups(upstream)})
    assert r.status_code == 400 and err(r) == "wrong upstream id, do not need it"
    assert admin("DELETE", f"/upstreams/{new_id}").status_code == 200


def test_forbidden_timestamps(admin: Admin, upstream: Upstream) -> None:
    r = admin("PUT", "/routes/ts", {"uri": "/ts", "plugins": {}, "create_time": 1})
    assert r.status_code == 400 and err(r) == "the property is forbidden:  create_time"
    r = admin("POST", "/routes", {"uri": "/ts", "upstream": {**ups(upstream), "update_time": 1}})
    assert r.status_code == 400 and err(r) == "the property is forbidden:  upstream.update_time"
    # APISIX checks the method and the id first (resource.lua: 405, then check_conf's id rules).
    r = admin("POST", "/consumers", {"username": "ts", "create_time": 1})
    assert r.status_code == 405 and err(r) == "not supported `POST` method for consumer"
    r = admin("PUT", "/routes", {"uri": "/ts", "plugins": {}, "create_time": 1})
    assert r.status_code == 400 and err(r) == "missing route id"


def test_raw_newlines_inside_json_strings_are_taken(admin: Admin) -> None:
    # proto.t TEST 1 sends a proto's text with raw newlines inside the JSON string (lua-cjson)
    body = '{"content": "syntax = \\"proto3\\";\npackage helloworld;\nmessage A { string a = 1; }"}'
    r = admin("PUT", "/protos/nl", body)
    assert r.status_code in (200, 201), r.text
    assert r.json()["value"]["content"].startswith('syntax = "proto3";\npackage')
    assert admin("DELETE", "/protos/nl").status_code == 200


def test_verbs_apisix_does_not_route_are_not_found(admin: Admin) -> None:
    for method in ("TRACE", "HEAD"):
        assert admin(method, "/routes/1").status_code == 404


def test_patch_merge_subpath_and_timestamps(admin: Admin, upstream: Upstream) -> None:
    admin("PUT", "/routes/p", {"uri": "/p", "name": "n", "upstream": ups(upstream)})
    r = admin("PATCH", "/routes/p", {"name": None, "desc": "d", "methods": ["GET"]})
    assert r.status_code == 200
    v = r.json()["value"]
    assert "name" not in v and v["desc"] == "d" and v["methods"] == ["GET"]
    r = admin("PATCH", "/routes/p", {"methods": ["POST", "PUT"]})
    assert r.json()["value"]["methods"] == ["POST", "PUT"]  # arrays replace
    r = admin("PATCH", "/routes/p", {"upstream": {"nodes": {upstream.addr: None, "1.2.3.4:80": 5}}})
    assert r.json()["value"]["upstream"]["nodes"] == {"1.2.3.4:80": 5}
    r = admin("PATCH", "/routes/p/upstream/nodes", {upstream.addr: 2})
    assert r.status_code == 200
    assert r.json()["value"]["upstream"]["nodes"] == {upstream.addr: 2}
    r = admin("PATCH", "/routes/p/uri/deeper", "1")
    assert r.status_code == 400 and err(r) == "invalid sub-path: /uri"
    r = admin("PATCH", "/routes/p", {"update_time": 5})
    assert r.json()["value"]["update_time"] == 5
    r = admin("PATCH", "/routes/p", {"uri": 5})
    assert r.status_code == 400 and err(r).startswith('invalid configuration: property "uri"')
    assert admin("GET", "/routes/p").json()["value"]["uri"] == "/p"
    r = admin("PATCH", "/routes/p", "[1]")
    assert r.status_code == 400 and err(r) == "invalid configuration"
    r = admin("PATCH", "/routes/p")
    assert r.status_code == 400 and err(r) == "missing new configuration"
    r = admin("PATCH", "/routes/nope", {"desc": "x"})
    assert r.status_code == 404 and r.json() == {"message": "Key not found"}
    admin("DELETE", "/routes/p")


def test_validation_order_and_messages(admin: Admin, upstream: Upstream) -> None:
    def put(body: dict[str, Any]) -> str:
        r = admin("PUT", "/routes/v", body)
        assert r.status_code == 400, r.text
        return err(r)

    up = ups(upstream)
    assert put({"uri": "/v", "host": "a", "hosts": ["b"], "uris": 1}) == (
        "only one of host or hosts is allowed"
    )
    assert put({"uri": "/v", "remote_addr": "1.1.1.1", "remote_addrs": ["1.1.1.1"]}) == (
        "only one of remote_addr or remote_addrs is allowed"
    )
    assert put({"uri": "/v", "upstream": up, "status": 3}).startswith(
        'invalid configuration: property "status"'
    )
    assert put({"uri": "/v", "upstream": {"nodes": {upstream.addr: 1}, "type": "chash"}}) == (
        "missing key"
    )
    assert put({"uri": "/v", "upstream_id": "nope", "plugins": {"x-unknown": {}}}) == (
        "failed to fetch upstream info by upstream id [nope], response code: 404"
    )
    assert put({"uri": "/v", "service_id": "nope"}) == (
        "failed to fetch service info by service id [nope], response code: 404"
    )
    assert put({"uri": "/v", "plugin_config_id": "nope"}) == (
        "failed to fetch plugin config info by plugin config id [nope], response code: 404"
    )
    assert put({"uri": "/v", "upstream": up, "plugins": {"x-unknown": {}}, "vars": [1]}) == (
        "unknown plugin [x-unknown]"
    )
    assert put({"uri": "/v", "upstream": up, "plugins": {"proxy-rewrite": {"uri": 1}}}).startswith(
        "failed to check the configuration of plugin proxy-rewrite err: "
    )
    assert put({"uri": "/v", "upstream": up, "vars": [["arg_a", "~~", "("]]}).startswith(
        "failed to validate the 'vars' expression: "
    )
    r = admin("PUT", "/upstreams/w", {"nodes": {upstream.addr: -1}})
    assert r.status_code == 400 and err(r).startswith('invalid configuration: property "nodes"')
    assert admin("GET", "/routes/v").status_code == 404


def test_references_and_delete_protection(admin: Admin, upstream: Upstream) -> None:
    assert admin("PUT", "/upstreams/dp", ups(upstream)).status_code == 201
    assert admin("PUT", "/services/dp", {"upstream_id": "dp"}).status_code == 201
    assert admin("PUT", "/routes/dp", {"uri": "/dp", "service_id": "dp"}).status_code == 201
    r = admin("DELETE", "/upstreams/dp")
    assert r.status_code == 400
    assert err(r) == "can not delete this upstream, service [dp] is still using it now"
    r = admin("DELETE", "/services/dp")
    assert r.status_code == 400
    assert err(r) == "can not delete this service directly, route [dp] is still using it now"
    r = admin("DELETE", "/services/dp?force=false")
    assert r.status_code == 400
    assert admin("DELETE", "/routes/dp").status_code == 200
    assert admin("DELETE", "/services/dp").status_code == 200
    assert admin("DELETE", "/upstreams/dp").status_code == 200
    # force=true skips the check.
    admin("PUT", "/upstreams/f", ups(upstream))
    admin("PUT", "/routes/f", {"uri": "/f", "upstream_id": "f"})
    r = admin("DELETE", "/upstreams/f")
    assert err(r) == "can not delete this upstream, route [f] is still using it now"
    assert admin("DELETE", "/upstreams/f?force=true").status_code == 200
    admin("DELETE", "/routes/f")


def test_list_filters_and_paging(admin: Admin) -> None:
    for i in range(12):
        body = {"uri": f"/list/{i}", "plugins": {}, "name": f"n{i}"}
        if i % 2:
            body["labels"] = {"env": "x"}
        assert admin("PUT", f"/routes/l{i:02d}", body).status_code == 201
    r = admin("GET", "/routes?name=^n1")
    names = sorted(n["value"]["name"] for n in r.json()["list"])
    assert names == ["n1", "n10", "n11"] and r.json()["total"] == 3
    r = admin("GET", "/routes?label=env")
    assert r.json()["total"] == 6
    r = admin("GET", "/routes?uri=/list/1$")
    assert r.json()["total"] == 1
    r = admin("GET", "/routes?page=2&page_size=10&uri=^/list/")
    assert r.json()["total"] == 12 and len(r.json()["list"]) == 2
    r = admin("GET", "/routes?page=1&page_size=5")
    assert r.status_code == 400 and r.text.strip() == "page_size must be between 10 and 500"
    for i in range(12):
        admin("DELETE", f"/routes/l{i:02d}")


def test_filter_service_id(admin: Admin, upstream: Upstream) -> None:
    admin("PUT", "/services/fs", {"upstream": ups(upstream)})
    admin("PUT", "/routes/fs1", {"uri": "/fs1", "service_id": "fs"})
    admin("PUT", "/routes/fs2", {"uri": "/fs2", "upstream": ups(upstream)})
    r = admin("GET", "/routes", params={"filter": "service_id=fs"})
    assert [n["value"]["id"] for n in r.json()["list"]] == ["fs1"]
    admin("DELETE", "/routes/fs1")
    admin("DELETE", "/routes/fs2")
    admin("DELETE", "/services/fs")


def test_ttl_and_dry_run(admin: Admin, upstream: Upstream, shared_etcd: EtcdServer) -> None:
    r = admin("PUT", "/routes/dry?dry_run=true", {"uri": "/dry", "upstream": ups(upstream)})
    assert r.status_code == 201 and r.headers["X-Tollway-Dry-Run"] == "true"
    assert r.json()["value"]["uri"] == "/dry"
    assert shared_etcd.get("/apisix/routes/dry") is None
    r = admin("POST", "/routes?dry_run=true", {"uri": "/dry", "upstream": ups(upstream)})
    assert r.status_code == 201 and len(r.json()["value"]["id"]) == 20
    r = admin("PUT", "/routes/dry?dry_run=true", {"uri": "/dry", "upstream_id": "nope"})
    assert r.status_code == 400
    r = admin("PUT", "/routes/ttl?ttl=60", {"uri": "/ttl", "upstream": ups(upstream)})
    assert r.status_code == 201
    lease = shared_etcd.etcdctl("get", "/apisix/routes/ttl", "-w", "json")
    assert json.loads(lease)["kvs"][0].get("lease")
    admin("DELETE", "/routes/ttl")


def test_route_goes_live_on_the_data_plane(gw: Gateway, admin: Admin, upstream: Upstream) -> None:
    def code(path: str) -> int:
        return requests.get(gw.url(path), timeout=5).status_code

    r = admin("PUT", "/upstreams/live", ups(upstream))
    assert r.status_code == 201
    r = admin("PUT", "/routes/live", {"uri": "/live", "upstream_id": "live"})
    assert r.status_code == 201
    wait_until(lambda: code("/live") == 200, timeout=10)
    assert admin("PATCH", "/routes/live", {"uri": "/live2"}).status_code == 200
    wait_until(lambda: code("/live2") == 200 and code("/live") == 404, timeout=10)
    assert admin("DELETE", "/routes/live").status_code == 200
    wait_until(lambda: code("/live2") == 404, timeout=10)
    assert admin("DELETE", "/upstreams/live").status_code == 200


def test_etcd_holds_only_what_the_api_accepted(admin: Admin, shared_etcd: EtcdServer) -> None:
    admin("PUT", "/routes/only", {"uri": "/only", "plugins": {}})
    raw = shared_etcd.get("/apisix/routes/only")
    assert raw is not None
    stored = json.loads(raw)
    assert stored["uri"] == "/only" and stored["id"] == "only"
    assert set(stored) == {"uri", "plugins", "id", "create_time", "update_time"}
    admin("DELETE", "/routes/only")
