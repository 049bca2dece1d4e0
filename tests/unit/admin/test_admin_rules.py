"""Id rules, forbidden fields, URL parsing, delete protection and duplicate auth keys."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tollway.admin import deletion
from tollway.admin.resource import (
    AdminError,
    assign_id,
    forbidden_property,
    parse_target,
)
from tollway.admin.validators import find_duplicate_key, valid_id
from tollway.config.source import KeyValue
from tollway.config.store import Store


def test_assign_id_put() -> None:
    assert assign_id("route", "1", {}, need_id=True) == "1"
    assert assign_id("route", None, {"id": 5}, need_id=True) == 5
    assert assign_id("route", "5", {"id": 5}, need_id=True) == "5"  # the URL's string wins
    with pytest.raises(AdminError) as e:
        assign_id("route", None, {}, need_id=True)
    assert e.value.body == {"error_msg": "missing route id"}
    with pytest.raises(AdminError) as e:
        assign_id("route", "1", {"id": "2"}, need_id=True)
    assert e.value.body == {"error_msg": "wrong route id"}
    with pytest.raises(AdminError) as e:
        assign_id("route", "a b", {}, need_id=True)
    assert "object matches none of the required" in e.value.body["error_msg"]


def test_assign_id_post() -> None:
    assert assign_id("service", None, {}, need_id=False) is None
    for url, body in (("1", {}), (None, {"id": "1"})):
        with pytest.raises(AdminError) as e:
            assign_id("service", url, body, need_id=False)
        assert e.value.body == {"error_msg": "wrong service id, do not need it"}


@pytest.mark.parametrize("ok", ["1", "a-b_c.d", "x" * 64, 1, 10**12])
def test_valid_ids(ok: Any) -> None:
    assert valid_id(ok)


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, 0, -1, True, 1.5, None, "é"])
def test_invalid_ids(bad: Any) -> None:
    assert not valid_id(bad)


def test_forbidden_property() -> None:
    assert forbidden_property({"create_time": 1}) == "the property is forbidden:  create_time"
    assert forbidden_property({"upstream": {"update_time": None}}) == (
        "the property is forbidden:  upstream.update_time"
    )
    assert forbidden_property({"plugins": {"create_time": {}}}) == (
        "the property is forbidden:  plugins.create_time"
    )
    assert forbidden_property({"uri": "/"}) is None
    assert forbidden_property([1]) is None


def test_parse_target() -> None:
    t = parse_target(["routes", "1", "upstream", "nodes"])
    assert t is not None and (t.rtype.name, t.item_id, t.sub_path) == (
        "routes",
        "1",
        "upstream/nodes",
    )
    t = parse_target(["consumers", "jack", "credentials", "c1"])
    assert t is not None and t.rtype.name == "credentials"
    assert (t.item_id, t.parent, t.own_id) == ("jack/credentials/c1", "jack", "c1")
    t = parse_target(["consumers", "jack", "credentials"])
    assert t is not None and t.item_id is None and t.parent == "jack"
    t = parse_target(["secrets", "vault", "1"])
    assert t is not None and (t.item_id, t.parent) == ("vault/1", "vault")
    assert parse_target(["nothing"]) is None
    assert parse_target(["credentials"]) is None


def store_with(items: dict[str, dict[str, Any]]) -> Store:
    s = Store("/apisix")
    kvs = [KeyValue(f"/apisix/{k}", msgspec.json.encode(v), 1, 1) for k, v in items.items()]
    s.load(2, kvs)
    return s


def test_delete_checks_name_the_referrer() -> None:
    up = {"nodes": {"1.1.1.1:80": 1}}
    s = store_with(
        {
            "upstreams/u1": up,
            "upstreams/u2": up,
            "services/s1": {"upstream_id": "u1"},
            "routes/r1": {"uri": "/", "service_id": "s1", "plugin_config_id": "pc"},
            "plugin_configs/pc": {"plugins": {}},
            "global_rules/g": {
                "plugins": {
                    "traffic-split": {"rules": [{"weighted_upstreams": [{"upstream_id": "u2"}]}]}
                }
            },
            "consumer_groups/cg": {"plugins": {}},
            "consumers/jack": {"username": "jack", "group_id": "cg"},
        }
    )
    assert deletion.upstream_in_use(s, "u1") == (
        "can not delete this upstream, service [s1] is still using it now"
    )
    assert deletion.upstream_in_use(s, "u2") == (
        "can not delete this upstream, plugin in global_rules [g] is still using it now"
    )
    assert deletion.upstream_in_use(s, "u3") is None
    assert deletion.service_in_use(s, "s1") == (
        "can not delete this service directly, route [r1] is still using it now"
    )
    assert deletion.plugin_config_in_use(s, "pc") == (
        "can not delete this plugin config, route [r1] is still using it now"
    )
    assert deletion.consumer_group_in_use(s, "cg") == (
        "can not delete this consumer group, consumer [jack] is still using it now"
    )


def test_duplicate_auth_keys() -> None:
    s = store_with(
        {
            "consumers/jack": {"username": "jack", "plugins": {"key-auth": {"key": "k1"}}},
            "consumers/rose": {"username": "rose"},
            "consumers/rose/credentials/c1": {"plugins": {"key-auth": {"key": "k2"}}},
        }
    )
    plugins = {"key-auth": {"key": "k1"}}
    assert find_duplicate_key(s, plugins, username="jack") is None
    assert find_duplicate_key(s, plugins, username="tom") == ("key-auth", "jack")
    k2 = {"key-auth": {"key": "k2"}}
    assert find_duplicate_key(s, k2, username="rose") is None
    assert find_duplicate_key(s, k2, username="rose", credential="c1") is None
    assert find_duplicate_key(s, k2, username="rose", credential="c2") == ("key-auth", "rose")
    assert find_duplicate_key(s, {"basic-auth": {"username": "k1"}}, username="x") is None
