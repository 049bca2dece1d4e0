"""gRPC upstreams (``scheme: grpc`` / ``grpcs``): each attempt is an object the exchange holds
(``ExchangeBase.held``), not a part of the exchange (issue #12's shape): it holds the exchange,
the server and the HTTP/2 stream, and calls into the exchange's response side (``response``).

Full duplex: the request body streams to the upstream as the client sends it while the
response streams back (client-streaming and bidi calls). The upstream's trailers are put in
``resp_trailers`` (and ``ctx.upstream_trailers`` for plugins) before ``on_upstream_complete``;
a trailers-only answer is passed as headers. A failure before anything was sent may be retried
(``proxy.retry``); a gRPC client gets a failure as a gRPC status it can read (UNAVAILABLE,
DEADLINE_EXCEEDED), with HTTP status 200 (trailers-only) or, once the response has started,
in the trailers. The common unary call takes a fast path with no task (``forward_grpc``), as
HTTP/1.1 requests do (``attempt.forward``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from tollway.httprules.grpc import SKIP_GRPC, parse_timeout, request_fields
from tollway.httprules.upstream_head import host_field
from tollway.proxy.driver import drive, next_server, pick_context, succeeded
from tollway.proxy.grpc_answer import H2Head, give_up
from tollway.proxy.grpc_fields import fields_of, grpc_timeout
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


async def proxy_grpc(
    ex: ExchangeBase,
    route: CompiledRoute,
    up: CompiledUpstream,
    first: tuple[Server, PickContext | None, object] | None,
    started: float = 0.0,
) -> None:
    """Attempts with retries (only while nothing was sent upstream: ``driver.drive``), then
    the answer. ``first``: a server already picked, and how an attempt on it failed (the fast
    path's, ``forward_grpc``; None: not attempted); ``started``: when that attempt began (the
    call's deadline and the retry_timeout count from there)."""
    ctx = ex.ctx
    assert ctx is not None
    timeouts = route.timeouts or up.timeouts or DEFAULT_TIMEOUTS
    ex.read_timeout = timeouts.read
    started = started or time.monotonic()
    call_timeout = parse_timeout(grpc_timeout(ex))
    call = GrpcCall(ex, up, timeouts, started + call_timeout if call_timeout is not None else 0.0)
    retry_deadline = deadline_of(started, up.retry_timeout)
    if first is None:
        await drive(call, pick_context(ex, up), retry_deadline)
    else:
        failure = first[2] if isinstance(first[2], GrpcFailure) else None
        await drive(call, first[1], retry_deadline, first[0], failure)


def forward_grpc(ex: ExchangeBase, route: CompiledRoute, up: CompiledUpstream) -> None:
    """The fast path: a stream on an open pooled HTTP/2 connection with room for it, the
    request's body whole (a unary call's: it came with the head), no task: the attempt ends
    in the stream's callbacks, and a failure hands over to the driver (``proxy_grpc``) with
    the failure, as a first attempt of its would. Else the driver runs in a task."""
    ctx = ex.ctx
    assert ctx is not None
    if ex.client_closed or ex.reject_status or (ex.has_body and not ex.body_complete):
        ex._spawn(proxy_grpc(ex, route, up, None))
        return
    pick = None if up.single is not None else pick_context(ex, up)
    server = next_server(up, pick)
    if server is None:
        ex._spawn(proxy_grpc(ex, route, up, None))  # (the driver answers: no node left)
        return
    state = ex.proto.state
    conn = state.h2pool.get_available((up.pool_key, server.host, server.port))
    if conn is None:  # a connection to open: the driver connects, within its timeouts
        ex._spawn(proxy_grpc(ex, route, up, (server, pick, None)))
        return
    timeouts = route.timeouts or up.timeouts or DEFAULT_TIMEOUTS
    ex.read_timeout = timeouts.read
    ctx.upstream_addr = server.addr
    started = time.monotonic()
    fields = fields_of(ex)
    call_timeout = parse_timeout(grpc_timeout(ex) if fields is None else fields.timeout)
    deadline = started + call_timeout if call_timeout is not None else 0.0
    attempt = GrpcAttempt(ex, up, server, timeouts, deadline, pick, started)
    ex.held = attempt
    failure = attempt.start(conn, _node_name(up, server))
    if failure is not None:
        attempt.failed_fast(failure)


def _node_name(up: CompiledUpstream, server: Server) -> str:
    """The name of ``server`` for ``:authority`` and SNI (a domain node resolved to an IP)."""
    return up.node_hosts.get(server.addr, server.host) if up.node_hosts else server.host


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
        give_up(self.ex, status, statuses)


class GrpcAttempt:
    """One attempt: a stream on a pooled HTTP/2 connection to ``server`` (a ``StreamSink``).
    Run by the driver (``run``: it awaits ``_done``), or the fast path's (``forward_grpc``:
    ``started`` set, no ``_done``; it ends in the stream's callbacks, ``_settled``)."""

    __slots__ = (
        "_deadline",
        "_done",
        "_sender",
        "call_deadline",
        "consumed",
        "ex",
        "pick",
        "server",
        "started",
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
        pick: PickContext | None = None,
        started: float = 0.0,
    ) -> None:
        self.ex = ex
        self.up = up
        self.server = server
        self.timeouts = timeouts
        self.call_deadline = call_deadline
        self.pick = pick
        self.started = started  # the fast path's attempt (0: the driver's)
        self.stream: H2Stream | None = None
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.consumed = False  # request body bytes were taken from the client
        self._done: asyncio.Future[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._sender: asyncio.Task[None] | None = None

    async def run(self) -> GrpcFailure | None:
        name = _node_name(self.up, self.server)
        conn = await self._connect(name)
        if isinstance(conn, GrpcFailure):
            return conn
        self._done = self.ex.proto.state.loop.create_future()
        try:
            failure = self.start(conn, name)
            if failure is not None:
                return failure
            await self._done
        except StreamFailed as e:
            return self._failure(e)
        except GrpcFailure as f:
            return f
        finally:
            self._end()
        return None

    def start(self, conn: H2Connection, name: str) -> GrpcFailure | None:
        """Open the stream and send the head, and the body: at once when it is whole and
        within the windows (the head and the body then leave in one write: H2Connection.flush),
        else from a task."""
        ex = self.ex
        loop = ex.proto.state.loop
        body, streams = self._body()
        try:
            self.stream = stream = conn.open_stream(
                self._head(name, self.server.port, self._remaining()),
                self,
                end=body is None and not streams,
            )
            sent = body is not None and stream.send_now(body, True)
        except StreamFailed as e:
            return GrpcFailure(502, str(e), sent=self.stream is not None)
        ex.reading = True
        ex.last_activity = loop.time()
        remaining = self._remaining()
        if remaining is not None:
            self._deadline = loop.call_later(remaining, self._deadline_passed)
        if (body is not None and not sent) or streams:
            self._sender = loop.create_task(self._send(stream, body))
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
            body = ex.body
            if body and len(body) == 1:
                return body[0], False
            return b"".join(body or ()), False
        return None, True

    def _end(self) -> None:
        self.ex.reading = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        sender = self._sender
        if sender is not None and not sender.done():
            sender.cancel()
        stream = self.stream
        if stream is not None and stream.failed is None and not stream.remote_ended:
            stream.cancel()

    # -- the fast path's end -----------------------------------------------------------

    def _settled(self) -> None:
        """The fast path's attempt got its answer: reported as the driver reports one
        (``driver.succeeded``), and the exchange is done."""
        ex = self.ex
        if ex.held is not self:
            return
        ex.held = None
        self._end()
        if self.pick is None and self.up.passive is None:  # one node, no passive checks
            assert ex.ctx is not None
            ex.ctx.upstream_response_time = time.monotonic() - self.started
        else:
            succeeded(ex, self.up, self.server, self.pick, self.started, None)
        ex._finish()

    def failed_fast(self, failure: GrpcFailure) -> None:
        """The fast path's attempt failed: the driver takes over with the failure (its
        bookkeeping, a retry, the answer), in a task."""
        ex = self.ex
        if ex.held is not self:
            return
        ex.held = None
        self._end()
        route = ex.route
        assert route is not None
        first = (self.server, self.pick, failure)
        ex._spawn(proxy_grpc(ex, route, self.up, first, self.started))

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
        if edits is not None or timeout is not None:
            return request_fields(pseudo, ex.raw_headers, skip, edits, timeout)
        fields = fields_of(ex)
        if fields is None:
            return request_fields(pseudo, ex.raw_headers, skip, None, None)
        if fields.skip is not skip or fields.pseudo != pseudo:
            # (the list is sent as it is, never edited: H2Connection.open_stream)
            fields.head = request_fields(pseudo, fields.raw, skip, None, None)
            fields.pseudo, fields.skip = pseudo, skip
        return fields.head

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
        if self.started:
            self.failed_fast(f)
            return
        d = self._done
        if d is not None and not d.done():
            d.set_exception(f)

    def _succeed(self) -> None:
        if self.started:
            self._settled()
            return
        d = self._done
        if d is not None and not d.done():
            d.set_result(None)

    def _deadline_passed(self) -> None:
        self._deadline = None
        self._fail(GrpcFailure(504, "deadline exceeded", sent=True, retryable=False))

    # -- held by the exchange: what it tells the attempt ---------------------------------

    def upstream_done(self) -> None:
        """The response side finished the answer (from ``on_end``)."""
        self._succeed()

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
        # (the HTTP/2 layer let through only a head with ``:status``, 3 digits, first:
        # tollway.http2.inbound.check_response)
        status = int(headers[0][1])
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
        # (trailers with a pseudo-field never get here: check_response refuses them, RFC 9113
        # 8.1; the list is this stream's own)
        self.trailers = headers

    def on_end(self) -> None:
        ex = self.ex
        if not ex.client_closed:
            ex.resp_trailers = self.trailers
            if ex.ctx is not None:
                ex.ctx.upstream_trailers = self.trailers
            ex.on_upstream_complete()
        self._succeed()

    def on_failed(self, exc: StreamFailed) -> None:
        if self.started:
            self.failed_fast(self._failure(exc))
            return
        d = self._done
        if d is not None and not d.done():
            d.set_exception(exc)
