"""The one phase driver: plain calls until a plugin returns an awaitable, then a task from that
entry on (proxy/phases.py). The whole exchange runs on in-memory transports, as bench/hotpath.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from tollway.config.source import KeyValue
from tollway.config.store import Store
from tollway.plugins.kit import Plugin, RequestContext
from tollway.plugins.registry import Registry
from tollway.proxy.server import HttpProtocol
from tollway.proxy.state import ServerState
from tollway.runtime.compiler import Compiler
from tollway.settings import default_settings
from tollway.upstream.pool import UpstreamConnection

UP = ("127.0.0.1", 18390)


class Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.wrote = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.out.append(data)
        self.wrote.set()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 9080)}.get(name)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...


class Waits(Plugin):
    """Waits only when the request asks (``X-Wait``): sync otherwise."""

    name = "test-waits"
    priority = 100

    def __init__(self) -> None:
        self.gate: asyncio.Future[None] | None = None
        self.order: list[str] = []

    def access(self, conf: Any, ctx: RequestContext) -> Any:
        self.order.append("waits")
        if ctx.get_header("X-Wait") is None:
            return None
        return self._wait(ctx)

    async def _wait(self, ctx: RequestContext) -> None:
        assert self.gate is not None
        await self.gate
        ctx.set_request_header("X-Waited", "yes")


class After(Plugin):
    name = "test-after"
    priority = 50

    def __init__(self, order: list[str]) -> None:
        self.order = order

    def access(self, conf: Any, ctx: RequestContext) -> Awaitable[None] | None:
        self.order.append("after")
        ctx.set_request_header("X-After", "yes")
        return None


async def exchange() -> tuple[HttpProtocol, Transport, Waits]:
    waits = Waits()
    registry = Registry([waits, After(waits.order)])
    route = {
        "uri": "/x",
        "plugins": {"test-waits": {}, "test-after": {}},
        "upstream": {"nodes": {f"{UP[0]}:{UP[1]}": 1}},
    }
    store = Store()
    store.load(1, [KeyValue("/apisix/routes/1", json.dumps(route).encode(), 1, 1)])
    compiler = Compiler(default_settings(Path("/tmp/conf")), registry)
    await compiler.rebuild(store)
    state = ServerState(compiler, max_header_size=32768, max_body_size=0, keepalive_timeout=60)
    state.start(asyncio.get_running_loop())
    up = compiler.routes["1"].upstream
    assert up is not None
    conn = UpstreamConnection(state.pool, (up.pool_key, *UP))
    upstream = Transport()
    conn.connection_made(upstream)  # type: ignore[arg-type]
    state.pool.release(conn, up.limits)
    proto = HttpProtocol(state)
    proto.connection_made(Transport())  # type: ignore[arg-type]
    return proto, upstream, waits


def test_plugins_that_answer_at_once_run_without_a_task() -> None:
    async def run() -> None:
        proto, upstream, waits = await exchange()
        proto.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        ex = proto.active
        assert ex is not None and ex.task is None  # no task: plain calls to the upstream
        assert waits.order == ["waits", "after"]
        assert b"X-After: yes" in b"".join(upstream.out)

    asyncio.run(run())


def test_an_awaitable_hands_the_rest_of_the_phase_to_a_task() -> None:
    async def run() -> None:
        proto, upstream, waits = await exchange()
        waits.gate = asyncio.get_running_loop().create_future()
        proto.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Wait: 1\r\n\r\n")
        ex = proto.active
        assert ex is not None and ex.task is not None
        await asyncio.sleep(0)  # the task runs up to the plugin's await
        # the rest of the phase waits for the plugin: nothing went upstream yet
        assert waits.order == ["waits"] and upstream.out == []
        waits.gate.set_result(None)
        await asyncio.wait_for(upstream.wrote.wait(), 5)  # the task went on to the upstream
        head = b"".join(upstream.out)
        assert waits.order == ["waits", "after"]
        assert b"X-Waited: yes" in head and b"X-After: yes" in head

    asyncio.run(run())


# -- the drivers: every stage, filters, exits, waits, consumers, the 404 -------------


class Step(Plugin):
    """Does in each request phase what its conf says: ``pass``, ``exit`` (403), ``wait`` (an
    awaitable that lets the request on when ``gate`` is set), or ``wait-again`` (passes the
    first time in a request, waits the next: two equal entries in one stage). Every call is
    recorded as ``name:phase``."""

    def __init__(self, name: str, priority: int, order: list[str]) -> None:
        self.name = name
        self.priority = priority
        self.order = order
        self.gate: asyncio.Future[None] | None = None

    def _act(self, phase: str, conf: Any, ctx: RequestContext) -> Any:
        self.order.append(f"{self.name}:{phase}")
        action = conf.get(phase, "pass")
        if action == "exit":
            return 403, {"error_msg": f"{self.name} {phase}"}
        if action == "wait-again":
            if ctx.get_header("X-Seen") is None:
                ctx.set_request_header("X-Seen", "1")
                return None
            return self._wait()
        return self._wait() if action == "wait" else None

    async def _wait(self) -> None:
        assert self.gate is not None
        await self.gate

    def rewrite(self, conf: Any, ctx: RequestContext) -> Any:
        return self._act("rewrite", conf, ctx)

    def access(self, conf: Any, ctx: RequestContext) -> Any:
        return self._act("access", conf, ctx)

    def before_proxy(self, conf: Any, ctx: RequestContext) -> Any:
        return self._act("before_proxy", conf, ctx)


class Gateway:
    """The pipeline over in-memory transports, with two Step plugins (``a`` runs before
    ``b``) and key-auth, for routes, global rules and consumers given as APISIX items."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.a = Step("test-a", 20, self.order)
        self.b = Step("test-b", 10, self.order)
        self.client = Transport()
        self.upstream = Transport()
        self.conn: UpstreamConnection | None = None

    async def start(self, **items: dict[str, Any]) -> HttpProtocol:
        from tollway.plugins.builtin.key_auth import KeyAuth

        registry = Registry([self.a, self.b, KeyAuth()])
        store = Store()
        kvs = [
            KeyValue(f"/apisix/{key.replace('__', '/')}", json.dumps(v).encode(), 1, 1)
            for key, v in items.items()
        ]
        store.load(1, kvs)
        compiler = Compiler(default_settings(Path("/tmp/conf")), registry)
        await compiler.rebuild(store)
        state = ServerState(compiler, max_header_size=32768, max_body_size=0, keepalive_timeout=60)
        state.start(asyncio.get_running_loop())
        pool_key = next(r.upstream for r in compiler.routes.values()).pool_key  # type: ignore[union-attr]
        conn = self.conn = UpstreamConnection(state.pool, (pool_key, *UP))
        conn.connection_made(self.upstream)  # type: ignore[arg-type]
        state.pool.release(conn, next(iter(compiler.routes.values())).upstream.limits)  # type: ignore[union-attr]
        proto = HttpProtocol(state)
        proto.connection_made(self.client)  # type: ignore[arg-type]
        return proto

    def upstream_answers(self) -> None:
        assert self.conn is not None
        self.conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def answer(self) -> bytes:
        return b"".join(self.client.out)

    def sent_upstream(self) -> bytes:
        return b"".join(self.upstream.out)


