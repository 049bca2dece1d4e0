"""The HealthManager and UpstreamMonitor with a fake prober and resolver: no sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from tests.support.wait import until

from tollway.config.source import KeyValue
from tollway.config.store import Store
from tollway.ipc import Dns, Health, ToWorker
from tollway.upstream import DnsError, HealthManager, Target, UpstreamMonitor
from tollway.upstream.dns import DnsCache
from tollway.upstream.probe import ProbeSpec
from tollway.upstream.sources import all_upstreams

ACTIVE = {"active": {"healthy": {"interval": 1}, "unhealthy": {"interval": 1}}}


def store_of(items: dict[str, Any], rev: int = 1) -> Store:
    store = Store()
    store.load(
        rev, [KeyValue(f"/apisix/{k}", json.dumps(v).encode(), 1, 1) for k, v in items.items()]
    )
    return store


class FakeProber:
    """Answers probes from a dict addr -> (outcome, status); records what was probed."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[str, int]] = {}
        self.probed: list[str] = []

    async def __call__(self, spec: ProbeSpec, target: Target) -> tuple[str, int]:
        self.probed.append(target.addr)
        return self.answers.get(target.addr, ("http", 200))


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())


def health_msgs(sent: list[ToWorker]) -> list[tuple[str, list[str]]]:
    return [(m.key, m.unhealthy) for m in sent if isinstance(m, Health)]


def test_checkers_come_from_config_and_probes_eject() -> None:
    async def body() -> None:
        sent: list[ToWorker] = []
        prober = FakeProber()
        prober.answers["10.0.0.2:80"] = ("tcp", 0)
        mgr = HealthManager(sent.append, prober=prober)
        store = store_of(
            {
                "upstreams/1": {"nodes": {"10.0.0.1:80": 1, "10.0.0.2:80": 1}, "checks": ACTIVE},
                "upstreams/2": {"nodes": {"10.0.0.3:80": 1}},
                "routes/r": {
                    "uri": "/",
                    "upstream": {"nodes": {"10.0.0.4:80": 1}, "checks": ACTIVE},
                },
            }
        )
        mgr.sync(all_upstreams(store), {}, full=True)
        assert sorted(mgr.checkers) == ["/apisix/routes/r", "/apisix/upstreams/1"]
        # First round right away, the second one interval later: 2 tcp failures.
        await until(lambda: health_msgs(sent) != [], timeout=3)
        assert health_msgs(sent) == [("/apisix/upstreams/1", ["10.0.0.2:80"])]
        assert mgr.table() == {"/apisix/upstreams/1": ["10.0.0.2:80"]}
        await mgr.aclose()

    run(body)


def test_removing_checks_stops_probes_and_clears_the_table() -> None:
    async def body() -> None:
        sent: list[ToWorker] = []
        prober = FakeProber()
        prober.answers["10.0.0.1:80"] = ("tcp", 0)
        mgr = HealthManager(sent.append, prober=prober)
        conf = {"nodes": {"10.0.0.1:80": 1, "10.0.0.2:80": 1}, "checks": ACTIVE}
        mgr.sync(all_upstreams(store_of({"upstreams/1": conf})), {}, full=True)
        await until(lambda: bool(mgr.table()))
        plain = store_of({"upstreams/1": {"nodes": conf["nodes"]}}, rev=2)
        mgr.sync(all_upstreams(plain), {}, full=True)
        assert mgr.checkers == {}
        assert health_msgs(sent)[-1] == ("/apisix/upstreams/1", [])
        n = len(prober.probed)
        await asyncio.sleep(1.2)
        assert len(prober.probed) == n  # no more probes
        await mgr.aclose()

    run(body)


