"""The worker's compiled config at scale (issue #17): a lean store, shared compiled pieces,
service and plugin-config changes that recompile only the routes using them."""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from pathlib import Path
from typing import Any

from tollway.config.source import KeyValue
from tollway.config.store import LeanRouteItem, Store
from tollway.plugins.registry import load_registry
from tollway.runtime.compiled import NO_PLUGINS, CompiledRoute, FullRoute
from tollway.runtime.compiler import Compiler
from tollway.settings import default_settings

UP = {"nodes": {"10.0.0.1:80": 1, "10.0.0.2:80": 1}}
CHECKED = {**UP, "checks": {"passive": {"unhealthy": {"http_failures": 2}}}}


def kv(key: str, value: Any, rev: int) -> KeyValue:
    return KeyValue(f"/apisix/{key}", None if value is None else json.dumps(value).encode(), rev, 1)


def loaded(items: dict[str, Any]) -> tuple[Store, Compiler]:
    store = Store(lean=True)
    store.load(1, [kv(k, v, 1) for k, v in items.items()])
    comp = Compiler(default_settings(Path("/tmp/conf")), load_registry())
    asyncio.run(comp.rebuild(store))
    return store, comp


def apply(store: Store, comp: Compiler, rev: int, items: dict[str, Any]) -> None:
    store.apply(rev, [kv(k, v, rev) for k, v in items.items()])
    comp.apply(store, store.last_changes)


def test_equal_inline_upstreams_are_one_compiled_object_unless_checked() -> None:
    _, comp = loaded(
        {
            "routes/1": {"uri": "/a", "upstream": UP},
            "routes/2": {"uri": "/b", "upstream": UP},
            "routes/3": {"uri": "/c", "upstream": {"nodes": {"10.0.0.3:80": 1}}},
            "routes/4": {"uri": "/d", "upstream": CHECKED},
            "routes/5": {"uri": "/e", "upstream": CHECKED},
            "routes/6": {"uri": "/f", "methods": ["GET", "POST"], "upstream": UP},
            "routes/7": {"uri": "/g", "methods": ["POST", "GET"], "upstream": UP},
        }
    )
    r = comp.routes
    assert r["1"].upstream is r["2"].upstream is not None
    assert r["3"].upstream is not r["1"].upstream
    # health checks report by the route's key: each checked route keeps its own
    assert r["4"].upstream is not r["5"].upstream
    assert r["4"].upstream is not None and r["4"].upstream.key == "/apisix/routes/4"
    assert r["1"].plugins == {} and r["1"].plugins is r["2"].plugins


def test_a_service_change_recompiles_exactly_the_routes_using_it() -> None:
    store, comp = loaded(
        {
            "services/s": {"upstream": UP, "plugins": {"proxy-rewrite": {"uri": "/v1"}}},
            "routes/1": {"uri": "/a", "service_id": "s"},
            "routes/2": {"uri": "/b", "service_id": "s"},
            "routes/3": {"uri": "/c", "upstream": UP},
        }
    )
    before = dict(comp.routes)
    assert before["1"].upstream is before["2"].upstream  # the service's one upstream
    apply(
        store,
        comp,
        2,
        {"services/s": {"upstream": UP, "plugins": {"proxy-rewrite": {"uri": "/v2"}}}},
    )
    after = comp.routes
    assert after["3"] is before["3"]
    for rid in ("1", "2"):
        assert after[rid] is not before[rid]
        assert after[rid].plugins["proxy-rewrite"] == {"uri": "/v2"}
    # route 2 leaves the service: a later service change no longer touches it
    apply(store, comp, 3, {"routes/2": {"uri": "/b", "upstream": UP}})
    moved = comp.routes["2"]
    apply(store, comp, 4, {"services/s": {"upstream": UP}})
    assert comp.routes["2"] is moved and "proxy-rewrite" not in comp.routes["1"].plugins
    # a deleted route is forgotten by the index too
    apply(store, comp, 5, {"routes/1": None})
    apply(store, comp, 6, {"services/s": {"upstream": UP, "plugins": {}}})
    assert "1" not in comp.routes


def test_a_route_that_does_not_decode_is_skipped_not_fatal() -> None:
    store = Store(lean=True)
    # the supervisor validated it; a worker of another version might still not decode it
    store.load(
        1,
        [
            KeyValue("/apisix/routes/1", b'{"uri": 5}', 1, 1),
            kv("routes/2", {"uri": "/b", "upstream": UP}, 1),
        ],
    )
    comp = Compiler(default_settings(Path("/tmp/conf")), load_registry())
    asyncio.run(comp.rebuild(store))
    assert list(comp.routes) == ["2"]


def test_a_compiled_route_keeps_a_digest_and_a_reload_still_sees_what_changed() -> None:
    items = {
        "services/s": {"upstream": UP},
        "routes/1": {"uri": "/a", "upstream": UP},
        "routes/2": {"uri": "/b", "service_id": "s"},
    }
    store, comp = loaded(items)
    routes = store["routes"].items
    raw_1 = json.dumps(items["routes/1"]).encode()
    # route 1 changes only with its own bytes: a digest is enough; route 2 is recompiled when
    # its service changes, so it keeps its bytes
    assert routes["1"].settled and routes["1"].raw != raw_1
    assert not routes["2"].settled
    first = comp.routes["1"]
    # a full reload with the same bytes changes nothing (and settles route 1 again)
    store.load(2, [kv(k, v, 1) for k, v in items.items()])
    asyncio.run(comp.load(store, first=False))
    assert comp.routes["1"] is first and routes["1"].settled
    # a full reload with new bytes recompiles it
    changed = {**items, "routes/1": {"uri": "/z", "upstream": UP}}
    store.load(3, [kv(k, v, 3 if k == "routes/1" else 1) for k, v in changed.items()])
    asyncio.run(comp.load(store, first=False))
    assert comp.routes["1"] is not first
    assert comp.runtime.router.match(Req("/z")) is not None
    # a reordering reload rebuilds everything from the bytes the load brings back
    store.load(4, [kv(k, v, 3) for k, v in reversed(list(changed.items()))])
    asyncio.run(comp.load(store, first=False))
    assert comp.runtime.router.match(Req("/z")) is not None
    assert comp.runtime.router.match(Req("/b")) is not None


