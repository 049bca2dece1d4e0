"""An exchange: one request and its response on a client connection.

``Exchange`` is the last of the parts (``phases.Phases``, then ``response.Responding``; their
state is declared once in ``base.ExchangeBase``) and owns what is left: the client's body, the
lifecycle, answering locally, the log phase. Nothing escapes: every failure becomes a status
code and a debug line.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any, cast

from tollway.httprules.response_head import without_bodies
from tollway.httprules.status import error_page, status_line
from tollway.plugins.kit import RequestContext
from tollway.plugins.kit_head import apply_early, early_pairs
from tollway.proxy.attempt import forward
from tollway.proxy.contracts import StreamSink
from tollway.proxy.flow import BODY_HIGH_WATER
from tollway.proxy.h2_fields import pairs_fields
from tollway.proxy.phases import FORWARD, PHASES
from tollway.proxy.response import Responding
from tollway.proxy.state import ServerState

__all__ = ["Exchange", "ServerState"]

log = logging.getLogger("tollway.proxy")


class Exchange(Responding):
    __slots__ = ()

    # -- body from the client (parser callbacks) ----------------------------------------

    def feed_body(self, data: bytes) -> None:
        self.body_bytes += len(data)
        limit = self.proto.state.max_body_size
        body = self.body
        if body is None:
            body = self.body = deque()
        if limit and self.body_bytes > limit:
            self.reject_status = 413
            body.clear()
            self._wake_body()
            return
        body.append(data)
        if sum(map(len, body)) > BODY_HIGH_WATER:
            self.proto.pause_reading()
        self._wake_body()

    def fail_body(self, status: int) -> None:
        self.reject_status = status
        self.keep_alive = False
        self.body = None
        self._wake_body()

    def finish_body(self) -> None:
        self.body_complete = True
        self._wake_body()

    def _wake_body(self) -> None:
        w = self._body_waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait_body(self) -> None:
        """Until the client sends more of the body (or fails); the sweep answers 408 when it
        sends nothing for client_body_timeout."""
        loop = self.proto.state.loop
        self.body_wait_since = loop.time()
        self._body_waiter = loop.create_future()
        try:
            await self._body_waiter
        finally:
            self._body_waiter = None
            self.body_wait_since = 0.0

    async def next_body_chunk(self) -> bytes | None:
        """The next chunk of the request body, or None at its end."""
        while not self.body:
            if self.body_complete or self.client_closed or self.reject_status:
                return None
            if self.expect_continue and not self.sent_continue:
                self.sent_continue = True
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await self._wait_body()
        body = self.body
        chunk = body.popleft()
        if not body:
            self.proto.resume_reading()
        return chunk

    async def read_body(self, limit: int) -> bytes | None:
        """The whole request body if it is at most ``limit`` bytes, else None (nothing lost)."""
        while not self.body_complete and not self.client_closed and not self.reject_status:
            if self.body_bytes > limit:
                return None
            if self.expect_continue and not self.sent_continue:
                self.sent_continue = True
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await self._wait_body()
        if self.body_bytes > limit:
            return None
        data = b"".join(self.body or ())
        self.body = None
        self.proto.resume_reading()
        return data

    async def _plugin_body(self, limit: int) -> bytes | None:
        """``read_body`` for a plugin (proxy-mirror, hmac-auth): the body is put back, so the
        upstream request still sends it."""
        data = await self.read_body(limit)
        if data:
            self.body = deque((data,))
        return data

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Handle the request. The common case (no body, or one that has all arrived: an
        HTTP/2 stream's, ``H2Stream.start``; plugins all synchronous, a pooled upstream
        connection) runs as plain callbacks with no task: a task and the future it waits on
        cost ~4 us per request (measured), a tenth of the whole request here."""
        state = self.proto.state
        state.exchanges.add(self)
        if state.shutting_down:
            self.keep_alive = False  # answer with "Connection: close" while draining
        if (self.has_body and not self.body_complete) or self.upgrade or self.reject_status:
            self._spawn(self.handle())
            return
        try:
            todo = self._prepare()
            if todo == FORWARD:  # no request-phase plugin: straight to the upstream
                forward(self)
            elif todo == PHASES:  # the chain's request phases, as plain calls
                self._drive()
        except Exception:
            self._crashed()
        if self.task is None and self.held is None:
            self._finish()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.task = self.proto.state.loop.create_task(self._run(coro))

    async def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except Exception:
            self._crashed()
        finally:
            self._finish()

    def _crashed(self) -> None:
        log.debug("request failed", exc_info=True)
        if not self.response_started and not self.client_closed:
            self.respond_error(500)
        else:
            self.keep_alive = False

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self.reading = False
        state = self.proto.state
        state.exchanges.discard(self)
        state.requests += 1
        chain = self.chain
        ctx = self.ctx
        if ctx is not None:
            if chain is not None and chain.log:
                # The log phase (no call in between: every request of most routes runs it).
                # What log plugins measure (prometheus: status, bandwidth).
                ctx.resp_status = self.status
                ctx.request_body_bytes = self.body_bytes
                ctx.bytes_sent = self.resp_bytes
                for e in chain.log:
                    try:
                        e.fn(e.conf, ctx)
                    except Exception:
                        log.debug("plugin %s log failed", e.plugin.name, exc_info=True)
            if state.access_log is not None:
                self._write_access_log(ctx)
            # The request is over: no exchange <-> context cycle (the reader is a bound method
            # of this exchange) is left to the collector.
            ctx.body_reader = None
        self.proto.exchange_done(self, self.keep_alive and self.body_complete)

    def client_gone(self) -> None:
        self.client_closed = True
        self._wake_body()
        held = self.held
        if held is not None:
            held.client_gone()

    def on_read_timeout(self) -> None:
        """The sweep: the upstream sent nothing for the read timeout."""
        if self.held is not None:
            self.held.on_read_timeout()

    def client_paused(self) -> None:
        if self.held is not None:
            self.held.pause()

    def client_resumed(self) -> None:
        if self.held is not None:
            self.held.resume()

    def write(self, data: bytes) -> None:
        """Write to the client now (after any deferred write: see ServerState.send). An HTTP/2
        stream's write queues DATA frames on its connection, in order, and no deferred write
        goes to a stream: nothing to flush first (flushing wrote every connection's frames
        once per response, not once per loop iteration: a write per gRPC call)."""
        t = self.proto.transport
        if t is not None and not self.client_closed:
            if not self.proto.http2:
                self.proto.state.flush_writes()
            t.write(data)

    # -- answering locally --------------------------------------------------------------

    def respond_error(self, status: int) -> None:
        headers = [(b"Content-Type", b"text/html")]
        if self.upstream_statuses:
            headers.append(
                (b"X-APISIX-Upstream-Status", ", ".join(self.upstream_statuses).encode())
            )
        self.respond(status, error_page(status), headers)

    def respond(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        if self.response_started or self.client_closed:
            return
        chain = self.chain
        ctx = self.ctx
        if ctx is not None and chain is not None and chain.header_filter:
            ctx.resp_status = status
            ctx.resp_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
            if ctx.resp_early is not None and ctx.resp_head is not None:
                apply_early(ctx.resp_head, ctx.resp_early)  # set in access
            self._header_filter(chain, ctx)
            status = ctx.resp_status
            headers = [
                (k.encode("latin-1"), v.encode("latin-1")) for k, v in ctx.resp_headers or ()
            ]
            if chain.body_filter:
                body = self._body_filter(chain, ctx, body, True)
        elif ctx is not None and ctx.resp_early is not None:
            headers = early_pairs(ctx.resp_early, headers)  # set in access
        self.status = status
        self.response_started = True
        send_body = b"" if without_bodies(self.method, status) else body
        if self.proto.http2:
            self._h2_respond(status, headers, send_body, len(body))
            return
        state = self.proto.state
        out = [status_line(status), state.server_header, state.date_line()]
        for k, v in headers:
            out.append(k + b": " + v + b"\r\n")
        if status not in (204, 304) and not 100 <= status < 200:
            out.append(b"Content-Length: %d\r\n" % len(body))
        if not self.keep_alive or not self.body_complete:
            # Unread request body or a client that asked to close: close after this answer.
            self.keep_alive = False
            out.append(b"Connection: close\r\n")
        out.append(b"\r\n")
        out.append(send_body)
        self.resp_bytes = len(send_body)
        self.write(b"".join(out))

    def _h2_respond(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, length: int
    ) -> None:
        """``respond`` on an HTTP/2 stream: the head as fields, the body, the end."""
        state = self.proto.state
        fields = pairs_fields(headers)
        fields.append((b"server", state.server_header[8:-2]))
        fields.append((b"date", state.date_line()[6:-2]))
        if status not in (204, 304) and not 100 <= status < 200:
            fields.append((b"content-length", b"%d" % length))
        sink = cast(StreamSink, self.proto)
        sink.send_head(status, fields, not body)
        self.resp_bytes = len(body)
        if body:
            sink.end_response(None, body)

    # -- access log (the log phase runs in _finish) -------------------------------------

    def _write_access_log(self, ctx: RequestContext) -> None:
        al = self.proto.state.access_log
        if al is not None:
            ctx.resp_status = self.status
            al.log(self)
