"""Fail closed on plugins the gateway cannot run: refusing chains, the config agent's checker and
the count of such items (issue #11)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tollway.checks import ItemChecker, UnknownPluginItems
from tollway.config.source import KeyValue
from tollway.config.store import Store
from tollway.errors import ConfigError
from tollway.plugins.kit import Consumer
from tollway.plugins.registry import Chain, load_registry
from tollway.runtime.compiler import Compiler
from tollway.settings import LoadedSettings, default_settings

REGISTRY = load_registry()
NODES = {"nodes": {"127.0.0.1:1": 1}}


def settings(action: str = "refuse", provider: str = "etcd") -> LoadedSettings:
    base = default_settings(Path("/tmp/conf"))
    tollway = msgspec.structs.replace(base.conf.tollway, unknown_plugins=action)
    conf = msgspec.structs.replace(base.conf, tollway=tollway)
    return dataclasses.replace(base, conf=conf, config_provider=provider)


def kvs(items: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(f"/apisix/{k}", json.dumps(v).encode(), 1, 1) for k, v in items.items()]


def compile_(items: dict[str, Any], action: str = "refuse") -> tuple[Store, Compiler]:
    store = Store()
    store.load(1, kvs(items))
    comp = Compiler(settings(action), REGISTRY)
    asyncio.run(comp.rebuild(store))
    return store, comp


def refused(chain: Chain) -> tuple[int, dict[str, Any], dict[str, str]]:
    """What the chain's one request-phase entry answers."""
    assert chain.refusal is not None
    assert len(chain.rewrite) == 1 and not chain.access and not chain.before_proxy
    entry = chain.rewrite[0]
    status, body, headers = entry.fn(entry.conf, None)
    return status, json.loads(body), headers


# -- the registry ------------------------------------------------------------------------------


def test_an_unknown_plugin_makes_a_refusing_chain() -> None:
    chain = REGISTRY.build_chain({"opa": {}, "limit-conn": {"conn": 1, "burst": 0,
                                  "default_conn_delay": 0.1, "key": "remote_addr"}})  # fmt: skip
    status, body, headers = refused(chain)
    assert status == 503 and headers == {"Content-Type": "application/json"}
    assert body == {
        "error_msg": "plugin [opa] is unknown or not enabled on this gateway: "
        "the request is refused rather than served without it"
    }
    # the known plugins of a refused chain never run: limit-conn's log would release a
    # connection its access phase never counted
    assert not chain.log and not chain.header_filter and chain.names == frozenset()


def test_refusal_names_every_plugin_and_an_invalid_conf() -> None:
    chain = REGISTRY.build_chain({"opa": {}, "cas-auth": {}, "key-auth": {"header": 5}})
    assert chain.refusal is not None
    assert chain.refusal.unknown == ("cas-auth", "opa") and chain.refusal.invalid == ("key-auth",)
    assert refused(chain)[1]["error_msg"] == (
        "plugins [cas-auth, opa] are unknown or not enabled; plugin [key-auth] has an invalid "
        "configuration on this gateway: the request is refused rather than served without them"
    )


def test_an_invalid_conf_refuses_even_when_unknown_plugins_are_skipped() -> None:
    chain = REGISTRY.build_chain({"key-auth": {"header": 5}}, refuse_unknown=False)
    assert chain.refusal is not None and chain.refusal.invalid == ("key-auth",)


def test_skip_and_disabled_leave_the_plugin_out() -> None:
    skipped = REGISTRY.build_chain({"opa": {}, "key-auth": {}}, refuse_unknown=False)
    assert skipped.refusal is None and skipped.names == frozenset({"key-auth"})
    disabled = REGISTRY.build_chain({"opa": {"_meta": {"disable": True}}, "key-auth": {}})
    assert disabled.refusal is None and disabled.names == frozenset({"key-auth"})


def test_a_refusing_chain_under_global_rules_keeps_their_response_phases() -> None:
    outer = REGISTRY.build_chain({"response-rewrite": {"headers": {"set": {"X-G": "1"}}}})
    chain = REGISTRY.build_chain({"opa": {}}).under(outer)
    assert chain.refusal is not None and chain.header_filter == outer.header_filter
    assert refused(chain)[0] == 503


# -- the compiler ------------------------------------------------------------------------------

OBJECTS: dict[str, Any] = {
    "services/s": {"upstream": NODES, "plugins": {"forward-auth": {}}},
    "plugin_configs/p": {"plugins": {"opa": {}}},
    "consumer_groups/g": {"plugins": {"cas-auth": {}}},
    "consumers/jack": {"username": "jack", "plugins": {"key-auth": {"key": "j"}, "wolf-rbac": {}}},
    "consumers/ok": {"username": "ok", "plugins": {"key-auth": {"key": "o"}}},
    "consumers/grp": {"username": "grp", "group_id": "g", "plugins": {"key-auth": {"key": "g"}}},
    "routes/open": {"uri": "/open", "upstream": NODES, "plugins": {"key-auth": {}}},
    "routes/route": {"uri": "/r", "upstream": NODES, "plugins": {"openid-connect": {}}},
    "routes/svc": {"uri": "/s", "service_id": "s"},
    "routes/pc": {"uri": "/p", "plugin_config_id": "p", "upstream": NODES},
}


def consumer(comp: Compiler, key: str) -> Consumer:
    found = comp.runtime.consumers.find("key-auth", key)
    assert found is not None
    return found


