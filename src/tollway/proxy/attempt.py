"""Upstream attempts: pick, connect or reuse, send the request, and retry as the retry decision
(``proxy.retry``) says.

Two ways to run an attempt: the fast path (a pooled connection, driven by the connection's
callbacks, no task: most requests) and the coroutine path (``proxy``: a new connection, a body
to send, a retry). Both build the same request head (``request_head``, from the pure rules of
``httprules.upstream_head``) and report to the balancer and passive health checks the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from tollway.balancer import PickContext, Server, hash_key_for
from tollway.proxy.base import ExchangeBase
from tollway.proxy.grpc_attempt import GRPC_SCHEMES, proxy_grpc
from tollway.proxy.request_head import request_head
from tollway.proxy.retry import RETRY, Attempted, Budget, deadline_of, decide, may_resend, over
from tollway.runtime.compiled import DEFAULT_TIMEOUTS, CompiledRoute, CompiledUpstream, Timeouts
from tollway.upstream.pool import UpstreamConnection

if TYPE_CHECKING:
    pass

log = logging.getLogger("tollway.proxy")

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


class Forwarding(ExchangeBase):
    __slots__ = ()

    # -- proxying -----------------------------------------------------------------------

    async def proxy(
        self,
        route: CompiledRoute,
        up: CompiledUpstream,
        first: tuple[Server, PickContext | None, UpstreamFailure | None] | None = None,
        started: float = 0.0,
    ) -> None:
        """Attempts with retries. ``first``: a server the fast path already picked, and how its
        attempt failed (None: not attempted yet); ``started``: when that attempt began (the
        retry_timeout counts from the request's first attempt)."""
        ctx = self.ctx
        assert ctx is not None
        if up.scheme in GRPC_SCHEMES:  # HTTP/2 upstream streams: an attempt object
            return await proxy_grpc(self, route, up, first)
        timeouts = route.timeouts or up.timeouts or DEFAULT_TIMEOUTS
        self.read_timeout = timeouts.read
        self._send_timeout = timeouts.send
        body = await self._body_to_send()
        if self.reject_status:
            self.keep_alive = False
            self.respond_error(self.reject_status)
            return
        pick = first[1] if first is not None else self._pick_context(up)
        tries = 0
        deadline = deadline_of(started or time.monotonic(), up.retry_timeout)
        statuses: list[str] = []
        while True:
            failure: UpstreamFailure | None = None
            if first is not None:
                server, _, failure = first
                first = None
                if failure is None and started and over(deadline, time.monotonic()):
                    # the fast path's kept-alive connection was closed: a fresh one is a retry
                    self._give_up(UpstreamFailure(502, True, "retry timeout"), statuses, 502)
                    return
            else:
                picked = self._next_server(up, pick)
                if picked is None:
                    self.upstream_statuses = statuses or None
                    self.respond_error(502)
                    return
                server = picked
            if failure is None:
                failure = await self._try(up, server, pick, (timeouts, body, deadline), statuses)
                if failure is None:
                    return
            self._failed(up, server, pick, failure, statuses)
            # A single node is tried again (APISIX's balancer hands out the one node it has).
            verdict = decide(
                failure.attempted(),
                self._budget(tries, up, deadline, body),
                time.monotonic(),
                self.response_started,
            )
            if verdict != RETRY:
                self._give_up(failure, statuses, verdict)
                return
            tries += 1  # after_balance(failed=True) marked the server as tried

    async def _try(
        self,
        up: CompiledUpstream,
        server: Server,
        pick: PickContext | None,
        how: tuple[Timeouts, bytes | None, float],
        statuses: list[str],
    ) -> UpstreamFailure | None:
        """One attempt of the coroutine path: None when it succeeded."""
        ctx = self.ctx
        assert ctx is not None
        ctx.upstream_addr = f"{server.host}:{server.port}"
        started = time.monotonic()
        if statuses:
            # the answer's X-APISIX-Upstream-Status lists the failed tries first
            self.upstream_statuses = statuses
        timeouts, body, deadline = how
        try:
            await self.attempt(up, server, timeouts, body, deadline)
        except UpstreamFailure as f:
            return f
        self._succeeded(up, server, pick, started, statuses)
        return None

    async def _replayable_body(self) -> bytes | None:
        """Small bodies are read whole so that a retry can resend them (None: a larger one,
        which streams)."""
        if self.body_chunked and self.proto.http2:
            return None  # an HTTP/2 body of no length may be a stream (gRPC): never wait for it
        if self.body_chunked or self.content_length <= REPLAY_LIMIT:
            return await self.read_body(REPLAY_LIMIT)
        return None

    async def _body_to_send(self) -> bytes | None:
        """A plugin's replacement (the client's body read and dropped), or the client's body
        when it is small enough to resend on a retry (None: none, or a larger one: it streams)."""
        ctx = self.ctx
        if ctx is not None and ctx.up_body is not None:
            await self._drop_client_body()
            return ctx.up_body
        if self.has_body and not self.websocket:
            return await self._replayable_body()
        return None

    async def _drop_client_body(self) -> None:
        """A plugin replaced the request body (``set_upstream_body``): the client's is read and
        dropped, so the connection stays usable (one too large to read closes it)."""
        if self.has_body:
            if await self.read_body(REPLAY_LIMIT) is None:
                self.keep_alive = False
            self.has_body = False

    def _budget(
        self, tries: int, up: CompiledUpstream, deadline: float, body: bytes | None
    ) -> Budget:
        return Budget(
            tries,
            up.retries,
            deadline,
            self.method,
            self.proto.state.retry_non_idempotent,
            body is not None or not self.has_body,
        )

    def _may_resend(self) -> bool:
        return may_resend(True, self.method, self.proto.state.retry_non_idempotent)

    def _pick_context(self, up: CompiledUpstream) -> PickContext | None:
        if up.single is not None:
            return None
        pick = PickContext()
        if up.conf.type == "chash":
            ctx = self.ctx
            assert ctx is not None
            pick.hash_key = hash_key_for(
                up.hash_on, up.hash_key, ctx.var, ctx.consumer_name, ctx.remote_addr
            )
        return pick

    @staticmethod
    def _next_server(up: CompiledUpstream, pick: PickContext | None) -> Server | None:
        if pick is None:
            return up.single
        return up.picker.pick(pick) if up.picker is not None else None

    def _succeeded(
        self,
        up: CompiledUpstream,
        server: Server,
        pick: PickContext | None,
        started: float,
        statuses: list[str],
    ) -> None:
        elapsed = time.monotonic() - started
        if self.ctx is not None:
            self.ctx.upstream_response_time = elapsed  # nginx $upstream_response_time
        if pick is not None and up.picker is not None:
            up.picker.after_balance(server, pick, failed=False, latency=elapsed)
        if up.passive is not None:  # passive health: the response status (APISIX)
            up.passive.report(up.key, server.addr, "http", self.status)
        if statuses:
            statuses.append(str(self.status))
            assert self.ctx is not None
            self.ctx.upstream_status = ", ".join(statuses)

    def _failed(
        self,
        up: CompiledUpstream,
        server: Server,
        pick: PickContext | None,
        f: UpstreamFailure,
        statuses: list[str],
    ) -> None:
        statuses.append(str(f.status))
        if pick is not None and up.picker is not None:
            up.picker.after_balance(server, pick, failed=True)
        if up.passive is not None and f.status != 499:  # passive health (APISIX)
            up.passive.report(up.key, server.addr, "timeout" if f.status == 504 else "tcp", 0)
        log.debug("upstream %s:%d failed: %s", server.host, server.port, f)

    def _give_up(self, f: UpstreamFailure, statuses: list[str], status: int = 0) -> None:
        if not self.response_started and self.reject_status:
            self.respond_error(self.reject_status)  # the client's body was bad
        elif not self.response_started:
            self.upstream_statuses = statuses
            self.respond_error(status or f.status)
        else:
            self.keep_alive = False
        if self.ctx is not None:
            self.ctx.upstream_status = ", ".join(statuses)

    # -- the fast path: one attempt on a pooled connection, driven by callbacks -----------

    def _fast_attempt(self) -> bool:
        up = self.upstream
        ctx = self.ctx
        assert up is not None and ctx is not None
        if ctx.up_body is not None:
            return False  # a body to send: the coroutine path
        route = ctx.route
        pick: PickContext | None
        if up.single is not None:
            pick, server = None, up.single
        else:
            pick = self._pick_context(up)
            picked = self._next_server(up, pick)
            if picked is None:
                return False
            server = picked
        state = self.proto.state
        conn = state.pool.get_idle((up.pool_key, server.host, server.port))
        if conn is None:
            # A new connection is needed: the coroutine path connects (with its timeout).
            self._spawn(self.proxy(route, up, (server, pick, None)))
            return True
        timeouts = route.timeouts or up.timeouts or DEFAULT_TIMEOUTS
        self.read_timeout = timeouts.read
        self._send_timeout = timeouts.send
        ctx.upstream_addr = server.addr
        name = up.node_hosts.get(server.addr, server.host) if up.node_hosts else server.host
        self.last_activity = state.loop.time()  # (uvloop's clock: cached, millisecond steps)
        # The upstream time is measured precisely: it must nest inside the request's time.
        self._fast = (server, pick, time.monotonic())
        self.conn = conn
        conn.start(self, self.method == "HEAD" or ctx.up_method == "HEAD")
        state.send(conn.transport, request_head(self, up, name, server.port, None))  # type: ignore[arg-type]
        self.reading = True
        return True

    def _fast_done(self) -> None:
        fast, self._fast = self._fast, None
        assert fast is not None and self.upstream is not None
        server, pick, started = fast
        self.reading = False
        conn, self.conn = self.conn, None
        up = self.upstream
        if conn is not None:
            self.proto.state.pool.release(conn, up.limits)
        if pick is None and up.passive is None:  # one node, no passive checks: just the time
            assert self.ctx is not None
            self.ctx.upstream_response_time = time.monotonic() - started
        else:
            self._succeeded(up, server, pick, started, [])
        self._finish()

    def _fast_failed(self, failure: UpstreamFailure) -> None:
        fast, self._fast = self._fast, None
        assert fast is not None and self.upstream is not None
        server, pick, started = fast
        self.reading = False
        conn, self.conn = self.conn, None
        stale = conn is not None and conn.bytes_received == 0 and not self.response_started
        if conn is not None:
            conn.close()
        up, route = self.upstream, self.route
        assert route is not None
        if self.client_closed or self.response_started:
            self._failed(up, server, pick, failure, [])
            self.keep_alive = False
            self._finish()
            return
        if stale and failure.status == 502 and self._may_resend():
            # A kept-alive connection the upstream had closed: the same server, on a new one.
            self._spawn(self.proxy(route, up, (server, pick, None), started))
        else:
            self._spawn(self.proxy(route, up, (server, pick, failure), started))

    async def attempt(
        self,
        up: CompiledUpstream,
        server: Any,
        timeouts: Any,
        body: bytes | None,
        deadline: float = 0.0,
    ) -> None:
        state = self.proto.state
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
                        timeout=timeouts.connect,
                    )
                except TimeoutError:
                    raise UpstreamFailure(504, True, "connect timeout", sent=False) from None
                except OSError as e:
                    raise UpstreamFailure(502, True, f"connect failed: {e}", sent=False) from None
                reused = False
            if self.client_closed:
                conn.close()
                raise UpstreamFailure(499, False, "client closed")
            try:
                await self._exchange_with(conn, up, name, port, body)
                return
            except _StaleConnection:
                # A kept-alive connection the upstream had closed: retry once on a fresh one,
                # unless the request is not idempotent (its bytes were written).
                conn = None
                if not reused or not self._may_resend() or over(deadline, time.monotonic()):
                    raise UpstreamFailure(502, True, "upstream closed the connection") from None
                reused = False
        raise UpstreamFailure(502, True, "upstream closed the connection")

    async def _exchange_with(
        self,
        conn: UpstreamConnection,
        up: CompiledUpstream,
        host: str,
        port: int,
        body: bytes | None,
    ) -> None:
        loop = self.proto.state.loop
        self.conn = conn
        self._done = loop.create_future()
        conn.start(
            self, self.method == "HEAD" or (self.ctx is not None and self.ctx.up_method == "HEAD")
        )
        head = request_head(self, up, host, port, body)
        self.last_activity = loop.time()
        self.reading = True
        try:
            if body is not None:
                conn.write(head + body if len(body) < 16384 else head)
                if len(body) >= 16384:
                    conn.write(body)
            else:
                conn.write(head)
                if self.has_body and not self.websocket:
                    await self._stream_body(conn)
            await self._done
        except _ReadTimeout:
            self._drop_conn(conn)
            if self.response_started:
                raise UpstreamFailure(504, False, "read timeout") from None
            raise UpstreamFailure(504, True, "read timeout") from None
        except (ConnectionError, OSError) as e:
            self._drop_conn(conn)
            if self.client_closed:
                raise UpstreamFailure(499, False, "client closed") from None
            if self.response_started:
                raise UpstreamFailure(502, False, str(e)) from None
            if conn.bytes_received == 0 and conn.requests > 1 and not self.has_body_streamed():
                raise _StaleConnection() from None
            raise UpstreamFailure(502, True, f"upstream error: {e}") from None
        finally:
            self._cancel_timer()
        self.conn = None
        if self.websocket and conn.upgraded:
            return
        state = self.proto.state
        state.pool.release(conn, up.limits)

    def has_body_streamed(self) -> bool:
        return self.has_body and self.body_bytes > 0 and not self.body_complete

    def _drop_conn(self, conn: UpstreamConnection) -> None:
        self.conn = None
        conn.close()

    async def _stream_body(self, conn: UpstreamConnection) -> None:
        chunked = self.body_chunked
        while True:
            chunk = await self.next_body_chunk()
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
                    async with asyncio.timeout(self._send_timeout):
                        await conn.drain()
                except TimeoutError:
                    raise _ReadTimeout() from None
        if self.reject_status:
            raise ConnectionResetError("request body too large")
        if chunked:
            conn.write(b"0\r\n\r\n")

    # -- read timeout (enforced by ServerState's sweep) --------------------------------

    def _cancel_timer(self) -> None:
        self.reading = False

    def on_read_timeout(self) -> None:
        if self.held is not None:
            self.held.on_read_timeout()
            return
        if self._fast is not None:
            self._fast_failed(UpstreamFailure(504, True, "read timeout"))
            return
        d = self._done
        if d is not None and not d.done():
            d.set_exception(_ReadTimeout())


class _ReadTimeout(Exception):
    pass


class _StaleConnection(Exception):
    pass
