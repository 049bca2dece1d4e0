"""A change batch publishes a new Runtime; the one a request holds never changes (issue #12)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tollway.config.source import KeyValue
from tollway.config.store import Store
from tollway.plugins.registry import load_registry
from tollway.runtime.compiler import Compiler
from tollway.settings import default_settings

UP_A = {"nodes": {"10.0.0.1:80": 1}}
UP_B = {"nodes": {"10.0.0.2:80": 1}}


def kv(key: str, value: Any, rev: int) -> KeyValue:
    return KeyValue(f"/apisix/{key}", json.dumps(value).encode(), rev, 1)


def loaded(items: dict[str, Any]) -> tuple[Store, Compiler]:
    store = Store()
    store.load(1, [kv(k, v, 1) for k, v in items.items()])
    comp = Compiler(default_settings(Path("/tmp/conf")), load_registry())
    asyncio.run(comp.rebuild(store))
    return store, comp


class Req:
    """What the router reads of a request."""

    method = "GET"
    host = "example.com"
    remote_addr = "127.0.0.1"

    def __init__(self, path: str) -> None:
        self.path = path

    def var(self, name: str) -> Any:
        return None


def confs(chain: Any) -> dict[str, Any]:
    return {e.plugin.name: e.conf for e in chain.rewrite + chain.access + chain.header_filter}


def test_upstream_and_plugin_config_changes_leave_the_held_runtime_alone() -> None:
    store, comp = loaded(
        {
            "upstreams/u": UP_A,
            "plugin_configs/p": {"plugins": {"proxy-rewrite": {"uri": "/old"}}},
            "routes/1": {"uri": "/a", "upstream_id": "u", "plugin_config_id": "p"},
            "routes/2": {"uri": "/b", "upstream": UP_A},
        }
    )
    held = comp.runtime
    match = held.router.match(Req("/a"))
    assert match is not None
    route = match.payload
    for rev, (key, value) in enumerate(
        [
            ("upstreams/u", UP_B),
            ("plugin_configs/p", {"plugins": {"proxy-rewrite": {"uri": "/new"}}}),
            ("global_rules/g", {"plugins": {"response-rewrite": {"body": "g"}}}),
        ],
        start=2,
    ):
        store.apply(rev, [kv(key, value, rev)])
        comp.apply(store, store.last_changes)
    new = comp.runtime
    assert new is not held and new.revision == 4 and held.revision == 1
    # what the request holds: the old upstream, the old conf, no global rule
    assert held.upstream_by_id("u") is not None
    assert held.upstreams["u"].servers[0].host == "10.0.0.1"
    assert confs(route.chain)["proxy-rewrite"].uri == "/old"
    assert "response-rewrite" not in confs(route.chain)
    assert not held.global_chain.header_filter
    # what a new request gets
    assert new.upstreams["u"].servers[0].host == "10.0.0.2"
    now = new.router.match(Req("/a"))
    assert now is not None and now.payload is not route
    assert confs(now.payload.chain)["proxy-rewrite"].uri == "/new"
    assert "response-rewrite" in confs(now.payload.chain)
    # route 2 was not touched: its compiled route was re-chained for the new global rule, its
    # upstream is shared with the previous runtime (structural sharing)
    b = new.router.match(Req("/b"))
    assert b is not None and b.payload.upstream is comp.routes["2"].upstream
    assert "response-rewrite" in confs(b.payload.chain)


def test_unrelated_changes_share_unchanged_parts() -> None:
    store, comp = loaded({"upstreams/u": UP_A, "upstreams/v": UP_B, "routes/1": {"uri": "/a"}})
    held = comp.runtime
    store.apply(2, [kv("upstreams/v", UP_A, 2)])
    comp.apply(store, store.last_changes)
    new = comp.runtime
    assert new.upstreams["u"] is held.upstreams["u"]  # unchanged: the same object
    assert new.upstreams["v"] is not held.upstreams["v"]
    assert held.upstreams["v"].servers[0].host == "10.0.0.2"
    assert new.consumers is held.consumers and new.certs is held.certs
    store.apply(3, [KeyValue("/apisix/upstreams/u", None, 3)])
    comp.apply(store, store.last_changes)
    assert "u" not in comp.runtime.upstreams and "u" in held.upstreams and "u" in new.upstreams


def test_consumer_change_gives_a_new_index_and_keeps_the_old() -> None:
    store, comp = loaded(
        {"consumers/jack": {"username": "jack", "plugins": {"key-auth": {"key": "k1"}}}}
    )
    held = comp.runtime
    assert held.consumers.find("key-auth", "k1") is not None
    store.apply(
        2, [kv("consumers/jack", {"username": "jack", "plugins": {"key-auth": {"key": "k2"}}}, 2)]
    )
    comp.apply(store, store.last_changes)
    assert comp.runtime.consumers.find("key-auth", "k2") is not None
    assert comp.runtime.consumers.find("key-auth", "k1") is None
    assert held.consumers.find("key-auth", "k1") is not None  # the request's index is intact


def test_load_patches_small_differences_and_rebuilds_large_ones() -> None:
    """The Compiler owns the full-versus-incremental decision of a (re)load."""
    store, comp = loaded({"routes/1": {"uri": "/a", "upstream": UP_A}})
    first_router = comp.runtime.router
    store.load(2, [kv("routes/1", {"uri": "/a", "upstream": UP_A}, 1), kv("routes/2",
               {"uri": "/b", "upstream": UP_A}, 2)])  # fmt: skip
    asyncio.run(comp.load(store, first=False))
    assert comp.runtime.router is first_router  # patched: the same router, updated
    assert comp.runtime.router.match(Req("/b")) is not None
    many = [kv(f"routes/r{i}", {"uri": f"/r{i}", "upstream": UP_A}, 3) for i in range(501)]
    store.load(3, many)
    asyncio.run(comp.load(store, first=False))
    assert comp.runtime.router is not first_router  # more than 500 changes: a new router
    assert comp.runtime.router.match(Req("/r500")) is not None
    assert comp.runtime.router.match(Req("/a")) is None and comp.runtime.revision == 3
    # the first load of a worker is always a full build
    store.load(4, many[:1])
    before = comp.runtime.router
    asyncio.run(comp.load(store, first=True))
    assert comp.runtime.router is not before


def test_plugin_metadata_is_part_of_the_runtime() -> None:
    store, comp = loaded({"plugin_metadata/cors": {"allow_origins": {"k": "http://a.example"}}})
    held = comp.runtime
    assert held.plugin_metadata["cors"].allow_origins == {"k": "http://a.example"}
    store.apply(2, [kv("plugin_metadata/cors", {"allow_origins": {"k": "http://b.example"}}, 2)])
    comp.apply(store, store.last_changes)
    changed = comp.runtime
    assert changed.plugin_metadata["cors"].allow_origins == {"k": "http://b.example"}
    assert held.plugin_metadata["cors"].allow_origins == {"k": "http://a.example"}  # untouched
    store.apply(3, [KeyValue("/apisix/plugin_metadata/cors", None, 3)])
    comp.apply(store, store.last_changes)
    assert "cors" not in comp.runtime.plugin_metadata
    assert changed.plugin_metadata["cors"].allow_origins == {"k": "http://b.example"}
    # an invalid item is not the plugin's metadata (logged; APISIX: ignored)
    store.apply(4, [kv("plugin_metadata/cors", {"allow_origins": "not a map"}, 4)])
    comp.apply(store, store.last_changes)
    assert "cors" not in comp.runtime.plugin_metadata