STAGES = ["rewrite", "access", "before_proxy"]


def route(plugins: dict[str, Any], uri: str = "/x") -> dict[str, Any]:
    return {"uri": uri, "plugins": plugins, "upstream": {"nodes": {f"{UP[0]}:{UP[1]}": 1}}}


def test_a_filtered_entry_runs_only_when_its_filter_holds() -> None:
    async def run() -> None:
        gw = Gateway()
        filtered = {"_meta": {"filter": [["arg_a", "==", "1"]]}}
        proto = await gw.start(routes__1=route({"test-a": filtered, "test-b": {}}))
        proto.data_received(b"GET /x?a=1 HTTP/1.1\r\nHost: a\r\n\r\n")
        gw.upstream_answers()
        proto.data_received(b"GET /x?a=2 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert gw.order == [
            *("test-a:rewrite", "test-b:rewrite", "test-a:access", "test-b:access"),
            *("test-a:before_proxy", "test-b:before_proxy"),
            *("test-b:rewrite", "test-b:access", "test-b:before_proxy"),
        ]
        assert gw.sent_upstream().count(b"GET /x?a=") == 2

    asyncio.run(run())


@pytest.mark.parametrize("phase", ["rewrite", "access", "before_proxy"])
def test_an_exit_in_any_stage_answers_and_stops_the_chain(phase: str) -> None:
    async def run() -> None:
        gw = Gateway()
        proto = await gw.start(routes__1=route({"test-a": {phase: "exit"}, "test-b": {}}))
        proto.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert proto.active is None or proto.active.task is None
        answer = gw.answer()
        assert answer.startswith(b"HTTP/1.1 403 ") and b'"test-a ' + phase.encode() in answer
        ran = STAGES[: STAGES.index(phase) + 1]
        want = [f"test-{p}:{s}" for s in ran for p in "ab"][:-1]  # b's last one did not run
        assert gw.order == want and gw.upstream.out == []

    asyncio.run(run())


