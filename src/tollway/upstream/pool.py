"""The upstream HTTP/1.1 client: one asyncio Protocol per connection and a keep-alive pool.

The connection parses responses with httptools and hands events to its current ``ResponseSink``
(the request being proxied). Pool bookkeeping is plain code; connections are LIFO per key
(scheme, host, port, TLS parameters) so the warmest connection is reused first.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Hashable
from typing import Protocol, TypeVar

import httptools
from mypy_extensions import mypyc_attr

from tollway.httprules.fields import RESPONSE_DROP

# Response header name (as sent) -> what the gateway does with it: 0 forward, 1 drop
# (hop-by-hop, Server), 2 Content-Length, 3 Connection. Learned per spelling, bounded.
_FORWARD, _DROP, _CONTENT_LENGTH, _CONNECTION = 0, 1, 2, 3
_ACTIONS: dict[bytes, int] = {}


def _action(name: bytes) -> int:
    lname = name.lower()
    if lname == b"content-length":
        action = _CONTENT_LENGTH
    elif lname == b"connection":
        action = _CONNECTION
    elif lname in RESPONSE_DROP:
        action = _DROP
    else:
        action = _FORWARD
    if len(_ACTIONS) < 4096:
        _ACTIONS[name] = action
    return action


class ResponseHead(Protocol):
    """A response head as the response side reads it: an ``UpstreamConnection`` (HTTP/1.1)
    or an HTTP/2 stream's head."""

    @property
    def lines(self) -> list[bytes]: ...
    @property
    def content_length(self) -> bytes | None: ...
    @property
    def connection(self) -> bytes | None: ...
    @property
    def fields(self) -> list[tuple[bytes, bytes]] | None:
        """An HTTP/2 upstream's end-to-end fields as HTTP/2 pairs (lowercase, none
        connection-specific: RFC 9113 8.2), which an HTTP/2 client's stream sends as they are;
        None for an HTTP/1.1 head."""
        ...

    def header_pairs(self) -> list[tuple[bytes, bytes]]: ...


class ResponseSink(Protocol):
    def on_upstream_headers(self, status: int, conn: UpstreamConnection) -> None:
        """The response head is in ``conn``: ``lines`` (the end-to-end headers as flat
        ``name, b": ", value, b"\\r\\n"`` pieces), ``content_length``, ``connection``."""

    def on_upstream_body(self, data: bytes) -> None: ...
    def on_upstream_complete(self) -> None: ...
    def on_upstream_error(self, exc: BaseException | None) -> None: ...
    def flush(self) -> None: ...


# Compiled by mypyc (tollway.native); h2conn.H2Connection, interpreted, derives from it.
@mypyc_attr(allow_interpreted_subclasses=True)
class WritePaused(asyncio.Protocol):
    """The write side of an upstream connection (HTTP/1.1 here, HTTP/2 in ``h2conn``): the
    transport says when its buffer is full (``pause_writing``); a sender awaits ``drain``,
    woken when it empties or the connection is lost (``_wake_drain``)."""

    __slots__ = ("_drain", "_paused", "closed")

    def __init__(self) -> None:
        self.closed = False
        self._paused = False
        self._drain: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drain()

    def _wake_drain(self) -> None:
        d = self._drain
        if d is not None and not d.done():
            d.set_result(None)

    @property
    def write_paused(self) -> bool:
        return self._paused

    async def drain(self) -> None:
        if not self._paused or self.closed:
            return
        self._drain = asyncio.get_running_loop().create_future()
        try:
            await self._drain
        finally:
            self._drain = None


