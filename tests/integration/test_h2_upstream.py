"""The upstream HTTP/2 client (``tollway.upstream.h2conn``) against a real grpcio server: every
call kind driven frame by frame, metadata both ways, trailers, many streams on one connection,
the server going away mid-stream, TLS with ALPN h2."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tests.support.grpc_server import (
    GrpcServer,
    GrpcServerProcess,
    Msg,
    frame,
    self_signed,
    unframe,
)
from tollway.upstream.h2conn import STREAM_WINDOW, H2Connection, H2Pool, H2Stream, StreamFailed
from tollway.upstream.pool import PoolLimits


class Call:
    """A StreamSink collecting one call's response."""

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.trailers: dict[bytes, bytes] = {}
        self.data = b""
        self.ended_with_headers = False
        self.first_data = asyncio.Event()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_response(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        self.headers = dict(headers)
        self.ended_with_headers = ended

    def on_data(self, data: bytes) -> None:
        self.data += data
        self.first_data.set()

    def on_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.trailers = dict(headers)

    def on_end(self) -> None:
        self.done.set_result(None)

    def on_failed(self, exc: StreamFailed) -> None:
        if not self.done.done():
            self.done.set_exception(exc)

    def messages(self) -> list[Any]:
        return unframe(self.data)


def head(
    path: str, *, scheme: bytes = b"http", extra: list[tuple[bytes, bytes]] | None = None
) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", scheme),
        (b":path", path.encode()),
        (b":authority", b"localhost"),
        (b"te", b"trailers"),
        (b"content-type", b"application/grpc"),
        *(extra or []),
    ]


