"""The gRPC fast path (``grpc_attempt.forward_grpc``): a unary call whose body came with its head
runs on an open pooled HTTP/2 connection with no task, the head and the body in one write; a
failure hands over to the driver (a retry, or the failure as a gRPC status); a body still on
its way goes to the driver at once. The gateway's real client side (``H2Protocol``) and
upstream connection (``H2Connection``) on in-memory transports, h2 connections as the peers."""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from tollway.config.source import KeyValue
from tollway.config.store import Store
from tollway.plugins.registry import load_registry
from tollway.proxy.grpc_answer import H2Head
from tollway.proxy.grpc_fields import grpc_timeout
from tollway.proxy.pipeline import Exchange
from tollway.proxy.server import HttpProtocol
from tollway.proxy.state import ServerState
from tollway.runtime.compiler import Compiler
from tollway.settings import default_settings
from tollway.upstream.h2conn import H2Connection

PATH = b"/tollway.test.Echo/Unary"
MESSAGE = b"\x00\x00\x00\x00\x07\n\x05hello"
REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", PATH),
           (b":authority", b"gw"), (b"content-type", b"application/grpc"),
           (b"te", b"trailers")]  # fmt: skip


class Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5), "sockname": ("127.0.0.1", 9080)}.get(name, default)

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...


def _h2(client: bool) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=client, header_encoding=None)
    )
    conn.initiate_connection()
    return conn


class Gateway:
    """One client connection and one pooled upstream connection, with their peers."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.client, self.upstream = _h2(True), _h2(False)
        self.ct, self.ut = Transport(), Transport()
        self.spawned = 0  # tasks made on the loop once the connections are up

    async def start(self) -> None:
        route = {"uri": PATH.decode(), "upstream": {"scheme": "grpc", "type": "roundrobin",
                                                   "nodes": {"127.0.0.1:50051": 1},
                                                   "retries": 1}}  # fmt: skip
        store = Store()
        store.load(1, [KeyValue("/apisix/routes/1", json.dumps(route).encode(), 1, 1)])
        compiler = Compiler(default_settings(Path("/tmp/conf")), load_registry())
        await compiler.rebuild(store)
        state = ServerState(compiler, max_header_size=32768, max_body_size=0,
                            keepalive_timeout=60, http2=True)  # fmt: skip
        state.start(asyncio.get_running_loop())
        up = compiler.routes["1"].upstream
        assert up is not None
        key = (up.pool_key, "127.0.0.1", 50051)
        self.conn = conn = H2Connection(state.h2pool, key, up.limits)
        conn.connection_made(self.ut)  # type: ignore[arg-type]
        state.h2pool._conns[key] = [conn]
        await self.turns()
        self.to_upstream()
        await self.turns()
        self.upstream.receive_data(self.ut.take())  # (the SETTINGS ACK)
        proto = HttpProtocol(state)
        proto.connection_made(self.ct)  # type: ignore[arg-type]
        proto.data_received(self.client.data_to_send())
        self.h2p = self.ct.protocol
        await self.turns()
        self.to_client()

        # Counted by the loop, not by patching Exchange._spawn: a compiled caller does not see
        # a patched method (tollway.native).
        def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
            self.spawned += 1
            return asyncio.Task(coro, loop=loop, **kw)

        asyncio.get_running_loop().set_task_factory(counting)

    async def turns(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    def to_upstream(self) -> list[Any]:
        """What the gateway wrote upstream, to the upstream peer (and its answer back)."""
        events = self.upstream.receive_data(self.ut.take())
        self.conn.data_received(self.upstream.data_to_send())
        return events

    def to_client(self) -> list[Any]:
        events = self.client.receive_data(self.ct.take())
        self.h2p.data_received(self.client.data_to_send())
        return events

    async def call(self, end: bool = True) -> int:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, REQUEST)
        self.client.send_data(sid, MESSAGE, end_stream=end)
        self.h2p.data_received(self.client.data_to_send())
        await self.turns()
        return sid

    def answer(self, sid: int, *, trailers: bool = True) -> None:
        self.upstream.send_headers(sid, [(b":status", b"200"),
                                         (b"content-type", b"application/grpc")])  # fmt: skip
        self.upstream.send_data(sid, MESSAGE)
        if trailers:
            self.upstream.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
        self.conn.data_received(self.upstream.data_to_send())


def run(test: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body() -> None:
        gw = Gateway(monkeypatch)
        await gw.start()
        await test(gw)

    asyncio.run(body())


def _answer_events(events: list[Any]) -> tuple[bytes, bytes, dict[bytes, bytes]]:
    status = data = b""
    trailers: dict[bytes, bytes] = {}
    for e in events:
        if isinstance(e, h2.events.ResponseReceived):
            status = dict(e.headers)[b":status"]
        elif isinstance(e, h2.events.DataReceived):
            data += e.data
        elif isinstance(e, h2.events.TrailersReceived):
            trailers = dict(e.headers)
    return status, data, trailers


def test_unary_call_runs_with_no_task_head_and_body_in_one_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def test(gw: Gateway) -> None:
        await gw.call()
        assert len(gw.ut.out) == 1  # HEADERS + DATA with END_STREAM: one write
        events = gw.to_upstream()
        req = [e for e in events if isinstance(e, h2.events.RequestReceived)]
        assert dict(req[0].headers)[b"te"] == b"trailers"
        assert [e.data for e in events if isinstance(e, h2.events.DataReceived)] == [MESSAGE]
        assert any(isinstance(e, h2.events.StreamEnded) for e in events)
        gw.answer(req[0].stream_id)
        await gw.turns()
        status, data, trailers = _answer_events(gw.to_client())
        assert (status, data, trailers) == (b"200", MESSAGE, {b"grpc-status": b"0"})
        assert gw.spawned == 0
        assert not gw.h2p.streams and not gw.conn.streams  # both sides forgot the stream

    run(test, monkeypatch)


def test_a_message_past_one_frame_goes_whole_in_frames(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fast path's message goes as one DATA frame with END_STREAM when it fits one frame
    (``send_last``); a larger one, still within the windows, goes in frames of the peer's
    maximum size, END_STREAM on the last, with no task."""

    async def test(gw: Gateway) -> None:
        for size in (100, 40_000):
            message = b"\x00" + size.to_bytes(4, "big") + b"m" * size
            sid = gw.client.get_next_available_stream_id()
            gw.client.send_headers(sid, REQUEST)
            for i in range(0, len(message), 16_384):
                gw.client.send_data(sid, message[i : i + 16_384],
                                    end_stream=i + 16_384 >= len(message))  # fmt: skip
            gw.h2p.data_received(gw.client.data_to_send())
            await gw.turns()
            events = gw.to_upstream()
            frames = [e for e in events if isinstance(e, h2.events.DataReceived)]
            assert b"".join(e.data for e in frames) == message
            assert len(frames) == (1 if size == 100 else 3)
            assert isinstance(events[-1], h2.events.StreamEnded)
            up_sid = frames[0].stream_id
            for e in frames:
                gw.upstream.acknowledge_received_data(e.flow_controlled_length, up_sid)
            gw.answer(up_sid)
            await gw.turns()
            status, data, trailers = _answer_events(gw.to_client())
            assert (status, data, trailers) == (b"200", MESSAGE, {b"grpc-status": b"0"})
        assert gw.spawned == 0

    run(test, monkeypatch)


