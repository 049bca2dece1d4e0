"""Domain nodes in the workers: expansion, compiled upstreams, recompiles on new answers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec

from tollway.balancer import BalancerState, PickContext, Server
from tollway.config.source import KeyValue
from tollway.config.store import Store
from tollway.model import Upstream
from tollway.plugins.registry import load_registry
from tollway.runtime import CompiledUpstream, Compiler
from tollway.settings import default_settings
from tollway.upstream import HealthTable, domain_names, expand, is_ip
from tollway.upstream.pool import PoolLimits

LIMITS = PoolLimits(320, 60, 1000)


def test_is_ip() -> None:
    assert is_ip("10.0.0.1") and is_ip("[::1]") and is_ip("[fe80::1]")
    assert not is_ip("localhost") and not is_ip("1.example") and not is_ip("[bogus]")


def test_domain_names_skip_ips_and_localhost() -> None:
    assert domain_names(["10.0.0.1", "LocalHost", "API.example", "[::1]"]) == {"api.example"}


def test_expand() -> None:
    servers = [
        Server("api.example", 8080, 3, 1),
        Server("10.0.0.9", 80, 1),
        Server("localhost", 81, 1),
        Server("gone.invalid", 80, 1),
        Server("new.example", 80, 1),
    ]
    ex = expand(servers, {"api.example": ("10.0.0.1", "fe80::1"), "gone.invalid": ()})
    assert ex.servers == [
        Server("10.0.0.1", 8080, 3, 1),
        Server("[fe80::1]", 8080, 3, 1),
        Server("10.0.0.9", 80, 1),
        Server("127.0.0.1", 81, 1),
        Server("new.example", 80, 1),  # not looked up yet: kept as written
    ]
    assert ex.node_hosts == {
        "10.0.0.1:8080": "api.example",
        "[fe80::1]:8080": "api.example",
        "127.0.0.1:81": "localhost",
    }
    assert ex.names == {"api.example", "gone.invalid", "new.example"}


def upstream(conf: dict[str, Any]) -> Upstream:
    return msgspec.convert(conf, Upstream)


def test_compiled_upstream_without_checks_has_no_health_lookup() -> None:
    table = HealthTable()
    up = CompiledUpstream(
        "/apisix/upstreams/1",
        1,
        upstream({"nodes": {"10.0.0.1:80": 1, "10.0.0.2:80": 1}}),
        BalancerState(),
        LIMITS,
        health=table,
    )
    table.update("/apisix/upstreams/1", ["10.0.0.1:80"])
    assert up.passive is None and up.node_hosts is None
    assert up.picker is not None
    picks = {up.picker.pick(PickContext()).addr for _ in range(10)}  # type: ignore[union-attr]
    assert picks == {"10.0.0.1:80", "10.0.0.2:80"}


def test_compiled_upstream_reads_health_live() -> None:
    table = HealthTable()
    conf = upstream({"nodes": {"10.0.0.1:80": 1, "10.0.0.2:80": 1}, "checks": {"passive": {}}})
    up = CompiledUpstream("k", 1, conf, BalancerState(), LIMITS, health=table)
    assert up.picker is not None
    table.update("k", ["10.0.0.1:80"])
    assert {up.picker.pick(PickContext()).addr for _ in range(10)} == {"10.0.0.2:80"}  # type: ignore[union-attr]
    table.update("k", [])
    assert len({up.picker.pick(PickContext()).addr for _ in range(10)}) == 2  # type: ignore[union-attr]


def test_compiled_upstream_expands_domains() -> None:
    conf = upstream({"nodes": {"api.example:8080": 1}, "pass_host": "node"})
    up = CompiledUpstream(
        "k", 1, conf, BalancerState(), LIMITS, answers={"api.example": ("10.0.0.1", "10.0.0.2")}
    )
    assert [s.addr for s in up.servers] == ["10.0.0.1:8080", "10.0.0.2:8080"]
    assert up.single is None and up.retries == 1
    assert up.node_hosts == {"10.0.0.1:8080": "api.example", "10.0.0.2:8080": "api.example"}
    gone = CompiledUpstream("k", 1, conf, BalancerState(), LIMITS, answers={"api.example": ()})
    assert gone.servers == []  # the proxy answers 503


def test_compiler_recompiles_upstreams_using_a_changed_name() -> None:
    items = {
        "upstreams/1": {"nodes": {"api.example:80": 1}},
        "upstreams/2": {"nodes": {"10.0.0.5:80": 1}},
        "routes/r": {"uri": "/r", "upstream": {"nodes": {"api.example:81": 1}}},
        "routes/s": {"uri": "/s", "upstream": {"nodes": {"10.0.0.6:80": 1}}},
    }
    store = Store()
    store.load(
        1, [KeyValue(f"/apisix/{k}", json.dumps(v).encode(), 1, 1) for k, v in items.items()]
    )
    comp = Compiler(default_settings(Path("/tmp/conf")), load_registry())
    comp.apply_dns({"api.example": ["10.0.0.1"]})  # before the first load (worker greeting)
    asyncio.run(comp.rebuild(store))
    rt = comp.runtime
    assert [s.addr for s in rt.upstreams["1"].servers] == ["10.0.0.1:80"]
    before_2 = rt.upstreams["2"]
    before_s = comp.routes["s"].upstream
    before_r = comp.routes["r"]
    assert comp.apply_dns({"api.example": ["10.0.0.1"]}) == 0  # same answer: nothing to do
    assert comp.runtime is rt
    assert comp.apply_dns({"api.example": ["10.0.0.7", "10.0.0.8"]}) == 2
    new = comp.runtime
    assert new is not rt  # a new runtime, published by one swap
    assert [s.addr for s in new.upstreams["1"].servers] == ["10.0.0.7:80", "10.0.0.8:80"]
    r_up = comp.routes["r"].upstream
    assert r_up is not None and [s.addr for s in r_up.servers] == ["10.0.0.7:81", "10.0.0.8:81"]
    assert new.upstreams["2"] is before_2 and comp.routes["s"].upstream is before_s  # shared
    # the runtime and route a request already holds are unchanged
    assert [s.addr for s in rt.upstreams["1"].servers] == ["10.0.0.1:80"]
    assert before_r.upstream is not None
    assert [s.addr for s in before_r.upstream.servers] == ["10.0.0.1:81"]