def test_compiled_routes_refuse_per_object_kind() -> None:
    _, comp = compile_(OBJECTS)
    routes = comp.routes
    assert routes["open"].chain.refusal is None
    assert refused(routes["route"].chain)[1]["error_msg"].startswith("plugin [openid-connect]")
    assert refused(routes["svc"].chain)[1]["error_msg"].startswith("plugin [forward-auth]")
    assert refused(routes["pc"].chain)[1]["error_msg"].startswith("plugin [opa]")
    open_ = routes["open"]
    assert comp.runtime.consumer_chain(open_, consumer(comp, "o")).refusal is None
    jack = comp.runtime.consumer_chain(open_, consumer(comp, "j"))
    assert refused(jack)[1]["error_msg"].startswith("plugin [wolf-rbac]")
    grp = comp.runtime.consumer_chain(open_, consumer(comp, "g"))
    assert refused(grp)[1]["error_msg"].startswith("plugin [cas-auth]")
    # the anonymous-consumer lookup sees the same plugins
    assert "wolf-rbac" in comp.runtime.consumers.by_name["jack"].plugins


def test_a_global_rule_refuses_and_skip_serves() -> None:
    items = OBJECTS | {"global_rules/1": {"plugins": {"authz-keycloak": {}}}}
    _, comp = compile_(items)
    assert refused(comp.runtime.global_chain)[1]["error_msg"].startswith("plugin [authz-keycloak]")
    _, skip = compile_(items, "skip")
    assert skip.runtime.global_chain.refusal is None
    assert all(r.chain.refusal is None for r in skip.routes.values())
    open_ = skip.routes["open"]
    assert skip.runtime.consumer_chain(open_, consumer(skip, "j")).refusal is None


def test_an_invalid_conf_is_warned_about_once_per_version(caplog: pytest.LogCaptureFixture) -> None:
    # a conf the validator would have rejected: only reachable when the worker's plugins differ
    items = {"routes/1": {"uri": "/a", "upstream": NODES, "plugins": {"key-auth": {"header": 5}}}}
    with caplog.at_level(logging.WARNING, "tollway.proxy"):
        store, comp = compile_(items)
        comp.apply(store, [("routes", "1", "/apisix/routes/1")])  # same version, compiled again
    assert refused(comp.routes["1"].chain)[0] == 503
    warned = [
        r for r in caplog.records if "invalid configuration of plugin(s) key-auth" in r.message
    ]
    assert len(warned) == 1 and "/apisix/routes/1" in warned[0].message


# -- the config agent's checker and the count ------------------------------------------------


@pytest.mark.parametrize(
    ("action", "provider", "strict"),
    [("refuse", "etcd", False), ("refuse", "yaml", False), ("skip", "etcd", False),
     ("skip", "yaml", True), ("skip", "json", True)],
)  # fmt: skip
def test_the_store_keeps_unknown_plugins_unless_apisix_would_not(
    action: str, provider: str, strict: bool
) -> None:
    checker = ItemChecker.for_store(REGISTRY, settings(action, provider))
    assert checker.strict is strict


def test_the_checker_warns_once_per_item_version(caplog: pytest.LogCaptureFixture) -> None:
    store = Store(checker=ItemChecker.for_store(REGISTRY, settings()))
    route = {"uri": "/a", "upstream": NODES, "plugins": {"opa": {}, "key-auth": {}}}
    with caplog.at_level(logging.WARNING, "tollway.config"):
        store.load(1, kvs({"routes/1": route}))
        store.load(2, kvs({"routes/1": route}))  # the same value: not checked again
        store.load(3, kvs({"routes/1": route | {"desc": "v2"}}))
    assert store["routes"].get("1") is not None and store.rejected == 0
    warned = [r.message for r in caplog.records if "routes/1 names plugin(s) opa" in r.message]
    assert len(warned) == 2
    assert warned[0].endswith("the requests it applies to are answered 503 (fail closed)")


def test_a_known_plugins_bad_conf_is_still_rejected() -> None:
    checker = ItemChecker.for_store(REGISTRY, settings())
    store = Store(checker=checker)
    store.load(1, kvs({"routes/1": {"uri": "/a", "plugins": {"key-auth": {"header": 5}}}}))
    assert store["routes"].get("1") is None and store.rejected == 1
    with pytest.raises(ConfigError, match=r"unknown plugin \[opa\]"):
        ItemChecker(REGISTRY, strict=True).check_plugins({"opa": {}})  # the Admin API's


def test_unknown_plugin_items_are_rescanned_only_when_their_kind_changes() -> None:
    store = Store()
    store.load(1, kvs(OBJECTS | {"consumers/ok/credentials/c1": {"plugins": {"ldap-auth": {}}}}))
    scan = UnknownPluginItems(REGISTRY)
    found = dict(scan(store))
    assert found == {
        "/apisix/routes/route": ["openid-connect"],
        "/apisix/services/s": ["forward-auth"],
        "/apisix/plugin_configs/p": ["opa"],
        "/apisix/consumers/jack": ["wolf-rbac"],
        "/apisix/consumer_groups/g": ["cas-auth"],
        "/apisix/consumers/ok/credentials/c1": ["ldap-auth"],
    }
    routes_scan = scan._cache["routes"][1]
    store.apply(2, kvs({"services/s": {"upstream": NODES}}))
    assert "/apisix/services/s" not in dict(scan(store))
    assert scan._cache["routes"][1] is routes_scan  # routes did not change: not scanned again