def test_an_answer_ended_on_its_data_completes_the_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An upstream answer whose last DATA carries END_STREAM (no trailers: one event from the
    HTTP/2 layer, no StreamEnded after it) completes the call: the client gets the message
    and the stream's end, and both sides forget the stream."""

    async def test(gw: Gateway) -> None:
        await gw.call()
        sid = next(e for e in gw.to_upstream() if isinstance(e, h2.events.RequestReceived))
        gw.upstream.send_headers(sid.stream_id, [(b":status", b"200"),
                                                 (b"content-type", b"application/grpc")])  # fmt: skip
        gw.upstream.send_data(sid.stream_id, MESSAGE, end_stream=True)
        gw.conn.data_received(gw.upstream.data_to_send())
        await gw.turns()
        events = gw.to_client()
        status, data, _ = _answer_events(events)
        assert (status, data) == (b"200", MESSAGE)
        assert any(isinstance(e, h2.events.StreamEnded) for e in events)
        assert not gw.h2p.streams and not gw.conn.streams

    run(test, monkeypatch)


def test_refused_stream_is_retried_by_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """REFUSED_STREAM (RFC 9113 8.7: not processed): the fast path's failure goes to the
    driver, which tries the node again (``retries: 1``) on the pooled connection; the client
    sees only the answer."""

    async def test(gw: Gateway) -> None:
        await gw.call()
        first = [e for e in gw.to_upstream() if isinstance(e, h2.events.RequestReceived)]
        gw.upstream.reset_stream(first[0].stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        gw.conn.data_received(gw.upstream.data_to_send())
        await gw.turns()
        assert gw.spawned == 1
        again = [e for e in gw.to_upstream() if isinstance(e, h2.events.RequestReceived)]
        assert again and again[0].stream_id != first[0].stream_id
        gw.answer(again[0].stream_id)
        await gw.turns()
        status, data, trailers = _answer_events(gw.to_client())
        assert (status, data, trailers) == (b"200", MESSAGE, {b"grpc-status": b"0"})

    run(test, monkeypatch)


def test_reset_after_the_answer_began_ends_with_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def test(gw: Gateway) -> None:
        await gw.call()
        sid = next(e for e in gw.to_upstream() if isinstance(e, h2.events.RequestReceived))
        gw.answer(sid.stream_id, trailers=False)
        gw.upstream.reset_stream(sid.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        gw.conn.data_received(gw.upstream.data_to_send())
        await gw.turns()
        status, data, trailers = _answer_events(gw.to_client())
        assert (status, data) == (b"200", MESSAGE)
        assert trailers[b"grpc-status"] == b"14"  # UNAVAILABLE, in the trailers
        assert gw.spawned == 1  # (the driver answered)

    run(test, monkeypatch)


def test_a_body_still_arriving_goes_to_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    async def test(gw: Gateway) -> None:
        sid = await gw.call(end=False)
        assert gw.spawned == 2  # the exchange's (the driver) and its attempt's body sender
        events = gw.to_upstream()  # the head and the first message stream upstream
        up_sid = next(e for e in events if isinstance(e, h2.events.RequestReceived)).stream_id
        gw.client.end_stream(sid)
        gw.h2p.data_received(gw.client.data_to_send())
        await gw.turns()
        assert any(isinstance(e, h2.events.StreamEnded) for e in gw.to_upstream())
        gw.answer(up_sid)
        await gw.turns()
        assert _answer_events(gw.to_client())[2] == {b"grpc-status": b"0"}

    run(test, monkeypatch)


def test_h2_head_fields_and_lines() -> None:
    # (names come lowercase: the HTTP/2 layer refuses others, check_response)
    head = H2Head([(b":status", b"200"), (b"content-type", b"application/grpc"),
                   (b"server", b"up"), (b"connection", b"x"), (b"content-length", b"7"),
                   (b"x-a", b"1")])  # fmt: skip
    assert head.fields == [(b"content-type", b"application/grpc"), (b"x-a", b"1")]
    assert head.content_length == b"7" and head.connection is None
    assert head.lines == [b"content-type", b": ", b"application/grpc", b"\r\n",
                          b"x-a", b": ", b"1", b"\r\n"]  # fmt: skip
    assert head.header_pairs() == head.fields and head.header_pairs() is not head.fields


def _ex(http2: bool, raw: list[tuple[bytes, bytes]]) -> Exchange:
    """An exchange (a real one: the compiled build checks the classes it is handed) of a client
    connection that is HTTP/2 or not."""
    proto: Any = SimpleNamespace(http2=http2)
    return Exchange(proto, "POST", b"/", raw, "2" if http2 else "1.1", True, b"a")


def test_grpc_timeout_read_from_the_header_list() -> None:
    assert grpc_timeout(_ex(True, [(b"grpc-timeout", b"5S")])) == b"5S"
    assert grpc_timeout(_ex(False, [(b"Grpc-Timeout", b"5S")])) == b"5S"
    assert grpc_timeout(_ex(True, [(b"te", b"trailers")])) is None
    # repeated: joined with ", " it parses as no timeout (as ctx.headers reads it)
    two = [(b"grpc-timeout", b"5S"), (b"grpc-timeout", b"1S")]
    assert grpc_timeout(_ex(True, two)) is None


def test_finished_calls_leave_no_cycle_for_the_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished call is freed by reference counting: no exchange <-> stream or exchange <->
    context cycle waits for the collector (the worker collects young objects only every 50,000
    allocations; garbage in cycles made each of its collections cost more per request)."""

    async def test(gw: Gateway) -> None:
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(3):
                await gw.call()
                req = [e for e in gw.to_upstream() if isinstance(e, h2.events.RequestReceived)]
                gw.answer(req[0].stream_id)
                await gw.turns()
                status, data, _ = _answer_events(gw.to_client())
                assert (status, data) == (b"200", MESSAGE)
            gc.collect()
            left = {type(o).__name__ for o in gc.garbage}
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert not left & {"Exchange", "H2Stream", "RequestContext"}, left

    run(test, monkeypatch)