class UpstreamConnection(WritePaused):
    __slots__ = (
        "_parser",
        "bytes_received",
        "connection",
        "content_length",
        "fields",
        "head_request",
        "idle_since",
        "idle_timeout",
        "keep_alive",
        "key",
        "lines",
        "pool",
        "reading_paused",
        "requests",
        "sink",
        "status",
        "transport",
        "upgraded",
    )

    def __init__(self, pool: Pool, key: Hashable) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        # The response head being parsed (see ResponseSink.on_upstream_headers).
        self.lines: list[bytes] = []
        self.content_length: bytes | None = None
        self.connection: bytes | None = None
        # (an HTTP/1.1 head: ``lines`` only; a slot, not a class attribute: read per answer)
        self.fields: list[tuple[bytes, bytes]] | None = None
        self.sink: ResponseSink | None = None
        self.requests = 0
        self.idle_since = 0.0
        self.idle_timeout = 60.0  # the pool's idle_timeout, set when released to it
        super().__init__()
        self.keep_alive = True
        self.reading_paused = False  # a slow client paused us (see Pool.release)
        self.bytes_received = 0
        self.head_request = False
        self.status = 0
        self.upgraded = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if self.upgraded:
            if sink is not None:
                sink.on_upstream_body(data)
            return
        if sink is None:
            # Bytes on an idle connection: the peer is misbehaving; drop the connection.
            self.close()
            return
        self.bytes_received += len(data)
        assert self._parser is not None
        try:
            self._parser.feed_data(data)
            if self.sink is sink:  # (a completed response was flushed by the sink itself)
                sink.flush()  # what this read produced leaves in one client write
        except httptools.HttpParserUpgrade as e:
            off = e.args[0] if e.args and isinstance(e.args[0], int) else len(data)
            self.upgraded = True
            rest = data[off:]
            if rest and self.sink is not None:
                self.sink.on_upstream_body(rest)
        except httptools.HttpParserError as err:
            self.keep_alive = False
            self.sink = None
            self.close()
            sink.on_upstream_error(err)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        self._wake_drain()
        sink = self.sink
        if sink is not None:
            self.sink = None
            if self.upgraded:
                sink.on_upstream_complete()
            else:
                sink.on_upstream_error(
                    exc or ConnectionResetError("upstream closed the connection")
                )

    # -- httptools callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        action = _ACTIONS.get(name)
        if action is None:
            action = _action(name)
        if not action:
            self.lines += (name, b": ", value, b"\r\n")
        elif action == _CONTENT_LENGTH:
            self.content_length = value
        elif action == _CONNECTION:
            self.connection = value

    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        """The forwarded headers as (name, value) pairs."""
        lines = self.lines
        return list(zip(lines[0::4], lines[2::4], strict=True))

    def on_message_begin(self) -> None:
        # A response nobody asked for (bytes after the last one, in the same read): the
        # connection is out of step with its requests and must not be reused.
        if self.sink is None:
            self.close()

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._reset_head()  # 100 Continue and friends are not forwarded
            return
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        sink = self.sink
        if sink is not None:
            sink.on_upstream_headers(status, self)
        if self.head_request and status != 101:
            # A response to HEAD has no body whatever its Content-Length says (RFC 9110 9.3.2).
            self._message_complete()

    def on_body(self, body: bytes) -> None:
        if self.head_request:
            return
        sink = self.sink
        if sink is not None:
            sink.on_upstream_body(body)

    def on_message_complete(self) -> None:
        # 1xx (including 101: the tunnel takes over) and spurious completions end nothing.
        status = self.status
        if status < 200 or self.head_request:
            return
        sink = self.sink
        self.sink = None
        if sink is not None:
            sink.on_upstream_complete()

    def _message_complete(self) -> None:
        sink = self.sink
        self.sink = None
        if sink is not None:
            sink.on_upstream_complete()

    # -- used by the pipeline -----------------------------------------------------------

    def start(self, sink: ResponseSink, head_request: bool) -> None:
        self.sink = sink
        self.requests += 1
        self.status = 0
        self.bytes_received = 0
        self.lines = []
        self.content_length = self.connection = None
        # A fresh parser only when needed: after a HEAD the old one would expect a body.
        if self._parser is None or self.head_request:
            self._parser = httptools.HttpResponseParser(self)
        self.head_request = head_request

    def _reset_head(self) -> None:
        self.lines = []
        self.content_length = None
        self.connection = None

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        self.sink = None
        if self.transport is not None:
            self.transport.close()


