"""Compiling routes: service / plugin_config merge rules and upstream precedence (APISIX §2.6)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tollway.config.source import KeyValue
from tollway.config.store import Store
from tollway.plugins.registry import load_registry
from tollway.runtime.compiler import Compiler
from tollway.settings import default_settings


def make(items: dict[str, object]) -> tuple[Store, Compiler]:
    store = Store()
    store.load(
        1, [KeyValue(f"/apisix/{k}", json.dumps(v).encode(), 1, 1) for k, v in items.items()]
    )
    comp = Compiler(default_settings(Path("/tmp/conf")), load_registry())
    asyncio.run(comp.rebuild(store))
    return store, comp


NODES = {"nodes": {"127.0.0.1:1": 1}}


def chain_confs(comp: Compiler, rid: str) -> dict[str, object]:
    chain = comp.routes[rid].chain
    return {e.plugin.name: e.conf for e in chain.rewrite + chain.header_filter}


def test_route_plugins_win_over_service_and_plugin_config() -> None:
    _, comp = make(
        {
            "services/s": {"plugins": {"proxy-rewrite": {"uri": "/svc"}, "response-rewrite": {"body": "s"}}},
            "plugin_configs/p": {"plugins": {"proxy-rewrite": {"uri": "/pc"}}},
            "routes/1": {
                "uri": "/a", "service_id": "s", "plugin_config_id": "p",
                "plugins": {"response-rewrite": {"body": "r"}},
            },
            "routes/2": {"uri": "/b", "service_id": "s", "plugin_config_id": "p"},
            "routes/3": {"uri": "/c", "service_id": "s"},
        }
    )  # fmt: skip
    c1 = chain_confs(comp, "1")
    assert c1["response-rewrite"].body == "r"  # type: ignore[attr-defined]
    assert c1["proxy-rewrite"].uri == "/pc"  # type: ignore[attr-defined]
    assert chain_confs(comp, "2")["proxy-rewrite"].uri == "/pc"  # type: ignore[attr-defined]
    assert chain_confs(comp, "3")["proxy-rewrite"].uri == "/svc"  # type: ignore[attr-defined]


def test_upstream_precedence() -> None:
    _, comp = make(
        {
            "upstreams/u": NODES,
            "services/s": {"upstream": {"nodes": {"10.0.0.1:80": 1}}},
            "services/t": {"upstream_id": "u"},
            "routes/1": {"uri": "/a", "upstream_id": "u", "upstream": NODES},
            "routes/2": {"uri": "/b", "service_id": "s"},
            "routes/3": {"uri": "/c", "service_id": "s", "upstream": NODES},
            "routes/4": {"uri": "/d", "service_id": "t"},
        }
    )
    routes = comp.routes
    assert routes["1"].upstream_id == "u" and routes["1"].upstream is None
    assert routes["2"].upstream is not None
    assert routes["2"].upstream.servers[0].host == "10.0.0.1"
    up3 = routes["3"].upstream
    assert up3 is not None and up3.key == "/apisix/routes/3"
    assert routes["4"].upstream_id == "u"


def test_missing_service_and_plugin_config() -> None:
    _, comp = make(
        {
            "routes/1": {"uri": "/a", "service_id": "nope"},
            "routes/2": {"uri": "/b", "plugin_config_id": "nope", "upstream": NODES},
        }
    )
    assert comp.routes["1"].error == 404
    assert comp.routes["2"].error == 503


def test_service_hosts_apply_when_the_route_has_none() -> None:
    store, comp = make(
        {
            "services/s": {"hosts": ["svc.example.com"], "upstream": NODES},
            "routes/1": {"uri": "/a", "service_id": "s"},
            "routes/2": {"uri": "/a", "service_id": "s", "hosts": ["Route.Example.com"]},
        }
    )

    class Req:
        method = "GET"
        path = "/a"
        remote_addr = "127.0.0.1"

        def __init__(self, host: str) -> None:
            self.host = host

        def var(self, name: str) -> object:
            return None

    m = comp.runtime.router.match(Req("svc.example.com"))
    assert m is not None and m.id == "1"
    m = comp.runtime.router.match(Req("route.example.com"))
    assert m is not None and m.id == "2"
    # An incremental change to the service reaches its routes.
    store.apply(
        2,
        [
            KeyValue(
                "/apisix/services/s",
                json.dumps({"hosts": ["new.example.com"], "upstream": NODES}).encode(),
                2,
                1,
            )
        ],
    )
    comp.apply(store, store.last_changes)
    assert comp.runtime.router.match(Req("svc.example.com")) is None
    assert comp.runtime.router.match(Req("new.example.com")) is not None


def test_global_rule_plugin_in_two_rules_is_dropped() -> None:
    _, comp = make(
        {
            "global_rules/1": {"plugins": {"response-rewrite": {"body": "a"}}},
            "global_rules/2": {
                "plugins": {"response-rewrite": {"body": "b"}, "proxy-rewrite": {"uri": "/x"}}
            },
        }
    )
    names = comp.runtime.global_chain.names
    assert names == frozenset({"proxy-rewrite"})


def test_consumer_chains_keep_the_routes_confs_and_are_built_once() -> None:
    _, comp = make(
        {
            "routes/1": {
                "uri": "/a",
                "plugins": {"key-auth": {}, "limit-count": {"count": 5, "time_window": 60}},
                "upstream": NODES,
            },
            "consumers/plain": {"username": "plain", "plugins": {"key-auth": {"key": "k1"}}},
            "consumers/more": {
                "username": "more",
                "plugins": {"key-auth": {"key": "k2"}, "proxy-rewrite": {"uri": "/m"}},
            },
        }
    )
    rt = comp.runtime
    route = comp.routes["1"]
    plain = rt.consumers.find("key-auth", "k1")
    more = rt.consumers.find("key-auth", "k2")
    assert plain is not None and more is not None
    # APISIX merge_consumer_route: a consumer with no plugin to add leaves the route as is
    assert rt.consumer_phases(route, plain) == (route.chain, ())
    chain, added = rt.consumer_phases(route, more)
    assert rt.consumer_phases(route, more)[0] is chain  # memoised
    assert [e.plugin.name for e in added] == ["proxy-rewrite"]
    # the route's limit-count conf is the same object (its counters stay the route's)
    (own,) = [e.conf for e in route.chain.access if e.plugin.name == "limit-count"]
    (merged,) = [e.conf for e in chain.access if e.plugin.name == "limit-count"]
    assert merged is own