async def connect(pool: H2Pool, server: GrpcServer, **kw: Any) -> H2Connection:
    return await pool.get(
        ("grpc", "127.0.0.1", server.port),
        "127.0.0.1",
        server.port,
        ssl_ctx=kw.get("ssl_ctx"),
        server_hostname="localhost",
        timeout=5,
        limits=kw.get("limits") or PoolLimits(),
    )


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``cond`` with a deadline without blocking the loop (the client reads meanwhile)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def run(fn: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(asyncio.wait_for(fn(), 30))


@pytest.fixture(scope="module")
def server() -> Any:
    with GrpcServer("s1") as s:
        yield s


def test_sending_after_the_response_is_complete_fails_afresh_each_time(
    server: GrpcServer,
) -> None:
    """A sender still going when the response completed (a client stream the upstream
    answered early) gets StreamFailed: a new one each time, not the stream's stored failure
    (one object shared by every completed stream, whose traceback would grow with each raise)."""

    async def main() -> None:
        pool = H2Pool()
        conn = await connect(pool, server)
        call = Call()
        stream = conn.open_stream(head("/tollway.test.Echo/Unary"), call)
        await stream.send_data(frame(Msg(text="hi")), end=True)
        await call.done
        raised = []
        for _ in range(2):
            with pytest.raises(StreamFailed) as e:
                await stream.send_data(b"late")
            raised.append(e.value)
            assert not stream.send_now(b"late", True)
        assert raised[0] is not raised[1] and raised[0] is not stream.failed
        assert str(raised[0]) == "the response is complete" and raised[0].processed
        assert stream.failed is not None and stream.failed.__traceback__ is None

    run(main)


def test_unary_with_metadata_both_ways(server: GrpcServer) -> None:
    async def main() -> None:
        pool = H2Pool()
        conn = await connect(pool, server)
        call = Call()
        extra = [(b"x-echo", b"hello-md")]
        stream = conn.open_stream(head("/tollway.test.Echo/Unary", extra=extra), call)
        await stream.send_data(frame(Msg(text="hi", count=3)), end=True)
        await call.done
        assert call.headers[b":status"] == b"200"
        assert call.headers[b"x-echo"] == b"hello-md"
        assert call.trailers[b"grpc-status"] == b"0"
        assert call.trailers[b"x-trailer"] == b"hello-md"
        [reply] = call.messages()
        assert (reply.text, reply.count) == ("s1:hi", 3)
        assert server.metadata[-1]["x-echo"] == "hello-md"
        pool.close_all()

    run(main)


def test_error_status_is_trailers_only(server: GrpcServer) -> None:
    async def main() -> None:
        pool = H2Pool()
        conn = await connect(pool, server)
        call = Call()
        stream = conn.open_stream(head("/tollway.test.Echo/Unary"), call)
        await stream.send_data(frame(Msg(text="fail")), end=True)
        await call.done
        # grpcio answers an error before any message with one HEADERS frame (trailers-only)
        status = call.trailers.get(b"grpc-status") or call.headers.get(b"grpc-status")
        message = call.trailers.get(b"grpc-message") or call.headers.get(b"grpc-message")
        assert (status, message) == (b"3", b"bad input")
        assert call.data == b""
        pool.close_all()

    run(main)


def test_server_streaming(server: GrpcServer) -> None:
    async def main() -> None:
        pool = H2Pool()
        conn = await connect(pool, server)
        call = Call()
        stream = conn.open_stream(head("/tollway.test.Echo/ServerStream"), call)
        await stream.send_data(frame(Msg(text="m", count=50)), end=True)
        await call.done
        assert [m.text for m in call.messages()] == [f"s1:m{i}" for i in range(50)]
        assert call.trailers[b"grpc-status"] == b"0"
        pool.close_all()

    run(main)


def test_client_streaming_in_pieces(server: GrpcServer) -> None:
    async def main() -> None:
        pool = H2Pool()
        conn = await connect(pool, server)
        call = Call()
        stream = conn.open_stream(head("/tollway.test.Echo/ClientStream"), call)
        data = b"".join(frame(Msg(text=t)) for t in ("a", "b", "c"))
        for i in range(0, len(data), 3):  # a message split across DATA frames
            await stream.send_data(data[i : i + 3])
        await stream.end()
        await call.done
        [reply] = call.messages()
        assert (reply.text, reply.count) == ("s1:a+b+c", 3)
        pool.close_all()

    run(main)


def test_bidi_is_full_duplex(server: GrpcServer) -> None:
    async def main() -> None:
        pool = H2Pool()
        conn = await connect(pool, server)
        call = Call()
        stream = conn.open_stream(head("/tollway.test.Echo/Bidi"), call)
        await stream.send_data(frame(Msg(text="one")))
        # the answer to the first message arrives while the request is still open
        await asyncio.wait_for(call.first_data.wait(), 5)
        assert [m.text for m in call.messages()] == ["s1:one"]
        await stream.send_data(frame(Msg(text="two")), end=True)
        await call.done
        assert [m.text for m in call.messages()] == ["s1:one", "s1:two"]
        pool.close_all()

    run(main)


def test_large_bodies_respect_flow_control(server: GrpcServer) -> None:
    async def main() -> None:
        pool = H2Pool()
        conn = await connect(pool, server)
        call = Call()
        stream = conn.open_stream(head("/tollway.test.Echo/Unary"), call)
        big = "x" * (3 << 20)  # beyond the peer's 64 KiB initial window many times over
        await stream.send_data(frame(Msg(text=big)), end=True)
        await call.done
        [reply] = call.messages()
        assert reply.text == "s1:" + big
        pool.close_all()

    run(main)


def test_many_concurrent_streams_share_one_connection(server: GrpcServer) -> None:
    async def main() -> None:
        pool = H2Pool()
        key = ("grpc", "127.0.0.1", server.port)

        async def one(i: int) -> str:
            conn = await connect(pool, server)
            call = Call()
            stream = conn.open_stream(head("/tollway.test.Echo/Unary"), call)
            await stream.send_data(frame(Msg(text=str(i), delay_ms=50)), end=True)
            await call.done
            text: str = call.messages()[0].text
            return text

        results = await asyncio.gather(*(one(i) for i in range(60)))
        assert results == [f"s1:{i}" for i in range(60)]
        conns = pool.connections(key)
        assert len(conns) == 1 and conns[0].opened == 60
        pool.close_all()

    run(main)


def test_a_full_connection_opens_another() -> None:
    async def main() -> None:
        with GrpcServer("s2") as s:
            pool = H2Pool()
            limits = PoolLimits(requests=2)  # keepalive_pool.requests: streams per connection
            conns = []
            for _ in range(3):
                conn = await connect(pool, s, limits=limits)
                conns.append(conn)
                call = Call()
                stream = conn.open_stream(head("/tollway.test.Echo/Unary"), call)
                await stream.send_data(frame(Msg(text="x")), end=True)
                await call.done
            assert conns[0] is conns[1] and conns[2] is not conns[0]
            assert conns[0].closed  # used up and idle: closed
            pool.close_all()

    run(main)


def test_server_killed_mid_stream_fails_the_streams_then_a_new_connection_works() -> None:
    async def main() -> None:
        s = GrpcServerProcess("s3").start()
        port = s.port
        pool = H2Pool()
        conn = await connect(pool, s)
        call = Call()
        stream = conn.open_stream(head("/tollway.test.Echo/ServerStream"), call)
        await stream.send_data(frame(Msg(text="m", count=1000, delay_ms=20)), end=True)
        await asyncio.wait_for(call.first_data.wait(), 5)
        s.kill()
        with pytest.raises(StreamFailed):
            await call.done
        assert stream.failed is not None
        assert not conn.available
        s2 = GrpcServer("s3b", port=port).start()
        try:
            conn2 = await connect(pool, s2)
            assert conn2 is not conn
            call2 = Call()
            st2 = conn2.open_stream(head("/tollway.test.Echo/Unary"), call2)
            await st2.send_data(frame(Msg(text="again")), end=True)
            await call2.done
            assert call2.messages()[0].text == "s3b:again"
        finally:
            pool.close_all()
            await asyncio.to_thread(s2.stop)

    run(main)


def test_graceful_goaway_lets_in_flight_streams_finish() -> None:
    async def main() -> None:
        s = GrpcServer("s4").start()
        pool = H2Pool()
        conn = await connect(pool, s)
        call = Call()
        stream = conn.open_stream(head("/tollway.test.Echo/Unary"), call)
        await stream.send_data(frame(Msg(text="slow", delay_ms=500)), end=True)
        await until(lambda: s.calls == 1)  # the server is handling the call, then stops
        stopping = asyncio.create_task(asyncio.to_thread(s.stop, 5.0))
        await call.done
        assert call.messages()[0].text == "s4:slow"
        assert call.trailers[b"grpc-status"] == b"0"
        await stopping
        assert conn.goaway or conn.closed
        assert not conn.available
        pool.close_all()

    run(main)


def test_cancel_resets_only_that_stream(server: GrpcServer) -> None:
    async def main() -> None:
        pool = H2Pool()
        conn = await connect(pool, server)
        hang = Call()
        s1: H2Stream = conn.open_stream(head("/tollway.test.Echo/Unary"), hang)
        await s1.send_data(frame(Msg(text="hang")), end=True)
        ok = Call()
        s2 = conn.open_stream(head("/tollway.test.Echo/Unary"), ok)
        await s2.send_data(frame(Msg(text="fine")), end=True)
        s1.cancel()
        await ok.done
        assert ok.messages()[0].text == "s1:fine"
        assert conn.available and s1.id not in conn.streams
        pool.close_all()

    run(main)


def test_grpcs_with_alpn_h2(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)

    async def main() -> None:
        with GrpcServer("tls", tls=(cert, key)) as s:
            ctx = ssl.create_default_context(cadata=cert.decode())
            ctx.set_alpn_protocols(["h2"])
            pool = H2Pool()
            conn = await connect(pool, s, ssl_ctx=ctx)
            call = Call()
            stream = conn.open_stream(head("/tollway.test.Echo/Unary", scheme=b"https"), call)
            await stream.send_data(frame(Msg(text="secure")), end=True)
            await call.done
            assert call.messages()[0].text == "tls:secure"
            pool.close_all()

    run(main)


def test_connect_refused_is_an_oserror() -> None:
    async def main() -> None:
        s = GrpcServer("gone")  # never started: nothing listens on its port
        pool = H2Pool()
        with pytest.raises(OSError):
            await connect(pool, s)

    run(main)


def test_a_paused_stream_holds_the_upstream_to_its_window(server: GrpcServer) -> None:
    """A stream whose reader is paused stops acknowledging: the upstream sends at most the
    stream's window, then waits; resumed, everything arrives."""

    async def main() -> None:
        pool = H2Pool()
        conn = await connect(pool, server)
        call = Call()
        stream = conn.open_stream(head("/tollway.test.Echo/ServerStream"), call)
        stream.pause_reading()
        big = "x" * 65536
        await stream.send_data(frame(Msg(text=big, count=64)), end=True)  # ~4 MiB of answers
        await until(lambda: len(call.data) >= STREAM_WINDOW - 70000)
        # nothing received was acknowledged: the upstream, held by our window (h2 fails the
        # connection of a peer that sends past it), waits
        assert stream.unacked >= len(call.data)
        assert len(call.data) <= STREAM_WINDOW
        assert not call.done.done()
        stream.resume_reading()
        await call.done
        assert len(call.messages()) == 64
        pool.close_all()

    run(main)


def test_the_peers_max_concurrent_streams_opens_another_connection() -> None:
    async def main() -> None:
        with GrpcServer("m", options=[("grpc.max_concurrent_streams", 2)]) as s:
            pool = H2Pool()
            conn = await connect(pool, s)
            await until(lambda: conn.h2.remote_max_concurrent == 2)
            calls = []
            for _ in range(2):
                call = Call()
                st = conn.open_stream(head("/tollway.test.Echo/Unary"), call)
                await st.send_data(frame(Msg(text="hang")), end=True)
                calls.append((st, call))
            assert not conn.available  # the server's SETTINGS_MAX_CONCURRENT_STREAMS
            other = await connect(pool, s)
            assert other is not conn
            ok = Call()
            st = other.open_stream(head("/tollway.test.Echo/Unary"), ok)
            await st.send_data(frame(Msg(text="third")), end=True)
            await ok.done
            assert ok.messages()[0].text == "m:third"
            for st, _ in calls:
                st.cancel()
            assert conn.available  # room again once streams end
            pool.close_all()

    run(main)
