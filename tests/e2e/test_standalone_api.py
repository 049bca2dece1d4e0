"""APISIX's API-driven standalone mode (role traditional, config_provider yaml): the whole config
arrives by PUT /apisix/admin/configs (what ADC and the ingress controller send), through the real
process, with real upstreams."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.support.gateway import Gateway, wait_until
from tests.support.upstream import Upstream

KEY = "standalone-admin-key-0123"
API_DRIVEN = {
    "deployment": {"role": "traditional", "role_traditional": {"config_provider": "yaml"}}
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root: Path = tmp_path_factory.mktemp("api-standalone")
    with Gateway(root, config=API_DRIVEN, admin_key=KEY) as g:
        yield g


def configs(
    gw: Gateway, method: str, body: Any = None, digest: str | None = None, **headers: str
) -> requests.Response:
    h = {"X-API-KEY": KEY, **headers}
    if digest is not None:
        h["X-Digest"] = digest
    data = body if isinstance(body, str | bytes | None) else json.dumps(body)
    return requests.request(method, gw.admin_url("/configs"), data=data, headers=h, timeout=10)


def route(up: Upstream, rid: str = "r1", uri: str = "/api") -> dict[str, Any]:
    return {"id": rid, "uri": uri, "upstream": {"nodes": {up.addr: 1}, "type": "roundrobin"}}


def serves(gw: Gateway, path: str, status: int = 200, **headers: str) -> None:
    wait_until(lambda: requests.get(gw.url(path), headers=headers, timeout=5).status_code == status)


def test_a_config_is_put_served_and_read_back(gw: Gateway, upstream: Upstream) -> None:
    r = configs(gw, "GET")
    assert r.status_code == 200 and r.json()["routes_conf_version"] == 0
    assert "X-Digest" not in r.headers
    assert requests.get(gw.url("/api"), timeout=5).status_code == 404

    r = configs(gw, "PUT", {"routes": [route(upstream)]})
    assert r.status_code == 400 and r.json() == {"error_msg": "missing digest header"}
    r = configs(gw, "PUT", {"routes": [route(upstream)]}, digest="d1")
    assert r.status_code == 202
    serves(gw, "/api")
    assert configs(gw, "PUT", {"routes": []}, digest="d1").status_code == 204  # same digest

    r = configs(gw, "GET")
    assert r.headers["X-Digest"] == "d1" and int(r.headers["X-Last-Modified"]) > 0
    doc = r.json()
    assert doc["routes"] == [route(upstream)] and doc["routes_conf_version"] == 1
    head = configs(gw, "HEAD")
    assert head.status_code == 200 and head.headers["X-Digest"] == "d1"
    as_yaml = configs(gw, "GET", Accept="application/yaml")
    assert as_yaml.headers["Content-Type"].startswith("application/yaml")
    assert yaml.safe_load(as_yaml.text)["routes"][0]["uri"] == "/api"


def test_a_bad_config_is_refused_and_the_last_good_one_serves(
    gw: Gateway, upstream: Upstream
) -> None:
    configs(gw, "PUT", {"routes": [route(upstream, uri="/good")]}, digest="good")
    serves(gw, "/good")
    bad = {"routes": [{"id": "x", "uri": 666, "upstream_id": "1"}]}
    r = configs(gw, "PUT", bad, digest="bad")
    assert r.status_code == 400
    assert r.json()["error_msg"] == (
        'invalid routes at index 0, err: invalid configuration: property "uri" validation '
        "failed: wrong type: expected string, got number"
    )
    twice = {"routes": [route(upstream), route(upstream)]}
    r = configs(gw, "PUT", twice, digest="twice")
    assert r.status_code == 400 and r.json()["error_msg"] == "found duplicate id r1 in routes"
    served = configs(gw, "GET").json()["routes_conf_version"]
    r = configs(gw, "PUT", {"routes_conf_version": 0, "routes": []}, digest="back")
    assert r.status_code == 400
    assert r.json()["error_msg"] == (
        f"routes_conf_version must be greater than or equal to ({served})"
    )
    assert configs(gw, "GET").headers["X-Digest"] == "good"
    assert requests.get(gw.url("/good"), timeout=5).status_code == 200


def test_an_unchanged_conf_version_keeps_that_kind(gw: Gateway, upstream: Upstream) -> None:
    configs(gw, "PUT", {"routes": [route(upstream, uri="/kept")]}, digest="k1")
    serves(gw, "/kept")
    version = configs(gw, "GET").json()["routes_conf_version"]
    body = {"routes_conf_version": version, "routes": [], "upstreams": []}
    assert configs(gw, "PUT", body, digest="k2").status_code == 202
    doc = wait_until(lambda: (d := configs(gw, "GET")).headers.get("X-Digest") == "k2" and d)
    assert doc.json()["routes"][0]["uri"] == "/kept"
    assert requests.get(gw.url("/kept"), timeout=5).status_code == 200


def test_yaml_bodies_consumers_with_credentials_and_validate(
    gw: Gateway, upstream: Upstream
) -> None:
    doc = {
        "routes": [{**route(upstream, uri="/auth"), "plugins": {"key-auth": {}}}],
        "consumers": [
            {"username": "jack"},
            {"id": "jack/credentials/c1", "plugins": {"key-auth": {"key": "jack-key"}}},
        ],
    }
    text = yaml.safe_dump(doc)
    r = configs(gw, "POST", text, **{"Content-Type": "application/yaml"})
    assert r.status_code == 404  # POST /configs is not a verb; /configs/validate is
    r = requests.post(
        gw.admin_url("/configs/validate"),
        data=text,
        headers={"X-API-KEY": KEY, "Content-Type": "application/yaml"},
        timeout=10,
    )
    assert r.status_code == 200
    # config-validate.t: every error, not the first one
    bad = {"routes": [{"id": "a", "uri": 1}, {"id": "b", "uri": 2}]}
    r = requests.post(
        gw.admin_url("/configs/validate"), data=json.dumps(bad), headers={"X-API-KEY": KEY}
    )
    assert r.status_code == 400
    assert r.json()["error_msg"] == "Configuration validation failed"
    assert [(e["resource_type"], e["index"]) for e in r.json()["errors"]] == [
        ("routes", 0),
        ("routes", 1),
    ]
    r = configs(gw, "PUT", text, digest="yaml", **{"Content-Type": "application/yaml"})
    assert r.status_code == 202
    serves(gw, "/auth", 200, apikey="jack-key")
    got = requests.get(gw.url("/auth"), headers={"apikey": "jack-key"}, timeout=5).json()
    assert got["headers"]["x-credential-identifier"] == "c1"
    assert requests.get(gw.url("/auth"), timeout=5).status_code == 401


def test_item_endpoints_point_to_configs(gw: Gateway) -> None:
    r = requests.get(gw.admin_url("/routes"), headers={"X-API-KEY": KEY}, timeout=5)
    assert r.status_code == 400 and "/apisix/admin/configs" in r.json()["error_msg"]
    assert requests.get(gw.admin_url("/configs"), timeout=5).status_code == 401  # key needed


def test_the_config_survives_a_restart(tmp_path: Path, upstream: Upstream) -> None:
    # APISIX keeps it in shared memory only; Tollway serves it again after a restart.
    with Gateway(tmp_path, config=API_DRIVEN, admin_key=KEY) as g:
        assert configs(g, "PUT", {"routes": [route(upstream, uri="/again")]}, digest="x").ok
        serves(g, "/again")
        g.stop()
        g.start()
        serves(g, "/again")
        assert configs(g, "GET").headers["X-Digest"] == "x"
