"""The upstream HTTP/2 client (gRPC upstreams: ``scheme: grpc`` over cleartext with prior
knowledge, RFC 9113 3.3; ``grpcs`` over TLS with ALPN ``h2``, RFC 9113 3.2).

The protocol state is ``tollway.http2``'s (the layer both sides share); this is the asyncio
glue: one Protocol per connection carrying many streams, each stream handing its events to a
``StreamSink`` (one upstream attempt). Flow control both ways: the request body waits for window
(``send_data``), and a stream whose reader is paused (a slow client) stops acknowledging what it
received, so the upstream stops sending on that stream (RFC 9113 5.2). A connection error fails
the streams on that connection only; GOAWAY (RFC 9113 6.8) stops new streams on the connection,
lets the streams the peer accepted finish and fails the others as never processed (a retry may
send them elsewhere). ``H2Pool`` keeps connections per key (scheme, host, port, TLS parameters),
opens another one when every open one is at the peer's SETTINGS_MAX_CONCURRENT_STREAMS or at the
pool's per-connection request limit, and closes a connection idle for ``idle_timeout`` (sockets
have SO_KEEPALIVE, as APISIX's ``grpc_socket_keepalive on``; no HTTP/2 PINGs are sent). What the
connection queues is written once per event-loop turn, so a request's frames leave in one write.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Hashable
from typing import Protocol

from tollway.http2 import events as ev
from tollway.http2.connection import Connection, ProtocolError
from tollway.http2.frames import ENABLE_PUSH, HEADER_TABLE_SIZE, INITIAL_WINDOW_SIZE, ErrorCode
from tollway.upstream.pool import PoolLimits, WritePaused, open_connection

# Our receive windows: a stream may have this much unread before the upstream must wait; the
# connection's is larger so that one paused stream does not stall the others.
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 16 << 20


class StreamFailed(ConnectionError):
    """A stream ended without a complete response. ``processed``: the upstream may have acted
    on the request (False after REFUSED_STREAM, or a GOAWAY naming a lower stream id: RFC 9113
    8.7, the request may go elsewhere)."""

    def __init__(self, reason: str, *, processed: bool = True) -> None:
        super().__init__(reason)
        self.processed = processed

    def again(self) -> StreamFailed:
        """A copy to raise: a stored failure may be shared (``_COMPLETE``), and raising one
        object again and again would grow its traceback."""
        return StreamFailed(str(self), processed=self.processed)


# What a stream whose response is complete reports to a late sender: one object, not one per
# stream (an exception made per call was 1% of a unary call's CPU), raised only as a copy.
_COMPLETE = StreamFailed("the response is complete", processed=True)


class StreamSink(Protocol):
    """What a stream's events go to (one upstream attempt)."""

    def on_response(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None: ...
    def on_data(self, data: bytes) -> None: ...
    def on_trailers(self, headers: list[tuple[bytes, bytes]]) -> None: ...
    def on_end(self) -> None: ...
    def on_failed(self, exc: StreamFailed) -> None: ...


class H2Stream:
    """One request/response exchange on an ``H2Connection``."""

    __slots__ = ("_window", "conn", "failed", "id", "paused", "remote_ended", "sink", "unacked")

    def __init__(self, conn: H2Connection, stream_id: int, sink: StreamSink) -> None:
        self.conn = conn
        self.id = stream_id
        self.sink: StreamSink | None = sink
        self.failed: StreamFailed | None = None
        self.remote_ended = False
        self.paused = False
        self.unacked = 0  # received while paused, acknowledged on resume
        self._window: asyncio.Future[None] | None = None

    async def send_data(self, data: bytes, end: bool = False, timeout: float = 60.0) -> None:
        """Send body bytes as the peer's flow-control windows allow (RFC 9113 6.9), waiting at
        most ``timeout`` each time the windows or the socket are full (``TimeoutError``)."""
        conn = self.conn
        view = memoryview(data)
        while True:
            if self.failed is not None:
                raise self.failed.again()
            if not view:
                if end:
                    try:
                        conn.h2.end_stream(self.id)
                    except ProtocolError as e:
                        raise self._closed(e) from None
                    conn.flush()
                return
            size = min(
                conn.h2.local_flow_control_window(self.id),
                conn.h2.max_outbound_frame_size,
                len(view),
            )
            if size <= 0:
                async with asyncio.timeout(timeout):
                    await self._wait_window()
                continue
            last = size == len(view)
            try:
                conn.h2.send_data(self.id, bytes(view[:size]), end_stream=end and last)
            except ProtocolError as e:  # the stream was reset meanwhile
                raise self._closed(e) from None
            conn.flush()
            if conn.write_paused:
                async with asyncio.timeout(timeout):
                    await conn.drain()
            if last:
                return
            view = view[size:]

    def send_now(self, data: bytes, end: bool) -> bool:
        """Send ``data`` whole at once when the peer's windows take it all (False: nothing was
        sent, ``send_data`` waits for room). The fast path's request body (proxy.grpc_attempt)."""
        conn = self.conn
        h = conn.h2
        if self.failed is not None:
            return False
        if end:
            # A unary call's message: one DATA frame with END_STREAM when the windows and the
            # frame size take it (one check, no loop), else as below
            try:
                if h.send_last(self.id, data):
                    conn.flush()
                    return True
            except ProtocolError as e:  # the stream was reset meanwhile
                raise self._closed(e) from None
        n = len(data)
        if n > h.local_flow_control_window(self.id):
            return False
        size = h.max_outbound_frame_size
        try:
            for i in range(0, n, size):
                h.send_data(self.id, data[i : i + size], end_stream=end and i + size >= n)
            if not n and end:
                h.end_stream(self.id)
        except ProtocolError as e:  # the stream was reset meanwhile
            raise self._closed(e) from None
        conn.flush()
        return True

    def _closed(self, e: ProtocolError) -> StreamFailed:
        """What a send on a stream that closed meanwhile raises."""
        return self.failed.again() if self.failed else StreamFailed(f"stream closed: {e}")

    async def end(self) -> None:
        await self.send_data(b"", end=True)

    async def _wait_window(self) -> None:
        self._window = asyncio.get_running_loop().create_future()
        try:
            await self._window
        finally:
            self._window = None

    def window_opened(self) -> None:
        w = self._window
        if w is not None and not w.done():
            w.set_result(None)

    def cancel(self) -> None:
        """Abandon the stream (RST_STREAM CANCEL): the client went away or the deadline passed."""
        self.sink = None
        self.conn.reset_stream(self, ErrorCode.CANCEL)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        if self.unacked:
            n, self.unacked = self.unacked, 0
            self.conn.acknowledge(self.id, n)

    def fail(self, exc: StreamFailed) -> None:
        self.failed = exc
        self.window_opened()
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.on_failed(exc)


class H2Connection(WritePaused):
    __slots__ = (
        "_flush_soon",
        "_idle_since",
        "_idle_timer",
        "goaway",
        "h2",
        "key",
        "limits",
        "opened",
        "pool",
        "streams",
        "transport",
    )

    def __init__(self, pool: H2Pool, key: Hashable, limits: PoolLimits) -> None:
        self.pool = pool
        self.key = key
        self.limits = limits
        # Our SETTINGS: no push (RFC 9113 8.4), a larger stream window, and no HPACK dynamic
        # table for what the upstream sends (nginx's grpc_pass sends HEADER_TABLE_SIZE 0 too):
        # its answers' heads and trailers are then decoded once while they repeat, even from
        # an upstream that indexes a new date or server field in every answer (nginx does)
        self.h2 = Connection(
            True, {HEADER_TABLE_SIZE: 0, ENABLE_PUSH: 0, INITIAL_WINDOW_SIZE: STREAM_WINDOW}
        )
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Stream] = {}
        self.opened = 0  # streams opened on this connection (keepalive_pool.requests)
        self.goaway = False
        super().__init__()
        self._flush_soon = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # APISIX's grpc_socket_keepalive on: a long call's dead peer is noticed by the OS
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        h = self.h2
        h.initiate_connection()
        h.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as e:
            self.flush_now()  # (its GOAWAY is queued)
            self._fail_all(StreamFailed(f"upstream HTTP/2 protocol error: {e}"))
            self.close()
            return
        # What the events queue (acknowledgements, a reset) leaves in the write below: no
        # flush is scheduled meanwhile (``flush`` sees one pending).
        self._flush_soon = True
        try:
            for event in events:
                self._dispatch(event)
        finally:
            self.flush_now()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        self._cancel_idle()
        self._wake_drain()
        reason = f"upstream connection lost: {exc}" if exc else "upstream closed the connection"
        self._fail_all(StreamFailed(reason))

    # -- events -------------------------------------------------------------------------

    def _dispatch(self, event: ev.Event) -> None:
        if isinstance(event, ev.DataReceived):
            self._data(event)
        elif isinstance(event, ev.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.sink is not None:
                stream.sink.on_response(event.headers, event.ended)
        elif isinstance(event, ev.TrailersReceived):  # (they end the stream: RFC 9113 8.1)
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.sink is not None:
                stream.sink.on_trailers(event.headers)
            self._ended(event.stream_id)
        elif isinstance(event, ev.StreamEnded):
            self._ended(event.stream_id)
        elif isinstance(event, ev.StreamReset):
            refused = event.error_code == ErrorCode.REFUSED_STREAM
            code = getattr(event.error_code, "name", event.error_code)
            self._close_stream(
                event.stream_id,
                StreamFailed(f"upstream reset the stream: {code}", processed=not refused),
            )
        elif isinstance(event, ev.WindowUpdated):
            self._windows_changed(event.stream_id)
        elif isinstance(event, ev.RemoteSettingsChanged):
            self._windows_changed(0)
        elif isinstance(event, ev.ConnectionTerminated):
            self._on_goaway(event.last_stream_id, event.error_code)

    def _data(self, event: ev.DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            return
        n = event.flow_controlled_length
        if stream.paused:
            stream.unacked += n  # acknowledged when reading resumes
        elif n and not self.closed:
            # (once per DATA frame, no call through the stream; what it queues leaves in
            # data_received's write)
            self.h2.acknowledge_received_data(n, event.stream_id)
        if stream.sink is not None and event.data:
            stream.sink.on_data(event.data)
        if event.ended:  # (no StreamEnded follows: one event for the last DATA)
            self._ended(event.stream_id)

    def _ended(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.remote_ended = True
        if stream_id in self.h2.streams:
            # The response is complete before the request body (a server answering early):
            # the rest of the request is not wanted (RFC 9113 8.1).
            self.h2.reset_stream(stream_id, ErrorCode.NO_ERROR)
        self._forget_stream(stream_id)
        stream.failed = _COMPLETE
        stream.window_opened()
        sink, stream.sink = stream.sink, None
        if sink is not None:
            sink.on_end()

    def _windows_changed(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.window_opened()
            return
        for stream in list(self.streams.values()):
            stream.window_opened()

    def _on_goaway(self, last_stream_id: int, code: object) -> None:
        """No new streams; the ones the peer says it may have processed finish; the others were
        never processed (RFC 9113 6.8)."""
        self.goaway = True
        self.pool.forget(self)
        for sid in [s for s in self.streams if s > last_stream_id]:
            self._close_stream(sid, StreamFailed(f"upstream GOAWAY ({code})", processed=False))
        if not self.streams:
            self.close()

    def _close_stream(self, stream_id: int, exc: StreamFailed) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        self._forget_stream(stream_id)
        stream.fail(exc)

    def _forget_stream(self, stream_id: int) -> None:
        if self.streams.pop(stream_id, None) is not None and not self.streams:
            if self.goaway or self.opened >= self.limits.requests:
                self.close()
            else:
                self._arm_idle()

    def _fail_all(self, exc: StreamFailed) -> None:
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.fail(exc)

    # -- used by attempts ---------------------------------------------------------------

    @property
    def available(self) -> bool:
        """A new stream may be opened here now."""
        return (
            not self.closed
            and not self.goaway
            and self.opened < self.limits.requests
            and len(self.streams) < self.h2.remote_max_concurrent
        )

    def open_stream(
        self, headers: list[tuple[bytes, bytes]], sink: StreamSink, end: bool = False
    ) -> H2Stream:
        """Send a request head on a new stream (the caller checked ``available``)."""
        try:
            stream_id = self.h2.get_next_available_stream_id()
            self.h2.send_headers(stream_id, headers, end_stream=end)
        except ProtocolError as e:
            # (a field h2 refuses, or a connection that closed meanwhile): nothing was sent
            raise StreamFailed(f"cannot open a stream: {e}", processed=False) from None
        stream = H2Stream(self, stream_id, sink)
        self.streams[stream_id] = stream
        self.opened += 1
        self.flush()
        return stream

    def reset_stream(self, stream: H2Stream, code: ErrorCode) -> None:
        if self.streams.get(stream.id) is not stream:
            return
        self.h2.reset_stream(stream.id, code)
        self.flush()
        self._forget_stream(stream.id)
        stream.fail(StreamFailed("stream cancelled"))

    def acknowledge(self, stream_id: int, n: int) -> None:
        if self.closed:
            return
        self.h2.acknowledge_received_data(n, stream_id)
        self.flush()

    def flush(self) -> None:
        """Write what the connection has queued, once this turn of the event loop is over: a
        request's HEADERS and DATA frames (and the acknowledgements of one read) leave in one
        write."""
        if not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self.flush_now)

    def flush_now(self) -> None:
        self._flush_soon = False
        data = self.h2.data_to_send()
        t = self.transport
        if data and t is not None and not t.is_closing():
            t.write(data)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.pool.forget(self)
        self._cancel_idle()
        try:
            self.h2.close_connection()
            self.flush_now()
        except ProtocolError:
            pass
        if self.transport is not None:
            self.transport.close()

    # -- idle ---------------------------------------------------------------------------

    def _arm_idle(self) -> None:
        """Idle from now: one timer per idle period, not one per stream (a timer armed and
        cancelled per call cost ~3 us, measured); it looks again when it fires."""
        loop = asyncio.get_running_loop()
        self._idle_since = loop.time()
        if self._idle_timer is None:
            self._idle_timer = loop.call_later(self.limits.idle_timeout, self._idle_expired)

    def _cancel_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle_expired(self) -> None:
        self._idle_timer = None
        if self.streams or self.closed:
            return  # busy: armed again when its last stream ends
        loop = asyncio.get_running_loop()
        left = self._idle_since + self.limits.idle_timeout - loop.time()
        if left > 0:  # streams came and went meanwhile: idle for less than the timeout
            self._idle_timer = loop.call_later(left, self._idle_expired)
            return
        self.close()  # keepalive_pool.idle_timeout, as for HTTP/1.1 connections


class H2Pool:
    """HTTP/2 connections per key. Only this worker's event loop touches it."""

    def __init__(self) -> None:
        self._conns: dict[Hashable, list[H2Connection]] = {}
        self._connecting: dict[Hashable, asyncio.Future[H2Connection]] = {}

    async def get(
        self,
        key: Hashable,
        host: str,
        port: int,
        *,
        ssl_ctx: ssl.SSLContext | None,
        server_hostname: str | None,
        timeout: float,
        limits: PoolLimits,
    ) -> H2Connection:
        """A connection with room for one more stream: an open one, the one being opened for
        this key, or a new one."""
        while True:
            found = self.get_available(key)
            if found is not None:
                return found
            pending = self._connecting.get(key)
            if pending is None:
                break
            try:
                conn = await asyncio.wait_for(asyncio.shield(pending), timeout)
            except (OSError, TimeoutError):
                break  # try our own connection (and report our own error)
            if conn.available:
                return conn
        fut: asyncio.Future[H2Connection] = asyncio.get_running_loop().create_future()
        self._connecting[key] = fut
        try:
            conn = await self._connect(key, host, port, ssl_ctx, server_hostname, timeout, limits)
        except BaseException as e:
            if not fut.done():
                fut.set_exception(e if isinstance(e, OSError | TimeoutError) else OSError(str(e)))
                fut.exception()  # (retrieved: nobody may be waiting)
            raise
        finally:
            if self._connecting.get(key) is fut:
                del self._connecting[key]
        self._conns.setdefault(key, []).append(conn)
        if not fut.done():
            fut.set_result(conn)
        return conn

    def get_available(self, key: Hashable) -> H2Connection | None:
        """An open connection with room for one more stream now (None: none has)."""
        for conn in self._conns.get(key, ()):
            if conn.available:
                return conn
        return None

    async def _connect(
        self,
        key: Hashable,
        host: str,
        port: int,
        ssl_ctx: ssl.SSLContext | None,
        server_hostname: str | None,
        timeout: float,
        limits: PoolLimits,
    ) -> H2Connection:
        transport, proto = await open_connection(
            lambda: H2Connection(self, key, limits), host, port, ssl_ctx, server_hostname, timeout
        )
        if ssl_ctx is not None:
            sslobj = transport.get_extra_info("ssl_object")
            if sslobj is None or sslobj.selected_alpn_protocol() != "h2":
                proto.close()
                raise ConnectionRefusedError("the upstream did not select ALPN h2")
        return proto

    def forget(self, conn: H2Connection) -> None:
        conns = self._conns.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._conns[conn.key]

    def connections(self, key: Hashable) -> list[H2Connection]:
        return list(self._conns.get(key, ()))

    def close_all(self) -> None:
        for conns in list(self._conns.values()):
            for c in list(conns):
                c.close()
        self._conns.clear()
