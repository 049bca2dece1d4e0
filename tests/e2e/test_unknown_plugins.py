"""Fail closed on plugins the gateway cannot run (issue #11), through the real process.

An object naming a plugin that is unknown or not enabled in config.yaml's ``plugins`` makes
the requests it applies to answer 503 with a JSON message naming the plugin: a route, a
service, a plugin config, a consumer (requests authenticated as it), a consumer group (requests
of its consumers), a global rule (every request). ``tollway.unknown_plugins: skip`` restores
APISIX's behaviour. Both config sources: items written straight into etcd (the Admin API would
refuse them) and apisix.yaml.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.etcd import EtcdServer
from tests.support.gateway import Gateway, wait_until
from tests.support.upstream import Upstream
from tollway.plugins.registry import load_registry

# Every built-in plugin but uri-blocker: a plugin Tollway has that this config does not enable.
ENABLED = sorted(n for n in load_registry().plugins if n != "uri-blocker")
NOT_ENABLED = "uri-blocker"


def message(*plugins: str) -> str:
    if len(plugins) == 1:
        return (
            f"plugin [{plugins[0]}] is unknown or not enabled on this gateway: "
            "the request is refused rather than served without it"
        )
    return (
        f"plugins [{', '.join(plugins)}] are unknown or not enabled on this gateway: "
        "the request is refused rather than served without them"
    )


def get(g: Gateway, path: str, key: str | None = None) -> requests.Response:
    headers = {"apikey": key} if key is not None else {}
    return requests.get(g.url(path), headers=headers, timeout=5)


def assert_refused(r: requests.Response, *plugins: str) -> None:
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"error_msg": message(*plugins)}


def objects(up: Upstream) -> dict[str, list[dict[str, Any]]]:
    """One object of each kind naming a plugin this gateway cannot run, and controls."""
    upstream = {"nodes": {up.addr: 1}}
    return {
        "routes": [
            {"id": "open", "uri": "/open", "upstream": upstream},
            {
                "id": "route",
                "uri": "/route",
                "upstream": upstream,
                "plugins": {"openid-connect": {"client_id": "x"}},
            },
            {"id": "service", "uri": "/service", "service_id": "s1"},
            {"id": "pconf", "uri": "/pconf", "plugin_config_id": "pc1", "upstream": upstream},
            {
                "id": "consumer",
                "uri": "/consumer",
                "upstream": upstream,
                "plugins": {"key-auth": {}},
            },
            {
                "id": "not-enabled",
                "uri": "/not-enabled",
                "upstream": upstream,
                "plugins": {NOT_ENABLED: {"block_rules": ["nothing"]}},
            },
            # _meta.disable: nothing to enforce, so nothing to refuse
            {
                "id": "disabled",
                "uri": "/disabled",
                "upstream": upstream,
                "plugins": {"opa": {"_meta": {"disable": True}}},
            },
        ],
        "services": [{"id": "s1", "upstream": upstream, "plugins": {"forward-auth": {}}}],
        "plugin_configs": [{"id": "pc1", "plugins": {"opa": {}, "ldap-auth": {}}}],
        "consumer_groups": [{"id": "g1", "plugins": {"cas-auth": {}}}],
        "consumers": [
            {"username": "ok", "plugins": {"key-auth": {"key": "ok-key"}}},
            {"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}, "wolf-rbac": {}}},
            {"username": "grp", "group_id": "g1", "plugins": {"key-auth": {"key": "grp-key"}}},
        ],
    }


GLOBAL_RULE = {"id": "gr", "plugins": {"authz-keycloak": {}}}


def check_refusals(g: Gateway) -> None:
    assert get(g, "/open").status_code == 200
    assert_refused(get(g, "/route"), "openid-connect")
    assert_refused(get(g, "/service"), "forward-auth")
    assert_refused(get(g, "/pconf"), "ldap-auth", "opa")
    assert_refused(get(g, "/not-enabled"), NOT_ENABLED)
    assert get(g, "/disabled").status_code == 200
    # a consumer's plugin: only requests authenticated as that consumer are refused
    assert get(g, "/consumer").status_code == 401
    assert get(g, "/consumer", "ok-key").status_code == 200
    assert_refused(get(g, "/consumer", "jack-key"), "wolf-rbac")
    assert_refused(get(g, "/consumer", "grp-key"), "cas-auth")


def check_global_refusal(g: Gateway) -> None:
    check_global_refusal_of(g, "authz-keycloak")


def check_global_refusal_of(g: Gateway, plugin: str) -> None:
    """A global rule's unknown plugin: every request, matched or not."""
    for path in ("/open", "/nowhere", "/route"):
        assert_refused(get(g, path), plugin)
    assert_refused(get(g, "/consumer", "ok-key"), plugin)


