"""The worker's compiled config at scale (issue #17): a lean store, shared compiled pieces,
service and plugin-config changes that recompile only the routes using them."""

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