class PoolLimits:
    __slots__ = ("idle_timeout", "requests", "size")

    def __init__(self, size: int = 320, idle_timeout: float = 60.0, requests: int = 1000) -> None:
        self.size = size
        self.idle_timeout = idle_timeout
        self.requests = requests


class Pool:
    """Idle keep-alive connections per key. Only this worker's event loop touches it."""

    def __init__(self) -> None:
        self._idle: dict[Hashable, list[UpstreamConnection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def get_idle(self, key: Hashable) -> UpstreamConnection | None:
        stack = self._idle.get(key)
        while stack:
            conn = stack.pop()
            t = conn.transport
            if conn.closed or t is None or t.is_closing():
                continue
            if time.monotonic() - conn.idle_since > conn.idle_timeout:
                conn.close()
                continue
            return conn
        return None

    async def connect(
        self,
        key: Hashable,
        host: str,
        port: int,
        *,
        ssl_ctx: ssl.SSLContext | None,
        server_hostname: str | None,
        timeout: float,
    ) -> UpstreamConnection:
        _, proto = await open_connection(
            lambda: UpstreamConnection(self, key), host, port, ssl_ctx, server_hostname, timeout
        )
        return proto

    def release(self, conn: UpstreamConnection, limits: PoolLimits, now: float = 0.0) -> None:
        """Keep ``conn`` for reuse when its response was read to the end. One with request
        bytes still unsent is closed; one a slow client had paused is read again (its
        response is complete: whatever arrives now is unasked for and closes it). ``now``:
        ``time.monotonic()`` when the caller has just read it."""
        if (
            conn.closed
            or not conn.keep_alive
            or conn.upgraded
            or conn.requests >= limits.requests
            or conn._paused  # (write_paused, without a property call per request)
        ):
            conn.close()
            return
        if conn.reading_paused:
            conn.resume_reading()
        stack = self._idle.get(conn.key)
        if stack is None:
            stack = self._idle[conn.key] = []
        elif len(stack) >= limits.size:
            conn.close()
            return
        conn.sink = None
        conn.idle_timeout = limits.idle_timeout
        conn.idle_since = now or time.monotonic()
        stack.append(conn)
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(5.0, self._sweep)

    def forget(self, conn: UpstreamConnection) -> None:
        stack = self._idle.get(conn.key)
        if stack and conn in stack:
            stack.remove(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        any_left = False
        for key, stack in list(self._idle.items()):
            keep = [c for c in stack if not c.closed and now - c.idle_since <= c.idle_timeout]
            for c in stack:
                if c not in keep:
                    c.close()
            if keep:
                self._idle[key] = keep
                any_left = True
            else:
                del self._idle[key]
        if any_left:
            self._sweeper = asyncio.get_running_loop().call_later(5.0, self._sweep)

    def close_all(self) -> None:
        for stack in self._idle.values():
            for c in stack:
                c.close()
        self._idle.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


P = TypeVar("P", bound=asyncio.BaseProtocol)


async def open_connection(
    factory: Callable[[], P],
    host: str,
    port: int,
    ssl_ctx: ssl.SSLContext | None,
    server_hostname: str | None,
    timeout: float,
) -> tuple[asyncio.Transport, P]:
    """A connection to an upstream node (HTTP/1.1 or HTTP/2): an IPv6 node is written in
    brackets; SNI only with TLS; the connect timeout covers the TLS handshake too."""
    loop = asyncio.get_running_loop()
    addr = host[1:-1] if host.startswith("[") else host
    async with asyncio.timeout(timeout):
        transport, proto = await loop.create_connection(
            factory,
            addr,
            port,
            ssl=ssl_ctx,
            server_hostname=server_hostname if ssl_ctx is not None else None,
        )
    return transport, proto