def check_skipped(g: Gateway) -> None:
    for path in ("/open", "/route", "/service", "/pconf", "/not-enabled", "/disabled"):
        assert get(g, path).status_code == 200, path
    assert get(g, "/consumer", "jack-key").status_code == 200
    assert get(g, "/consumer", "grp-key").status_code == 200
    assert get(g, "/consumer").status_code == 401


def config_status(g: Gateway) -> dict[str, Any]:
    body: dict[str, Any] = g.status("/status/config").json()
    return body["unknown_plugins"]  # type: ignore[no-any-return]


def unknown_items_metric(g: Gateway) -> float:
    text = requests.get(
        f"http://127.0.0.1:{g.prometheus_port}/apisix/prometheus/metrics", timeout=5
    ).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "tollway_config_unknown_plugin_items":
                return float(s.value)
    raise AssertionError("tollway_config_unknown_plugin_items not exported")


EXPECTED_ITEMS = [
    {"key": "/apisix/routes/route", "plugins": ["openid-connect"]},
    {"key": "/apisix/routes/not-enabled", "plugins": [NOT_ENABLED]},
    {"key": "/apisix/services/s1", "plugins": ["forward-auth"]},
    {"key": "/apisix/plugin_configs/pc1", "plugins": ["opa", "ldap-auth"]},
    {"key": "/apisix/consumers/jack", "plugins": ["wolf-rbac"]},
    {"key": "/apisix/consumer_groups/g1", "plugins": ["cas-auth"]},
]


def warnings_about(g: Gateway, what: str) -> int:
    return g.logs().count(f"{what} names plugin(s)")


# -- etcd mode ---------------------------------------------------------------------------------


def put_all(etcd: EtcdServer, objs: dict[str, list[dict[str, Any]]]) -> None:
    for kind, items in objs.items():
        for item in items:
            item_id = item.get("id") or item["username"]
            etcd.put(f"/apisix/{kind}/{item_id}", json.dumps(item))


def etcd_gateway(
    tmp_path: Path, etcd: EtcdServer, action: str | None = None, workers: int = 1
) -> Gateway:
    conf: dict[str, Any] = {"apisix": {"enable_admin": False}, "plugins": ENABLED}
    if action is not None:
        conf["tollway"] = {"unknown_plugins": action}
    return Gateway(tmp_path, mode="etcd", etcd=etcd.endpoint, workers=workers, config=conf)


@pytest.fixture
def etcd_gw(tmp_path: Path, etcd: EtcdServer, upstream: Upstream) -> Iterator[Gateway]:
    put_all(etcd, objects(upstream))
    with etcd_gateway(tmp_path, etcd, workers=2) as g:
        yield g


def test_etcd_items_naming_unknown_plugins_are_refused(
    etcd_gw: Gateway, etcd: EtcdServer, upstream: Upstream
) -> None:
    g = etcd_gw
    check_refusals(g)
    status = config_status(g)
    assert status["action"] == "refuse"
    assert status["count"] == len(EXPECTED_ITEMS)
    assert sorted(status["items"], key=str) == sorted(EXPECTED_ITEMS, key=str)
    assert unknown_items_metric(g) == len(EXPECTED_ITEMS)
    # warned once per object version, by the config agent (not once per worker or request)
    assert warnings_about(g, "routes/route") == 1
    assert "its requests are answered 503" not in g.logs()  # no invalid conf here
    # a new version of the route: warned again; fixed: served again, and no longer counted
    etcd.put("/apisix/routes/route", json.dumps(objects(upstream)["routes"][1] | {"desc": "v2"}))
    wait_until(lambda: warnings_about(g, "routes/route") == 2)
    fixed = {"uri": "/route", "upstream": {"nodes": {upstream.addr: 1}}}
    etcd.put("/apisix/routes/route", json.dumps(fixed))
    wait_until(lambda: get(g, "/route").status_code == 200)
    assert config_status(g)["count"] == len(EXPECTED_ITEMS) - 1
    assert warnings_about(g, "routes/route") == 2