def test_passive_reports_and_timed_recovery() -> None:
    async def body() -> None:
        sent: list[ToWorker] = []
        mgr = HealthManager(sent.append, recover_after=0.2)
        conf = {
            "nodes": {"10.0.0.1:80": 1, "10.0.0.2:80": 1},
            "checks": {"passive": {"unhealthy": {"http_failures": 2}}},
        }
        mgr.sync(all_upstreams(store_of({"upstreams/1": conf})), {}, full=True)
        key = "/apisix/upstreams/1"
        mgr.passive([[key, "10.0.0.2:80", "http", 500], [key, "10.0.0.1:80", "http", 200]])
        assert sent == []
        mgr.passive([[key, "10.0.0.2:80", "http", 500], ["/apisix/upstreams/9", "x", "tcp", 0]])
        assert health_msgs(sent) == [(key, ["10.0.0.2:80"])]
        t0 = asyncio.get_running_loop().time()
        await until(lambda: len(sent) == 2)
        assert health_msgs(sent)[1] == (key, [])
        assert asyncio.get_running_loop().time() - t0 >= 0.19
        await mgr.aclose()

    run(body)


class FakeResolver:
    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def resolve(self, name: str) -> tuple[list[str], float]:
        if name not in self.table:
            raise DnsError(name)
        return self.table[name], 0.0


def test_monitor_resolves_names_and_retargets_checkers() -> None:
    async def body() -> None:
        sent: list[ToWorker] = []
        resolver = FakeResolver({"api.example": ["10.0.0.1"]})
        mon = UpstreamMonitor(
            sent.append, resolver=resolver, dns_cache=DnsCache(min_ttl=0.05, retry_min=0.05)
        )
        conf = {"nodes": {"api.example:80": 1}, "checks": {"passive": {}}}
        mon.sync(store_of({"upstreams/1": conf}))
        await until(lambda: any(isinstance(m, Dns) for m in sent))
        assert Dns({"api.example": ["10.0.0.1"]}) in sent
        addrs = [n["ip"] for n in mon.describe("/apisix/upstreams/1")[0]["nodes"]]
        assert addrs == ["10.0.0.1"]
        resolver.table["api.example"] = ["10.0.0.2", "10.0.0.1"]
        await until(lambda: len([m for m in sent if isinstance(m, Dns)]) == 2)
        addrs = [n["ip"] for n in mon.describe("/apisix/upstreams/1")[0]["nodes"]]
        assert addrs == ["10.0.0.1", "10.0.0.2"]
        greeting = mon.greeting()
        assert greeting[0] == Dns({"api.example": ["10.0.0.1", "10.0.0.2"]})
        await mon.aclose()

    run(body)


def test_removed_nodes_are_no_longer_probed() -> None:
    async def body() -> None:
        prober = FakeProber()
        mgr = HealthManager(lambda m: None, prober=prober)
        nodes = {"10.0.0.1:80": 1, "10.0.0.2:80": 1}
        mgr.sync(
            all_upstreams(store_of({"upstreams/1": {"nodes": nodes, "checks": ACTIVE}})),
            {},
            full=True,
        )
        await until(lambda: set(prober.probed) == set(nodes))
        mgr.sync(
            all_upstreams(
                store_of({"upstreams/1": {"nodes": {"10.0.0.1:80": 1}, "checks": ACTIVE}})
            ),
            {},
            full=True,
        )
        prober.probed.clear()
        await until(lambda: len(prober.probed) >= 2, timeout=3)
        assert set(prober.probed) == {"10.0.0.1:80"}
        await mgr.aclose()

    run(body)


def test_disable_upstream_healthcheck_runs_no_checker() -> None:
    # APISIX healthcheck-global-switch.t: apisix.disable_upstream_healthcheck
    async def body() -> None:
        sent: list[ToWorker] = []
        mgr = HealthManager(sent.append, prober=FakeProber(), enabled=False)
        store = store_of(
            {"upstreams/1": {"nodes": {"10.0.0.1:80": 1}, "checks": ACTIVE}},
        )
        mgr.sync(all_upstreams(store), {}, full=True)
        assert mgr.checkers == {} and mgr.describe() == []
        await mgr.aclose()

    run(body)
