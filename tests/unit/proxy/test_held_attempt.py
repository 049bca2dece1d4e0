"""The upstream attempt is an object the exchange holds (``ExchangeBase.held``), not a part of
it (issue #12): the fast path's attempt on a pooled connection, its hand-over to the coroutine
path, and the driver shared with gRPC (pick, hold, report, retry decision).

The exchange tests run the whole exchange on in-memory transports, as bench/hotpath.py; the
fresh connection after a stale one goes to a real loopback server. The driver tests use fakes.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.unit.proxy.fakes import Transport
from tollway.balancer import PickContext, Server
from tollway.config.source import KeyValue
from tollway.config.store import Store
from tollway.plugins.kit import RequestContext
from tollway.plugins.registry import Registry
from tollway.proxy.attempt import Http1Attempt, UpstreamFailure
from tollway.proxy.driver import Failure, drive
from tollway.proxy.pipeline import Exchange
from tollway.proxy.server import HttpProtocol
from tollway.proxy.state import ServerState
from tollway.runtime.compiler import Compiler
from tollway.settings import default_settings
from tollway.upstream.pool import UpstreamConnection

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def exchange(
    port: int,
) -> tuple[HttpProtocol, Transport, UpstreamConnection, ServerState]:
    """A client connection and one idle pooled (in-memory) connection to 127.0.0.1:``port``."""
    route = {"uri": "/x", "upstream": {"nodes": {f"127.0.0.1:{port}": 1}}}
    store = Store()
    store.load(1, [KeyValue("/apisix/routes/1", json.dumps(route).encode(), 1, 1)])
    compiler = Compiler(default_settings(Path("/tmp/conf")), Registry([]))
    await compiler.rebuild(store)
    state = ServerState(compiler, max_header_size=32768, max_body_size=0, keepalive_timeout=60)
    state.start(asyncio.get_running_loop())
    up = compiler.routes["1"].upstream
    assert up is not None
    conn = UpstreamConnection(state.pool, (up.pool_key, "127.0.0.1", port))
    conn.connection_made(Transport())  # type: ignore[arg-type]
    state.pool.release(conn, up.limits)
    proto = HttpProtocol(state)
    client = Transport()
    proto.connection_made(client)  # type: ignore[arg-type]
    return proto, client, conn, state


def test_fast_path_attempt_is_held_while_it_runs_and_dropped_after() -> None:
    async def run() -> None:
        proto, client, conn, state = await exchange(18391)
        proto.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        ex = proto.active
        assert ex is not None and ex.task is None  # the fast path: no task
        held = ex.held
        assert isinstance(held, Http1Attempt) and held.call is None and held.conn is conn
        assert ex.reading  # the sweep enforces the read timeout
        conn.data_received(ANSWER)
        state.flush_writes()
        assert b"".join(client.out).startswith(b"HTTP/1.1 200 OK\r\n")
        # nothing of the attempt stays on the exchange; the connection is idle in the pool
        assert ex.held is None and not ex.reading and ex._finished
        assert held.conn is None
        assert state.pool.get_idle(conn.key) is conn
        state.stop()

    asyncio.run(run())


def test_a_stale_kept_alive_connection_is_retried_on_a_fresh_one() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ANSWER)
        await writer.drain()

    async def run() -> None:
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        proto, client, conn, state = await exchange(port)
        proto.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        ex = proto.active
        assert ex is not None and ex.held is not None and ex.task is None
        conn.connection_lost(None)  # the upstream had closed it: nothing came back
        # the coroutine path takes over (the same server, a new connection)
        assert ex.task is not None and ex.held is None
        await asyncio.wait_for(ex.task, 5)
        state.flush_writes()
        assert b"".join(client.out).startswith(b"HTTP/1.1 200 OK\r\n")
        assert ex.held is None and ex._finished and not ex.client_closed
        assert ex.ctx is not None and ex.ctx.upstream_status == "200"  # no failed try counted
        state.stop()
        server.close()

    asyncio.run(run())


def bare_exchange(done: list[bool] | None = None) -> Exchange:
    """A GET exchange with its request context on a fake client connection (``done`` gets the
    keep-alive of its end). Real objects: the compiled build checks the classes it is handed."""
    state = ServerState(
        Compiler(default_settings(Path("/tmp/conf")), Registry([])),
        max_header_size=32768,
        max_body_size=0,
        keepalive_timeout=60,
    )
    ended = done if done is not None else []
    proto: Any = SimpleNamespace(state=state, http2=False)
    proto.exchange_done = lambda ex, keep_alive: ended.append(keep_alive)
    ex = Exchange(proto, "GET", b"/x", [], "1.1", True, b"a")
    ex.ctx = RequestContext(
        "GET", "/x", "/x", "", [], "a", "127.0.0.1", 1, "127.0.0.1", 2, "http", 0.0
    )
    return ex


def test_a_client_gone_mid_fast_attempt_releases_the_server() -> None:
    """least_conn counts a pick until after_balance: a client that leaves must release it."""
    released: list[tuple[str, bool]] = []
    picker = SimpleNamespace(
        after_balance=lambda s, p, failed, latency=None: released.append((s.addr, failed))
    )
    up = SimpleNamespace(picker=picker, passive=None, key="u")
    finished: list[bool] = []
    ex = bare_exchange(finished)
    ex.reading = True
    upstream = Transport()
    conn = UpstreamConnection(ex.proto.state.pool, ("u", "127.0.0.1", 1980))
    conn.connection_made(upstream)  # type: ignore[arg-type]
    server = Server("127.0.0.1", 1980, 1)
    attempt = Http1Attempt(ex, up, server, PickContext(), None, conn, 0.0)  # type: ignore[arg-type]
    ex.held = attempt
    attempt.client_gone()
    assert upstream.closed and len(finished) == 1 and ex._finished
    assert ex.held is None and not ex.reading
    assert released == [(server.addr, True)]


# -- the driver --------------------------------------------------------------------------


class FakeAttempt:
    def __init__(self, call: FakeCall, server: Server) -> None:
        self.call = call
        self.server = server

    async def run(self) -> Failure | None:
        ex = self.call.ex
        self.call.held_during.append(ex.held is self)
        ex.status = 200
        return self.call.outcomes.pop(0)

    def upstream_done(self) -> None: ...
    def upstream_failed(self, exc: BaseException | None) -> None: ...
    def on_read_timeout(self) -> None: ...
    def client_gone(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...


class FakeCall:
    def __init__(self, servers: list[Server | None], outcomes: list[Failure | None]) -> None:
        self.picks = servers
        self.outcomes = outcomes
        self.reports: list[tuple[str, bool]] = []
        picker = SimpleNamespace(
            pick=lambda pick: self.picks.pop(0),
            after_balance=lambda s, p, failed, latency=None: self.reports.append((s.addr, failed)),
        )
        self.up: Any = SimpleNamespace(single=None, picker=picker, passive=None, retries=3)
        self.ex = bare_exchange()
        self.held_during: list[bool] = []
        self.gave_up: list[tuple[int, list[str]]] = []

    def attempt(self, server: Server, pick: PickContext | None) -> FakeAttempt:
        return FakeAttempt(self, server)

    def resendable(self) -> bool:
        return True

    def give_up(self, status: int, statuses: list[str]) -> None:
        self.gave_up.append((status, list(statuses)))


A, B = Server("10.0.0.1", 80, 1), Server("10.0.0.2", 80, 1)


def test_driver_retries_on_the_next_pick_and_reports_each_attempt() -> None:
    call = FakeCall([A, B], [UpstreamFailure(502, True, "refused", sent=False), None])
    asyncio.run(drive(call, PickContext(), 0.0))  # type: ignore[arg-type]
    assert call.held_during == [True, True]  # each attempt held while it ran
    assert call.ex.held is None  # and none after
    assert call.reports == [(A.addr, True), (B.addr, False)]
    assert call.ex.upstream_statuses == ["502", "200"]
    assert call.ex.ctx.upstream_status == "502, 200"
    assert call.ex.ctx.upstream_addr == B.addr and call.gave_up == []


def test_driver_gives_up_with_the_decision_status() -> None:
    # a read timeout after the request was sent: a GET may be retried, up to `retries` (3)
    timeout = UpstreamFailure(504, True, "read timeout")
    call = FakeCall([A, B, A, B], [timeout, timeout, timeout, timeout])
    asyncio.run(drive(call, PickContext(), 0.0))  # type: ignore[arg-type]
    assert call.gave_up == [(504, ["504", "504", "504", "504"])]
    assert len(call.reports) == 4 and call.ex.held is None


def test_driver_does_not_retry_for_a_client_that_left() -> None:
    call = FakeCall([A, B], [UpstreamFailure(502, True, "reset", sent=False), None])
    call.ex.client_closed = True
    asyncio.run(drive(call, PickContext(), 0.0))  # type: ignore[arg-type]
    assert call.gave_up == [(502, ["502"])] and call.reports == [(A.addr, True)]


def test_driver_starts_from_the_fast_paths_failure() -> None:
    call = FakeCall([B], [None])
    first = UpstreamFailure(502, True, "reset", sent=False)
    asyncio.run(drive(call, PickContext(), 0.0, A, first))  # type: ignore[arg-type]
    assert call.reports == [(A.addr, True), (B.addr, False)]
    assert call.ex.ctx.upstream_status == "502, 200"


def test_driver_answers_502_when_no_node_is_left() -> None:
    call = FakeCall([None], [])
    asyncio.run(drive(call, PickContext(), 0.0))  # type: ignore[arg-type]
    assert call.gave_up == [(502, [])] and call.held_during == []