def test_etcd_global_rule_naming_an_unknown_plugin_refuses_every_request(
    etcd_gw: Gateway, etcd: EtcdServer
) -> None:
    g = etcd_gw
    etcd.put("/apisix/global_rules/gr", json.dumps(GLOBAL_RULE))
    wait_until(lambda: get(g, "/open").status_code == 503)
    check_global_refusal(g)
    assert {"key": "/apisix/global_rules/gr", "plugins": ["authz-keycloak"]} in config_status(g)[
        "items"
    ]
    etcd.delete("/apisix/global_rules/gr")
    wait_until(lambda: get(g, "/open").status_code == 200)
    assert get(g, "/nowhere").status_code == 404
    check_refusals(g)


def test_etcd_unknown_plugins_skip(tmp_path: Path, etcd: EtcdServer, upstream: Upstream) -> None:
    put_all(etcd, objects(upstream))
    etcd.put("/apisix/global_rules/gr", json.dumps(GLOBAL_RULE))
    with etcd_gateway(tmp_path, etcd, "skip") as g:
        check_skipped(g)
        assert get(g, "/nowhere").status_code == 404
        status = config_status(g)
        assert status["action"] == "skip" and status["count"] == len(EXPECTED_ITEMS) + 1
        assert "skipped (tollway.unknown_plugins: skip)" in g.logs()


def test_a_plugin_removed_from_config_yaml_on_reload_refuses(
    tmp_path: Path, etcd: EtcdServer, upstream: Upstream
) -> None:
    """Workers read config.yaml's ``plugins`` again on SIGHUP: a route whose plugin is no
    longer enabled is refused by the new workers, not served open."""
    etcd.put(
        "/apisix/routes/1",
        json.dumps({"uri": "/k", "plugins": {"key-auth": {}},
                    "upstream": {"nodes": {upstream.addr: 1}}}),
    )  # fmt: skip
    with etcd_gateway(tmp_path, etcd) as g:
        assert get(g, "/k").status_code == 401
        g.config["plugins"] = [n for n in ENABLED if n != "key-auth"]
        g.write_config()
        old = set(g.worker_pids())
        g.signal(signal.SIGHUP)
        # the old workers accept until the new ones are ready, then drain and exit
        wait_until(lambda: not old & set(g.worker_pids()), timeout=15)
        assert_refused(get(g, "/k"), "key-auth")


# -- yaml (standalone) mode --------------------------------------------------------------------


def yaml_doc(objs: dict[str, list[dict[str, Any]]]) -> str:
    return json.dumps(objs) + "\n#END\n"  # JSON is YAML


def yaml_gateway(tmp_path: Path, text: str, action: str | None = None) -> Gateway:
    conf: dict[str, Any] = {"plugins": ENABLED}
    if action is not None:
        conf["tollway"] = {"unknown_plugins": action}
    return Gateway(tmp_path, apisix_yaml=text, config=conf)


def test_yaml_items_naming_unknown_plugins_are_refused(tmp_path: Path, upstream: Upstream) -> None:
    objs = objects(upstream)
    with yaml_gateway(tmp_path, yaml_doc(objs)) as g:
        check_refusals(g)
        status = config_status(g)
        assert status["count"] == len(EXPECTED_ITEMS)
        assert sorted(status["items"], key=str) == sorted(EXPECTED_ITEMS, key=str)
        assert "rejected config item" not in g.logs()
        assert warnings_about(g, "consumers/jack") == 1
        g.write_yaml(yaml_doc(objs | {"global_rules": [GLOBAL_RULE]}))
        wait_until(lambda: get(g, "/open").status_code == 503)
        check_global_refusal(g)
        g.write_yaml(yaml_doc(objs))
        wait_until(lambda: get(g, "/open").status_code == 200)
        check_refusals(g)