@pytest.mark.parametrize("phase", ["rewrite", "access", "before_proxy"])
def test_a_wait_in_any_stage_hands_the_rest_to_a_task(phase: str) -> None:
    async def run() -> None:
        gw = Gateway()
        proto = await gw.start(routes__1=route({"test-a": {phase: "wait"}, "test-b": {}}))
        gw.a.gate = asyncio.get_running_loop().create_future()
        proto.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        ex = proto.active
        assert ex is not None and ex.task is not None
        await asyncio.sleep(0)
        assert gw.order[-1] == f"test-a:{phase}" and gw.upstream.out == []
        gw.a.gate.set_result(None)
        await asyncio.wait_for(gw.upstream.wrote.wait(), 5)
        assert gw.order == [f"test-{p}:{s}" for s in STAGES for p in "ab"]

    asyncio.run(run())


def test_equal_entries_of_a_global_rule_and_a_route_each_run_once() -> None:
    """The route's entry (equal to the global rule's: same plugin, same conf) waits: the task
    goes on from the entry after it, not after the first equal one."""

    async def run() -> None:
        gw = Gateway()
        conf = {"rewrite": "wait-again"}
        proto = await gw.start(
            routes__1=route({"test-a": conf}), global_rules__1={"plugins": {"test-a": conf}}
        )
        gw.a.gate = asyncio.get_running_loop().create_future()
        gw.a.gate.set_result(None)
        proto.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.wait_for(gw.upstream.wrote.wait(), 5)
        # (a global rule has no before_proxy here: Chain.under)
        assert gw.order == ["test-a:rewrite"] * 2 + ["test-a:access"] * 2 + ["test-a:before_proxy"]

    asyncio.run(run())


def test_a_consumers_plugins_join_after_the_rewrite_entries() -> None:
    """key-auth (rewrite) identifies the consumer; its test-b joins: b's rewrite runs then
    (APISIX rewrite_in_consumer), then the merged chain's access entries; a consumer without
    plugins keeps the route's chain."""

    async def run() -> None:
        gw = Gateway()
        proto = await gw.start(
            routes__1=route({"key-auth": {}, "test-a": {}}),
            consumers__jack={
                "username": "jack",
                "plugins": {"key-auth": {"key": "jk"}, "test-b": {"access": "exit"}},
            },
            consumers__anna={"username": "anna", "plugins": {"key-auth": {"key": "ak"}}},
        )
        proto.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\napikey: jk\r\n\r\n")
        assert gw.order == ["test-a:rewrite", "test-b:rewrite", "test-a:access", "test-b:access"]
        assert gw.answer().startswith(b"HTTP/1.1 403 ") and gw.upstream.out == []
        gw.order.clear()
        proto.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\napikey: ak\r\n\r\n")
        assert gw.order == ["test-a:rewrite", "test-a:access", "test-a:before_proxy"]
        assert b"GET /x " in gw.sent_upstream()

    asyncio.run(run())


def test_a_global_rules_entries_run_for_the_404_and_can_answer_it() -> None:
    async def run() -> None:
        gw = Gateway()
        proto = await gw.start(
            routes__1=route({}), global_rules__1={"plugins": {"test-a": {}, "test-b": {}}}
        )
        proto.data_received(b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n")
        assert gw.order == ["test-a:rewrite", "test-b:rewrite", "test-a:access", "test-b:access"]
        assert gw.answer().startswith(b"HTTP/1.1 404 ")

    asyncio.run(run())
