"""gRPC upstreams (``scheme: grpc`` / ``grpcs``): each attempt is an object the exchange holds
(``ExchangeBase.held``), not a part of the exchange (issue #12's shape): it holds the exchange,
the server and the HTTP/2 stream, and calls into the exchange's response side (``response``).

Full duplex: the request body streams to the upstream as the client sends it while the
response streams back (client-streaming and bidi calls). The upstream's trailers are put in
``resp_trailers`` (and ``ctx.upstream_trailers`` for plugins) before ``on_upstream_complete``;
a trailers-only answer is passed as headers. A failure before anything was sent may be retried
(``proxy.retry``); a gRPC client gets a failure as a gRPC status it can read (UNAVAILABLE,
DEADLINE_EXCEEDED), with HTTP status 200 (trailers-only) or, once the response has started,
in the trailers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from tollway.httprules.fields import RESPONSE_DROP
from tollway.httprules.grpc import (
    SKIP_GRPC,
    error_fields,
    is_grpc,
    message_value,
    parse_timeout,
    request_fields,
    status_for,
)
from tollway.httprules.upstream_head import host_field
from tollway.proxy.driver import drive, pick_context
from tollway.proxy.retry import Attempted, deadline_of
from tollway.runtime.compiled import DEFAULT_TIMEOUTS, CompiledRoute, CompiledUpstream, Timeouts
from tollway.upstream.h2conn import H2Connection, H2Stream, StreamFailed

if TYPE_CHECKING:
    from tollway.balancer import PickContext, Server
    from tollway.proxy.base import ExchangeBase

log = logging.getLogger("tollway.proxy")

GRPC_SCHEMES = frozenset({"grpc", "grpcs"})
_STATUS_FIELDS = frozenset({b"grpc-status", b"grpc-message", b"grpc-status-details-bin"})


class GrpcFailure(Exception):
    """An attempt failed: the HTTP status a plain client gets (502, 504, 499), and whether it
    may be retried (nothing reached the upstream, no response began)."""

    def __init__(self, status: int, reason: str, *, sent: bool, retryable: bool = True) -> None:
        super().__init__(reason)
        self.status = status
        self.sent = sent
        self.retryable = retryable

    def attempted(self) -> Attempted:
        return Attempted(self.status, self.retryable, self.sent)


class H2Head:
    """The upstream's response head as the response side reads it (``ResponseHead`` of
    ``upstream.pool``): end-to-end fields as flat ``name, ": ", value, CRLF`` pieces."""

    __slots__ = ("connection", "content_length", "lines")

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.connection: bytes | None = None  # HTTP/2 has none (RFC 9113 8.2.2)
        self.lines: list[bytes] = []
        self.content_length: bytes | None = None
        for k, v in headers:
            if k[:1] == b":" or k in RESPONSE_DROP:
                continue
            if k == b"content-length":
                self.content_length = v
            else:
                self.lines += (k, b": ", v, b"\r\n")

    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        lines = self.lines
        return list(zip(lines[0::4], lines[2::4], strict=True))


async def proxy_grpc(
    ex: ExchangeBase,
    route: CompiledRoute,
    up: CompiledUpstream,
    first: tuple[Server, PickContext | None, object] | None,
) -> None:
    """Attempts with retries (only while nothing was sent upstream: ``driver.drive``), then
    the answer."""
    ctx = ex.ctx
    assert ctx is not None
    timeouts = route.timeouts or up.timeouts or DEFAULT_TIMEOUTS
    ex.read_timeout = timeouts.read
    started = time.monotonic()
    call_timeout = parse_timeout(ctx.headers.get("grpc-timeout"))
    call = GrpcCall(ex, up, timeouts, started + call_timeout if call_timeout is not None else 0.0)
    retry_deadline = deadline_of(started, up.retry_timeout)
    if first is None:
        await drive(call, pick_context(ex, up), retry_deadline)
    else:
        await drive(call, first[1], retry_deadline, first[0])


class GrpcCall:
    """The call as each attempt sends it (the driver's ``Call``)."""

    __slots__ = ("call_deadline", "ex", "last", "timeouts", "up")

    def __init__(
        self, ex: ExchangeBase, up: CompiledUpstream, timeouts: Timeouts, call_deadline: float
    ) -> None:
        self.ex = ex
        self.up = up
        self.timeouts = timeouts
        self.call_deadline = call_deadline  # the client's grpc-timeout (0: none)
        self.last: GrpcAttempt | None = None

    def attempt(self, server: Server, pick: PickContext | None) -> GrpcAttempt:
        self.last = GrpcAttempt(self.ex, self.up, server, self.timeouts, self.call_deadline)
        return self.last

    def resendable(self) -> bool:
        # A request body streamed from the client cannot be sent again (not kept).
        return self.last is None or not self.last.consumed

    def give_up(self, status: int, statuses: list[str]) -> None:
        _give_up(self.ex, status, statuses)


def _give_up(ex: ExchangeBase, status: int, statuses: list[str]) -> None:
    """Answer a failed call: a gRPC client reads a gRPC status, others an HTTP error page."""
    if ex.ctx is not None and statuses:
        ex.ctx.upstream_status = ", ".join(statuses)
    if ex.client_closed:
        return
    ctx = ex.ctx
    grpc_client = ctx is not None and is_grpc(ctx.headers.get("content-type"))
    # (the cause stays in the debug log: node addresses are not the client's business)
    reason = "upstream timed out" if status == 504 else "upstream unavailable"
    if not ex.response_started:
        if ex.reject_status:
            ex.respond_error(ex.reject_status)  # the client's body was bad
        elif grpc_client:
            ex.upstream_statuses = statuses or None
            _grpc_error(ex, status_for(status), reason)
        else:
            ex.upstream_statuses = statuses or None
            ex.respond_error(status)
        return
    if grpc_client and not ex._finished:
        # The response began: the call ends with the failure's status in its trailers.
        trailers = [
            (b"grpc-status", b"%d" % status_for(status)),
            (b"grpc-message", message_value(reason)),
        ]
        ex.resp_trailers = trailers
        if ctx is not None:
            ctx.upstream_trailers = trailers
        ex.on_upstream_complete()
    else:
        ex.keep_alive = False  # the client sees the answer cut short


def _grpc_error(ex: ExchangeBase, code: int, reason: str) -> None:
    """A gRPC status as the whole answer: trailers-only (HTTP status 200, the status in the
    headers) to an HTTP/1.1 client (gRPC-Web reads it so); an HTTP/2 client's stream sends its
    head at once, so there the status ends the stream in trailers (a response with no message)."""
    fields = error_fields(code, reason)
    if not ex.proto.http2:
        ex.respond(200, b"", fields)
        return
    ex.resp_trailers = fields[1:]
    if ex.ctx is not None:
        ex.ctx.upstream_trailers = ex.resp_trailers
    ex.on_upstream_headers(200, H2Head(fields[:1]))
    ex.on_upstream_complete()


class GrpcAttempt:
    """One attempt: a stream on a pooled HTTP/2 connection to ``server`` (a ``StreamSink``)."""

    __slots__ = (
        "_deadline",
        "_done",
        "call_deadline",
        "consumed",
        "ex",
        "server",
        "stream",
        "timeouts",
        "trailers",
        "up",
    )

    def __init__(
        self,
        ex: ExchangeBase,
        up: CompiledUpstream,
        server: Server,
        timeouts: Timeouts,
        call_deadline: float,
    ) -> None:
        self.ex = ex
        self.up = up
        self.server = server
        self.timeouts = timeouts
        self.call_deadline = call_deadline
        self.stream: H2Stream | None = None
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.consumed = False  # request body bytes were taken from the client
        self._done: asyncio.Future[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None

    async def run(self) -> GrpcFailure | None:
        ex, server = self.ex, self.server
        name = (
            self.up.node_hosts.get(server.addr, server.host) if self.up.node_hosts else server.host
        )
        conn = await self._connect(name)
        if isinstance(conn, GrpcFailure):
            return conn
        loop = ex.proto.state.loop
        self._done = loop.create_future()
        body, streams = self._body()
        try:
            self.stream = stream = conn.open_stream(
                self._head(name, server.port, self._remaining()),
                self,
                end=body is None and not streams,
            )
        except StreamFailed as e:
            return GrpcFailure(502, str(e), sent=False)
        ex.reading = True
        ex.last_activity = loop.time()
        remaining = self._remaining()
        if remaining is not None:
            self._deadline = loop.call_later(remaining, self._deadline_passed)
        sender = None
        if body is not None and len(body) <= conn.h2.local_flow_control_window(stream.id):
            # Within the window nothing waits: sent here, the head and the body leave in one
            # write (H2Connection.flush).
            await self._send(stream, body)
        elif body is not None or streams:
            sender = loop.create_task(self._send(stream, body))
        try:
            await self._done
        except StreamFailed as e:
            return self._failure(e)
        except GrpcFailure as f:
            return f
        finally:
            self._end(sender)
        return None

    async def _connect(self, name: str) -> H2Connection | GrpcFailure:
        """A pooled HTTP/2 connection to the server, within the connect timeout (and the
        call's deadline)."""
        ex, up, server = self.ex, self.up, self.server
        remaining = self._remaining()
        if remaining is not None and remaining <= 0:
            return GrpcFailure(504, "deadline exceeded", sent=False, retryable=False)
        connect = self.timeouts.connect
        try:
            conn = await ex.proto.state.h2pool.get(
                (up.pool_key, server.host, server.port),
                server.host,
                server.port,
                ssl_ctx=up.ssl_ctx,
                server_hostname=name.strip("[]"),
                timeout=connect if remaining is None else min(remaining, connect),
                limits=up.limits,
            )
        except TimeoutError:
            return GrpcFailure(504, "connect timeout", sent=False)
        except OSError as e:
            return GrpcFailure(502, f"connect failed: {e}", sent=False)
        if ex.client_closed:
            return GrpcFailure(499, "client closed", sent=False, retryable=False)
        return conn

    def _body(self) -> tuple[bytes | None, bool]:
        """(a body to send whole, or None; whether the client's streams instead). A plugin's
        replaced body, or the client's when it has all arrived (read, not taken: a retry sends
        it again), goes whole; a body still arriving streams as it comes."""
        ex = self.ex
        ctx = ex.ctx
        if ctx is not None and ctx.up_body is not None:
            return ctx.up_body, False
        if not ex.has_body:
            return None, False
        if ex.body_complete and not ex.reject_status:
            ex.proto.resume_reading()
            return b"".join(ex.body or ()), False
        return None, True

    def _end(self, sender: asyncio.Task[None] | None) -> None:
        self.ex.reading = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if sender is not None and not sender.done():
            sender.cancel()
        stream = self.stream
        if stream is not None and stream.failed is None and not stream.remote_ended:
            stream.cancel()

    def _remaining(self) -> float | None:
        if not self.call_deadline:
            return None
        return self.call_deadline - time.monotonic()

    def _failure(self, e: StreamFailed) -> GrpcFailure:
        started = self.ex.response_started
        sent = e.processed or self.consumed
        return GrpcFailure(502, str(e), sent=sent, retryable=not started)

    def _head(self, name: str, port: int, timeout: float | None) -> list[tuple[bytes, bytes]]:
        ex, up = self.ex, self.up
        ctx = ex.ctx
        assert ctx is not None
        authority = host_field(
            ctx.up_host, up.pass_host, up.upstream_host, up.scheme, name, port, ex.host_raw
        )
        path = ctx.up_uri.encode("latin-1") if ctx.up_uri is not None else ex.target
        scheme = b"https" if up.scheme == "grpcs" else b"http"
        edits: dict[bytes, bytes | None] | None = None
        if ctx.up_header_ops is not None:
            headers = ctx.headers
            edits = {}
            for op in ctx.up_header_ops:
                lname = op[0].lower()
                value = headers.get(lname)
                edits[lname.encode("latin-1")] = None if value is None else value.encode("latin-1")
        tokens = ex.connection_tokens
        skip = SKIP_GRPC | tokens if tokens else SKIP_GRPC
        method = (ctx.up_method or ex.method).encode("latin-1")
        pseudo = (method, scheme, path, authority)
        return request_fields(pseudo, ex.raw_headers, skip, edits, timeout)

    async def _send(self, stream: H2Stream, body: bytes | None) -> None:
        """The request body: ``body`` whole, else the client's as it arrives."""
        send_timeout = self.timeouts.send
        try:
            if body is not None:
                await stream.send_data(body, end=True, timeout=send_timeout)
                return
            ex = self.ex
            while True:
                chunk = await ex.next_body_chunk()
                if ex.reject_status or ex.client_closed:
                    self._fail(GrpcFailure(499, "client body failed", sent=True, retryable=False))
                    return
                if chunk is None:
                    await stream.end()
                    return
                self.consumed = True
                await stream.send_data(chunk, timeout=send_timeout)
        except TimeoutError:
            self._fail(GrpcFailure(504, "send timeout", sent=True, retryable=False))
        except StreamFailed:
            pass  # the stream's own failure reached on_failed (or the response is complete)

    def _fail(self, f: GrpcFailure) -> None:
        d = self._done
        if d is not None and not d.done():
            d.set_exception(f)

    def _deadline_passed(self) -> None:
        self._deadline = None
        self._fail(GrpcFailure(504, "deadline exceeded", sent=True, retryable=False))

    # -- held by the exchange: what it tells the attempt ---------------------------------

    def upstream_done(self) -> None:
        """The response side finished the answer (from ``on_end``)."""
        d = self._done
        if d is not None and not d.done():
            d.set_result(None)

    def upstream_failed(self, exc: BaseException | None) -> None:
        self._fail(GrpcFailure(502, str(exc), sent=True, retryable=not self.ex.response_started))

    def on_read_timeout(self) -> None:
        self._fail(
            GrpcFailure(504, "read timeout", sent=True, retryable=not self.ex.response_started)
        )

    def client_gone(self) -> None:
        self._fail(GrpcFailure(499, "client closed", sent=True, retryable=False))

    def pause(self) -> None:
        if self.stream is not None:
            self.stream.pause_reading()

    def resume(self) -> None:
        if self.stream is not None:
            self.stream.resume_reading()

    # -- StreamSink: the upstream's answer, into the exchange's response side -----------

    def on_response(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        status = 502
        for k, v in headers:
            if k == b":status":
                status = int(v)
                break
        ex = self.ex
        if ended and ex.proto.http2:
            # Trailers-only (one HEADERS with END_STREAM): an HTTP/2 client's stream sends its
            # head at once, so the status goes in the trailers that end it (a response with no
            # message: PROTOCOL-HTTP2.md allows both forms).
            self.trailers = [(k, v) for k, v in headers if k in _STATUS_FIELDS]
            headers = [(k, v) for k, v in headers if k not in _STATUS_FIELDS]
        ex.on_upstream_headers(status, H2Head(headers))
        ex.flush()

    def on_data(self, data: bytes) -> None:
        ex = self.ex
        ex.on_upstream_body(data)
        ex.flush()  # (a client that reads slowly pauses the stream: ``pause``)

    def on_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.trailers = [(k, v) for k, v in headers if k[:1] != b":"]

    def on_end(self) -> None:
        ex = self.ex
        if not ex.client_closed:
            ex.resp_trailers = self.trailers
            if ex.ctx is not None:
                ex.ctx.upstream_trailers = self.trailers
            ex.on_upstream_complete()
        d = self._done
        if d is not None and not d.done():
            d.set_result(None)

    def on_failed(self, exc: StreamFailed) -> None:
        d = self._done
        if d is not None and not d.done():
            d.set_exception(exc)
