"""The one phase driver: plain calls until a plugin returns an awaitable, then a task from that
entry on (proxy/phases.py). The whole exchange runs on in-memory transports, as bench/hotpath.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

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