class Req:
    method = "GET"
    host = "example.com"
    remote_addr = "127.0.0.1"

    def __init__(self, path: str) -> None:
        self.path = path

    def var(self, name: str) -> Any:
        return None


def test_one_route_change_at_scale_recompiles_that_route_only() -> None:
    items = {f"routes/{i}": {"uri": f"/r/{i}/*", "upstream": UP} for i in range(3000)}
    store, comp = loaded(items)
    router, before = comp.runtime.router, dict(comp.routes)
    apply(store, comp, 2, {"routes/7": {"uri": "/moved/*", "upstream": UP}})
    assert comp.runtime.router is router  # patched in place, not rebuilt
    changed = [rid for rid, cr in comp.routes.items() if cr is not before[rid]]
    assert changed == ["7"]
    assert comp.routes["7"].upstream is before["8"].upstream  # still the one shared upstream
    assert comp.runtime.router.match(Req("/moved/x")) is not None
    assert comp.runtime.router.match(Req("/r/7/x")) is None


def test_plain_routes_are_compact_and_the_others_keep_every_field() -> None:
    store, comp = loaded(
        {
            "services/s": {"upstream": UP},
            "routes/1": {"uri": "/a", "name": "a", "hosts": ["A.example.com"], "upstream": UP},
            "routes/2": {"uri": "/b", "plugins": {"proxy-rewrite": {"uri": "/x"}}, "upstream": UP},
            "routes/3": {"uri": "/c", "service_id": "s"},
            "routes/4": {"uri": "/d", "enable_websocket": True, "upstream": UP},
            "routes/5": {
                "uri": "/e",
                "timeout": {"connect": 1, "send": 1, "read": 1},
                "upstream": UP,
            },
        }
    )
    r = comp.routes
    assert type(r["1"]) is CompiledRoute  # 8 slots: no plugin, service, timeout, websocket
    assert (r["1"].id, r["1"].name, r["1"].uri, r["1"].hosts) == (
        "1",
        "a",
        "/a",
        ("a.example.com",),
    )
    assert r["1"].key == "/apisix/routes/1" and r["1"].error == 0 and r["1"].timeouts is None
    assert all(type(r[i]) is FullRoute for i in "2345")
    assert "proxy-rewrite" in r["2"].plugins and r["3"].service_id == "s"
    assert r["4"].enable_websocket and r["5"].timeouts is not None
    # evolve keeps every field, and a route that gains plugins becomes a FullRoute
    moved = r["1"].evolve(plugins={"x": {}})
    assert type(moved) is FullRoute and moved.plugins == {"x": {}} and moved.hosts == r["1"].hosts
    assert type(moved.evolve(plugins=NO_PLUGINS)) is CompiledRoute
    # the router holds each as its payload; the Compiler has no dict of its own
    assert set(r) == {"1", "2", "3", "4", "5"} and len(r) == 5
    apply(store, comp, 2, {"routes/2": None})
    assert "2" not in comp.routes and len(comp.routes) == 4


def test_a_lean_store_keeps_a_small_item_per_route_and_drops_the_load_s_changes() -> None:
    store = Store("/custom", lean=True)
    value = json.dumps({"uri": "/a", "upstream": UP}).encode()
    store.load_rows(5, [("/custom/routes/1", value, 5, 0)])
    item = store["routes"].get("1")
    assert isinstance(item, LeanRouteItem) and item.key == "/custom/routes/1"
    assert item.kind == "routes" and item.obj is None and item.create_revision == 0
    assert item.settled and len(item.raw) == 8  # a digest, not the bytes
    assert store.last_changes == [("routes", "1", "/custom/routes/1")]
    store.release()
    assert store.last_changes == []
    # the same bytes again: nothing changed; other bytes: a change
    store.load_rows(6, [("/custom/routes/1", value, 5, 0)])
    assert store.last_changes == [] and store["routes"].get("1") is item
    store.load_rows(7, [("/custom/routes/1", value.replace(b"/a", b"/b"), 7, 0)])
    assert store.last_changes == [("routes", "1", "/custom/routes/1")]


def test_the_compiled_form_stays_under_its_memory_budget() -> None:
    """Bytes kept per route by the worker's Store, Compiler and router (tracemalloc, the load's
    buffer released), 3,000 routes like bench/router_churn.py's: 838 since the compact forms,
    1,261 before them (RouteSpec kept, Compiler.routes, a 9-field Item per route...)."""
    n = 3000
    rows = []
    for i in range(n):
        k = i % 10
        route: dict[str, Any] = {"uri": f"/svc{i}/v1/items", "upstream": UP}
        if 4 <= k < 7:
            route["uri"] = f"/p{i}/api/*"
        elif k >= 7:
            route.update(uri=f"/h{i}/*", host=f"h{i}.example.com")
        rows.append((f"/apisix/routes/{i}", json.dumps(route).encode(), 100_000 + i, 0))
    comp = Compiler(default_settings(Path("/tmp/conf")), load_registry())
    asyncio.run(comp.rebuild(Store(lean=True)))  # the first build's one-off allocations
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = Store(lean=True)
        store.load_rows(n, rows)
        asyncio.run(comp.rebuild(store))
        store.release()
        gc.collect()
        per_route = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert 300 < per_route < 950, per_route
