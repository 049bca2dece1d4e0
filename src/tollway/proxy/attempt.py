"""HTTP/1.1 upstream attempts: an ``Http1Attempt`` object per attempt, which the exchange holds
(``ExchangeBase.held``) while it runs; the exchange inherits none of it (issue #12).

Two ways to run an attempt: the fast path (``forward``: a pooled connection, driven by the
connection's callbacks, no task: most requests) and the coroutine path (``proxy``: a new
connection, a body to send, a retry), whose attempts and retries the shared driver
(``proxy.driver``, with the pure ``proxy.retry`` decision) runs, as for gRPC. Both build the same
request head (``request_head``, from the pure rules of ``httprules.upstream_head``) and report to
the balancer and passive health checks in the same place (``driver.succeeded``/``failed``).

The upstream connection's ResponseSink is the exchange (its response side streams the answer);
the end of the answer (``upstream_done``), a failure (``upstream_failed``), a read timeout from
the ServerState sweep and the client's events reach the attempt through ``ex.held``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from tollway.proxy.driver import drive, failed, next_server, pick_context, succeeded
from tollway.proxy.grpc_attempt import GRPC_SCHEMES, forward_grpc, proxy_grpc
from tollway.proxy.request_head import request_head
from tollway.proxy.retry import Attempted, deadline_of, may_resend, over
from tollway.runtime.compiled import DEFAULT_TIMEOUTS, CompiledRoute, CompiledUpstream, Timeouts

if TYPE_CHECKING:
    from tollway.balancer import PickContext, Server
    from tollway.proxy.base import ExchangeBase
    from tollway.upstream.pool import UpstreamConnection

REPLAY_LIMIT = 64 * 1024  # request bodies up to this size are buffered so a retry can resend them


class UpstreamFailure(Exception):
    """An attempt failed. ``sent``: request bytes may have reached the upstream, so only an
    idempotent request may be tried again (RFC 9110 9.2.2)."""

    def __init__(self, status: int, retryable: bool, reason: str, *, sent: bool = True) -> None:
        super().__init__(reason)
        self.status = status
        self.retryable = retryable
        self.sent = sent

    def attempted(self) -> Attempted:
        return Attempted(self.status, self.retryable, self.sent)


# -- the fast path: one attempt on a pooled connection, driven by callbacks ---------------


def forward(ex: ExchangeBase) -> None:
    """Send the request upstream: at once on an idle pooled connection, with no task (the
    attempt then ends in the connection's callbacks); else the driver runs in a task."""
    up = ex.upstream
    ctx = ex.ctx
    assert up is not None and ctx is not None
    route = ctx.route
    assert route is not None
    if up.scheme in GRPC_SCHEMES:  # HTTP/2 upstream streams: their own fast path
        forward_grpc(ex, route, up)
        return
    if ctx.up_body is not None or ex.has_body:  # a body to send: the coroutine path
        ex._spawn(proxy(ex, route, up))
        return
    pick: PickContext | None
    fast = up.single_fast
    if fast is None and up.single is not None:
        fast = up.fast_single()  # (once per upstream version)
    if fast is not None:  # one node: its pool key and Host name are compiled
        pick, server = None, up.single
        assert server is not None
        key, name = fast
    else:
        pick = pick_context(ex, up)
        picked = next_server(up, pick)
        if picked is None:
            ex._spawn(proxy(ex, route, up))
            return
        server = picked
        key = (up.pool_key, server.host, server.port)
        name = up.node_hosts.get(server.addr, server.host) if up.node_hosts else server.host
    state = ex.proto.state
    conn = state.pool.get_idle(key)
    if conn is None:
        # A new connection is needed: the coroutine path connects (with its timeout).
        ex._spawn(proxy(ex, route, up, (server, pick, None)))
        return
    ex.read_timeout = (route.timeouts or up.timeouts or DEFAULT_TIMEOUTS).read
    ctx.upstream_addr = server.addr
    ex.last_activity = state.loop.time()  # (uvloop's clock: cached, millisecond steps)
    # The upstream time is measured precisely: it must nest inside the request's time.
    ex.held = Http1Attempt(ex, up, server, pick, None, conn, time.monotonic())
    conn.start(ex, ex.method == "HEAD" or ctx.up_method == "HEAD")
    state.send(conn.transport, request_head(ex, up, name, server.port, None))  # type: ignore[arg-type]
    ex.reading = True


# -- the coroutine path: the driver's attempts ---------------------------------------------


async def proxy(
    ex: ExchangeBase,
    route: CompiledRoute,
    up: CompiledUpstream,
    first: tuple[Server, PickContext | None, UpstreamFailure | None] | None = None,
    started: float = 0.0,
) -> None:
    """Attempts with retries. ``first``: a server the fast path already picked, and how its
    attempt failed (None: not attempted yet); ``started``: when that attempt began (the
    retry_timeout counts from the request's first attempt)."""
    if up.scheme in GRPC_SCHEMES:  # HTTP/2 upstream streams
        return await proxy_grpc(ex, route, up, first)
    timeouts = route.timeouts or up.timeouts or DEFAULT_TIMEOUTS
    ex.read_timeout = timeouts.read
    body = await _body_to_send(ex)
    if ex.reject_status:
        ex.keep_alive = False
        ex.respond_error(ex.reject_status)
        return
    deadline = deadline_of(started or time.monotonic(), up.retry_timeout)
    call = Http1Call(ex, up, timeouts, body, deadline)
    if first is None:
        await drive(call, pick_context(ex, up), deadline)
        return
    server, pick, failure = first
    if failure is None and started and over(deadline, time.monotonic()):
        # the fast path's kept-alive connection was closed: a fresh one is a retry
        call.give_up(502, [])
        return
    await drive(call, pick, deadline, server, failure)


class Http1Call:
    """The request as each HTTP/1.1 attempt sends it (the driver's ``Call``)."""

    __slots__ = ("body", "deadline", "ex", "timeouts", "up")

    def __init__(
        self,
        ex: ExchangeBase,
        up: CompiledUpstream,
        timeouts: Timeouts,
        body: bytes | None,
        deadline: float,
    ) -> None:
        self.ex = ex
        self.up = up
        self.timeouts = timeouts
        self.body = body  # None: no body, or one that streams (it cannot be sent again)
        self.deadline = deadline

    def attempt(self, server: Server, pick: PickContext | None) -> Http1Attempt:
        return Http1Attempt(self.ex, self.up, server, pick, self, None, 0.0)

    def resendable(self) -> bool:
        return self.body is not None or not self.ex.has_body

    def give_up(self, status: int, statuses: list[str]) -> None:
        ex = self.ex
        if not ex.response_started and ex.reject_status:
            ex.respond_error(ex.reject_status)  # the client's body was bad
        elif not ex.response_started:
            ex.upstream_statuses = statuses or None
            ex.respond_error(status)
        else:
            ex.keep_alive = False
        if ex.ctx is not None and statuses:
            ex.ctx.upstream_status = ", ".join(statuses)


class Http1Attempt:
    """One attempt on one server: a pooled or new HTTP/1.1 connection. ``call`` None: the fast
    path (ends in the callbacks); else the coroutine path (``run``, ends in ``done``)."""

    __slots__ = ("call", "conn", "done", "ex", "pick", "server", "started", "up")

    def __init__(
        self,
        ex: ExchangeBase,
        up: CompiledUpstream,
        server: Server,
        pick: PickContext | None,
        call: Http1Call | None,
        conn: UpstreamConnection | None,
        started: float,
    ) -> None:
        self.ex = ex
        self.up = up
        self.server = server
        self.pick = pick
        self.call = call
        self.conn = conn
        self.started = started
        self.done: asyncio.Future[None] | None = None

    # -- held by the exchange: what the connection and the client tell the attempt -------

    def upstream_done(self) -> None:
        """The answer is complete (or the WebSocket tunnel closed)."""
        if self.call is not None:
            d = self.done
            if d is not None and not d.done():
                d.set_result(None)
            return
        ex, up = self.ex, self.up
        ex.held = None
        ex.reading = False
        conn = self.conn
        now = time.monotonic()  # (one clock read for the pool and the response time)
        if conn is not None:
            self.conn = None
            ex.proto.state.pool.release(conn, up.limits, now)
        if self.pick is None and up.passive is None:  # one node, no passive checks: the time
            assert ex.ctx is not None
            ex.ctx.upstream_response_time = now - self.started
        else:
            succeeded(ex, up, self.server, self.pick, self.started, None)
        ex._finish()

    def upstream_failed(self, exc: BaseException | None) -> None:
        if self.call is None:
            retryable = not self.ex.response_started
            self._fast_failed(UpstreamFailure(502, retryable, f"upstream: {exc}"))
            return
        d = self.done
        if d is not None and not d.done():
            d.set_exception(exc if isinstance(exc, OSError) else ConnectionResetError(str(exc)))

    def on_read_timeout(self) -> None:
        if self.call is None:
            self._fast_failed(UpstreamFailure(504, True, "read timeout"))
            return
        d = self.done
        if d is not None and not d.done():
            d.set_exception(_ReadTimeout())

    def client_gone(self) -> None:
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.close()
        if self.call is None:
            ex = self.ex
            ex.held = None
            ex.reading = False
            gone = UpstreamFailure(499, False, "client closed")
            failed(ex, self.up, self.server, self.pick, gone, None)  # (least_conn releases it)
            ex._finish()
            return
        d = self.done
        if d is not None and not d.done():
            d.set_exception(ConnectionResetError("client closed the connection"))

    def pause(self) -> None:
        if self.conn is not None:
            self.conn.pause_reading()

    def resume(self) -> None:
        if self.conn is not None:
            self.conn.resume_reading()

    def _fast_failed(self, failure: UpstreamFailure) -> None:
        """The fast path's attempt failed: the coroutine path takes over (a retry), unless the
        answer began or the client left."""
        ex, up, server, pick = self.ex, self.up, self.server, self.pick
        ex.held = None
        ex.reading = False
        conn = self.conn
        self.conn = None
        stale = conn is not None and conn.bytes_received == 0 and not ex.response_started
        if conn is not None:
            conn.close()
        route = ex.route
        assert route is not None
        if ex.client_closed or ex.response_started:
            failed(ex, up, server, pick, failure, None)
            ex.keep_alive = False
            ex._finish()
            return
        if stale and failure.status == 502 and _may_resend(ex):
            # A kept-alive connection the upstream had closed: the same server, on a new one.
            ex._spawn(proxy(ex, route, up, (server, pick, None), self.started))
        else:
            ex._spawn(proxy(ex, route, up, (server, pick, failure), self.started))

    # -- the coroutine path ------------------------------------------------------------

    async def run(self) -> UpstreamFailure | None:
        try:
            await self._attempt()
        except UpstreamFailure as f:
            return f
        return None

    async def _attempt(self) -> None:
        call, up, server = self.call, self.up, self.server
        assert call is not None
        ex = self.ex
        state = ex.proto.state
        host, port = server.host, server.port
        # A domain node resolved to this IP: its domain is the Host (pass_host: node) and SNI.
        name = up.node_hosts.get(server.addr, host) if up.node_hosts else host
        key = (up.pool_key, host, port)
        conn = state.pool.get_idle(key)
        reused = conn is not None
        for _ in range(2):
            if conn is None:
                try:
                    conn = await state.pool.connect(
                        key,
                        host,
                        port,
                        ssl_ctx=up.ssl_ctx,
                        server_hostname=name.strip("[]"),
                        timeout=call.timeouts.connect,
                    )
                except TimeoutError:
                    raise UpstreamFailure(504, True, "connect timeout", sent=False) from None
                except OSError as e:
                    raise UpstreamFailure(502, True, f"connect failed: {e}", sent=False) from None
                reused = False
            if ex.client_closed:
                conn.close()
                raise UpstreamFailure(499, False, "client closed")
            try:
                await self._exchange_with(conn, name, port)
                return
            except _StaleConnection:
                # A kept-alive connection the upstream had closed: retry once on a fresh one,
                # unless the request is not idempotent (its bytes were written).
                conn = None
                if not reused or not _may_resend(ex) or over(call.deadline, time.monotonic()):
                    raise UpstreamFailure(502, True, "upstream closed the connection") from None
                reused = False
        raise UpstreamFailure(502, True, "upstream closed the connection")

    async def _exchange_with(self, conn: UpstreamConnection, host: str, port: int) -> None:
        ex, call = self.ex, self.call
        assert call is not None
        body = call.body
        loop = ex.proto.state.loop
        self.conn = conn
        self.done = loop.create_future()
        conn.start(ex, ex.method == "HEAD" or (ex.ctx is not None and ex.ctx.up_method == "HEAD"))
        head = request_head(ex, self.up, host, port, body)
        ex.last_activity = loop.time()
        ex.reading = True
        try:
            if body is not None:
                conn.write(head + body if len(body) < 16384 else head)
                if len(body) >= 16384:
                    conn.write(body)
            else:
                conn.write(head)
                if ex.has_body and not ex.websocket:
                    await self._stream_body(conn, call.timeouts.send)
            await self.done
        except _ReadTimeout:
            self._drop_conn(conn)
            raise UpstreamFailure(504, not ex.response_started, "read timeout") from None
        except (ConnectionError, OSError) as e:
            self._drop_conn(conn)
            if ex.client_closed:
                raise UpstreamFailure(499, False, "client closed") from None
            if ex.response_started:
                raise UpstreamFailure(502, False, str(e)) from None
            if conn.bytes_received == 0 and conn.requests > 1 and not _body_streamed(ex):
                raise _StaleConnection() from None
            raise UpstreamFailure(502, True, f"upstream error: {e}") from None
        finally:
            ex.reading = False
        self.conn = None
        if ex.websocket and conn.upgraded:
            return
        ex.proto.state.pool.release(conn, self.up.limits)

    def _drop_conn(self, conn: UpstreamConnection) -> None:
        self.conn = None
        conn.close()

    async def _stream_body(self, conn: UpstreamConnection, send_timeout: float) -> None:
        ex = self.ex
        chunked = ex.body_chunked
        while True:
            chunk = await ex.next_body_chunk()
            if chunk is None:
                break
            if chunked:
                conn.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            else:
                conn.write(chunk)
            if conn.closed:
                raise ConnectionResetError("upstream closed while sending the body")
            if conn.write_paused:
                # The upstream stopped reading: give it the send timeout, then 504.
                try:
                    async with asyncio.timeout(send_timeout):
                        await conn.drain()
                except TimeoutError:
                    raise _ReadTimeout() from None
        if ex.reject_status:
            raise ConnectionResetError("request body too large")
        if chunked:
            conn.write(b"0\r\n\r\n")


# -- the request body -----------------------------------------------------------------------


async def _body_to_send(ex: ExchangeBase) -> bytes | None:
    """A plugin's replacement (the client's body read and dropped), or the client's body when
    it is small enough to resend on a retry (None: none, or a larger one: it streams)."""
    ctx = ex.ctx
    if ctx is not None and ctx.up_body is not None:
        await _drop_client_body(ex)
        return ctx.up_body
    if ex.has_body and not ex.websocket:
        return await _replayable_body(ex)
    return None


async def _replayable_body(ex: ExchangeBase) -> bytes | None:
    """Small bodies are read whole so that a retry can resend them (None: a larger one, which
    streams)."""
    if ex.body_chunked and ex.proto.http2:
        return None  # an HTTP/2 body of no length may be a stream (gRPC): never wait for it
    if ex.body_chunked or ex.content_length <= REPLAY_LIMIT:
        return await ex.read_body(REPLAY_LIMIT)
    return None


async def _drop_client_body(ex: ExchangeBase) -> None:
    """A plugin replaced the request body (``set_upstream_body``): the client's is read and
    dropped, so the connection stays usable (one too large to read closes it)."""
    if ex.has_body:
        if await ex.read_body(REPLAY_LIMIT) is None:
            ex.keep_alive = False
        ex.has_body = False


def _body_streamed(ex: ExchangeBase) -> bool:
    return ex.has_body and ex.body_bytes > 0 and not ex.body_complete


def _may_resend(ex: ExchangeBase) -> bool:
    return may_resend(True, ex.method, ex.proto.state.retry_non_idempotent)


class _ReadTimeout(Exception):
    pass


class _StaleConnection(Exception):
    pass