def test_yaml_unknown_plugins_skip_is_apisix_behaviour(tmp_path: Path, upstream: Upstream) -> None:
    """APISIX in yaml mode rejects an item naming an unknown plugin (the others serve)."""
    objs = objects(upstream) | {"global_rules": [GLOBAL_RULE]}
    with yaml_gateway(tmp_path, yaml_doc(objs), "skip") as g:
        assert get(g, "/open").status_code == 200  # the global rule was dropped, not refusing
        assert get(g, "/route").status_code == 404  # so was the route
        assert get(g, "/disabled").status_code == 404  # APISIX: even with _meta.disable
        assert get(g, "/consumer", "ok-key").status_code == 200
        assert get(g, "/consumer", "jack-key").status_code == 401  # jack was dropped
        assert "rejected config item /apisix/routes/route: unknown plugin [openid-connect]" in (
            g.logs()
        )
        assert config_status(g)["count"] == 0


# -- API-driven standalone mode ----------------------------------------------------------------

API_DRIVEN = {
    "deployment": {"role": "traditional", "role_traditional": {"config_provider": "yaml"}}
}
KEY = "standalone-admin-key-0123"


def put_configs(g: Gateway, doc: dict[str, Any], digest: str) -> requests.Response:
    headers = {"X-API-KEY": KEY, "X-Digest": digest}
    return requests.put(g.admin_url("/configs"), data=json.dumps(doc), headers=headers, timeout=10)


def test_a_kept_standalone_document_naming_a_plugin_disabled_since_is_refused(
    tmp_path: Path, upstream: Upstream
) -> None:
    """PUT /apisix/admin/configs refuses unknown plugins; a document it accepted and kept on
    disk is refused object by object once config.yaml stops enabling a plugin it names."""
    rewrite = {"response-rewrite": {"headers": {"set": {"X-R": "1"}}}}
    doc = objects(upstream)
    doc["routes"][1]["plugins"] = rewrite
    doc["services"][0]["plugins"] = rewrite
    doc["plugin_configs"][0]["plugins"] = rewrite
    doc["consumers"][1]["plugins"] = {"key-auth": {"key": "jack-key"}} | rewrite
    doc["consumer_groups"][0]["plugins"] = rewrite
    doc["routes"] = [r for r in doc["routes"] if r["id"] not in ("not-enabled", "disabled")]
    doc["global_rules"] = [{"id": "gr", "plugins": {"request-id": {}}}]
    g = Gateway(tmp_path, config=API_DRIVEN | {"plugins": ENABLED}, admin_key=KEY)
    with g:
        r = put_configs(g, {"routes": [{"id": "x", "uri": "/x", "plugins": {"opa": {}}}]}, "x")
        assert r.status_code == 400
        assert r.json()["error_msg"] == "invalid routes at index 0, err: unknown plugin [opa]"
        assert put_configs(g, doc, "d1").status_code == 202
        wait_until(lambda: get(g, "/route").headers.get("X-R") == "1")
        g.stop()
        g.config["plugins"] = [n for n in ENABLED if n != "response-rewrite"]
        g.write_config()
        g.start()
        assert get(g, "/open").status_code == 200
        for path in ("/route", "/service", "/pconf"):
            assert_refused(get(g, path), "response-rewrite")
        assert get(g, "/consumer", "ok-key").status_code == 200
        assert_refused(get(g, "/consumer", "jack-key"), "response-rewrite")
        assert_refused(get(g, "/consumer", "grp-key"), "response-rewrite")
        assert config_status(g)["count"] == 5
        g.stop()
        g.config["plugins"] = [n for n in g.config["plugins"] if n != "request-id"]
        g.write_config()
        g.start()
        check_global_refusal_of(g, "request-id")
