"""The client-side HTTP/1.1 protocol: httptools parser callbacks, pipelining and flow control.

Each parsed request becomes an ``Exchange`` (see pipeline.py). Exchanges run one at a time per
connection, in order, so pipelined answers are never reordered. Limits are enforced while
parsing: header bytes (431), body size (413), and the smuggling checks of RFC 9112 6.3 (400).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools

from tollway.httprules.fields import PLAIN_CONNECTION, connection_tokens
from tollway.httprules.status import closing_error
from tollway.proxy.contracts import HeadCache
from tollway.proxy.flow import MAX_PIPELINE
from tollway.proxy.h1_names import (
    _CONNECTION,
    _CONTENT_LENGTH,
    _EXPECT,
    _HOST,
    _KINDS,
    _METHODS,
    _PLAIN,
    _REAL_IP,
    _TRANSFER_ENCODING,
    _UPGRADE,
    ParseLimit,
    kind_of,
    method_of,
    real_ip_header,
    use_real_ip_header,
)
from tollway.proxy.h2 import H2Protocol
from tollway.proxy.h2_fields import starts_h2c
from tollway.proxy.pipeline import Exchange
from tollway.proxy.sockets import abort_with_reset, has_unread
from tollway.proxy.tls import ClientCheck, client_check
from tollway.proxy.upgrade import Upgrading

if TYPE_CHECKING:
    from tollway.proxy.state import ServerState

log = logging.getLogger("tollway.proxy")


class HttpProtocol(Upgrading, asyncio.Protocol):
    http2 = False  # an exchange's connection is HTTP/1.x (contracts.ClientConnection)

    def __init__(self, state: ServerState, scheme: str = "http") -> None:
        # (an instance attribute, not only the class's: read for every answer, and CPython
        # 3.11 specializes only reads of the instance's own attributes)
        self.http2 = False
        self.state = state
        self.scheme = scheme
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.remote_addr = ""
        self.remote_port = 0
        self.server_addr = ""
        self.server_port = 0
        # Request being parsed (reset when its head completes).
        self._headers: list[tuple[bytes, bytes]] = []
        # max_header_size: a head that cannot exceed it is not counted (see data_received).
        self._fast_limit = state.max_header_size * 4 // 5
        self._carry = 0  # bytes received since the head being parsed began, at most
        self._exact = False  # this data may hold a head over the limit: count field by field
        self._reset_message()
        self.parsing: Exchange | None = None
        # Requests being answered.
        self.active: Exchange | None = None
        self.pipeline: deque[Exchange] = deque()
        self.closing = False
        self.write_paused = False
        self.write_paused_at = 0.0  # since when the client reads nothing (send_timeout)
        self._drain_waiters: list[asyncio.Future[None]] = []
        # Upstream connection once a WebSocket is established; before that, while a WebSocket
        # handshake waits for its answer, a HeldBytes buffer (see _after_upgrade).
        self.tunnel: Any = None
        # The request whose head llhttp took as an upgrade (see _after_upgrade).
        self._upgrading: Exchange | None = None
        self._reframing = False  # the parser is reading the synthetic head of _after_upgrade
        self.deadline = 0.0  # header/keep-alive timeout, enforced by ServerState's sweep
        # (client headers, raw Host, host, what follows the request target upstream) of the
        # last request sent upstream unedited (see Forwarding._request_head).
        self.head_cache: HeadCache | None = None
        self.host_cache: tuple[bytes, str] | None = None  # (raw Host, parsed) of the last request
        self.reading_paused = False
        self.idle_since = 0.0
        self.trust_real_ip = False  # the peer may name the client (realip)
        # mTLS: (the ssl object's check, whether the client sent a verified certificate)
        self.client_cert: tuple[ClientCheck, bool] | None = None

    # -- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        if isinstance(peer, tuple):
            self.remote_addr, self.remote_port = peer[0], peer[1]
        else:
            self.remote_addr = "127.0.0.1"
        if self.scheme == "https":
            sslobj = transport.get_extra_info("ssl_object")
            check = client_check(sslobj.context if sslobj is not None else None)
            if check is not None:
                der = sslobj.getpeercert(binary_form=True)  # verified at the handshake, if any
                self.client_cert = (check, check.accepts(der))
        real_ip = self.state.real_ip
        if real_ip is not None:
            if real_ip.header != real_ip_header():
                use_real_ip_header(real_ip.header)
            self.trust_real_ip = real_ip.trusts(peer[0] if isinstance(peer, tuple) else None)
        if isinstance(sock, tuple):
            self.server_addr, self.server_port = sock[0], sock[1]
        self.state.connections.add(self)
        self.state.accepted += 1
        self.idle_since = self.state.loop.time()
        self._arm_timer(self.state.header_timeout)
        if self.scheme == "https" and self.state.http2:
            sslobj = transport.get_extra_info("ssl_object")
            if sslobj is not None and sslobj.selected_alpn_protocol() == "h2":
                self._to_h2(b"")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.state.connections.discard(self)
        self._cancel_timer()
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)
        self._drain_waiters.clear()
        if self.active is not None:
            self.active.client_gone()
        for ex in self.pipeline:
            ex.client_gone()
        self.pipeline.clear()
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            if self.active is not None:
                self.active.touch()
            return
        # max_header_size (431, 414) is counted as len(url) + len(name) + len(value) + 4 per
        # field, which is at most 5/4 of the bytes that carry it ("n:\r\n" is 4 bytes, counted
        # 5). A head with all its bytes in ``seen`` cannot exceed the limit when ``seen`` is under
        # 4/5 of it (a request of a few fields): it is not counted, field by field, at all.
        seen = self._carry + len(data)
        if seen > self._fast_limit:
            self._count_exactly()
        elif self._exact:
            self._exact = False
        while data:
            try:
                self.parser.feed_data(data)
                self._carry = seen if self._url else 0  # a head begun, not complete
                return
            except httptools.HttpParserUpgrade as e:
                off = e.args[0] if e.args and isinstance(e.args[0], int) else len(data)
                data = self._after_upgrade(data[off:])
            except ParseLimit as limit:
                self._fail(limit.status)
                return
            except httptools.HttpParserCallbackError as failed:
                cause = failed.__context__ or failed.__cause__
                self._fail(cause.status if isinstance(cause, ParseLimit) else 400)
                return
            except httptools.HttpParserError:
                if starts_h2c(data) and self.host_cache is None and self.active is None:
                    # The HTTP/2 preface on a connection that has served no request: h2c with
                    # prior knowledge (llhttp stops at its "PRI * HTTP/2.0" line). Without
                    # HTTP/2, nginx answers that line 505.
                    if self.state.http2:
                        self._to_h2(data)
                    else:
                        self._fail(505)
                    return
                self._fail(400)
                return

    def _to_h2(self, data: bytes) -> None:
        """Hand the connection over to HTTP/2 (ALPN h2, or the h2c preface in ``data``)."""
        self.state.connections.discard(self)
        self._cancel_timer()
        h2p = H2Protocol(self)
        assert self.transport is not None
        self.transport.set_protocol(h2p)
        self.transport = None  # this protocol writes nothing more
        if data:
            h2p.data_received(data)
        h2p.flush()

    def eof_received(self) -> bool | None:
        # Half-close from the client: finish what is in flight, then close. A request whose
        # head or body is incomplete can never be finished: close at once, which ends it and
        # frees its upstream connection (connection_lost -> client_gone).
        if (self.active is None and not self.pipeline) or self.parsing or self._url:
            return None
        self.closing = True
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_paused_at = self.state.loop.time()
        ex = self.active
        if ex is not None:
            ex.client_paused()
        if self.tunnel is not None:
            self.tunnel.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.active
        if ex is not None:
            ex.client_resumed()
        if self.tunnel is not None:
            self.tunnel.resume_reading()
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)
        self._drain_waiters.clear()

    async def drain(self) -> None:
        if not self.write_paused or self.closing:
            return
        fut = self.state.loop.create_future()
        self._drain_waiters.append(fut)
        await fut

    # -- httptools callbacks ------------------------------------------------------------

    # No on_message_begin: httptools skips callbacks a protocol does not define, and the
    # per-message state is reset when a head completes (one Python call less per request).

    def _reset_message(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._cl_count = 0
        self._te = False
        self._host = b""
        self._hosts = 0
        self._upgrade = b""
        self._expect = False
        self._connection = b""
        self._real_ip = b""
        self._noted = False  # a field of a kind other than Host was seen (see on_header)

    def reading_head(self) -> bool:
        """Part of a request head has arrived, not all of it (its URL at least: the first
        callback of a request; cleared when the head completes)."""
        return bool(self._url)

    def _count_exactly(self) -> None:
        """The data about to be parsed may complete a head over max_header_size: the head
        being parsed (if any) is counted so far, and each URL piece and field from now on."""
        self._exact = True
        size = len(self._url)
        if size:
            for name, value in self._headers:
                size += len(name) + len(value) + 4
        self._header_bytes = size

    def _count(self, size: int, url: bool = False) -> None:
        """``size`` more bytes of the head (exact counting): 414 or 431 over the limit."""
        size += self._header_bytes
        self._header_bytes = size
        limit = self.state.max_header_size
        if size > limit:
            raise ParseLimit(414 if url and len(self._url) > limit else 431)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if self._exact:
            self._count(len(url), url=True)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._exact:
            self._count(len(name) + len(value) + 4)
        self._headers.append((name, value))
        if name in _PLAIN:  # (most fields: nothing to note)
            return
        kind = _KINDS.get(name)
        if kind is None:
            kind = kind_of(name)
        if not kind:
            return
        if kind == _HOST:
            if self._hosts:
                raise ParseLimit(400)  # RFC 9112 3.2: more than one Host field is invalid
            self._hosts = 1
            self._host = value
            return
        self._noted = True  # one of the fields below: on_headers_complete reads them
        if kind == _CONTENT_LENGTH:
            self._cl_count += 1
            if self._cl_count > 1 or not value.strip().isdigit():
                raise ParseLimit(400)
        elif kind == _TRANSFER_ENCODING:
            self._te = True
        elif kind == _UPGRADE:
            self._upgrade = value
        elif kind == _EXPECT:
            self._expect = value.lower() == b"100-continue"
        elif kind == _CONNECTION:
            self._connection = value
        elif kind == _REAL_IP:
            self._real_ip = value

    def on_headers_complete(self) -> None:
        # RFC 9112 6.3: Content-Length with Transfer-Encoding is a smuggling vector; refuse it.
        if self._te and self._cl_count:
            raise ParseLimit(400)
        if self._reframing:
            self._end_reframe_head()
            return
        self.deadline = 0.0
        p = self.parser
        raw = p.get_method()
        method = _METHODS.get(raw)
        if method is None:
            method = method_of(raw)
        if not method:
            raise ParseLimit(405)
        headers = self._headers
        keep_alive = p.should_keep_alive()
        # Without a Connection header only HTTP/1.1 is keep-alive: the version is known without
        # get_http_version(), which formats a new string each call (a third of a microsecond).
        # llhttp accepts 0.9, 1.0, 1.1 and 2.0 on a request line; only HTTP/1.x is served here
        # (RFC 9112 2.3: a text request line is HTTP/1.x; an HTTP/2.0 one gets 505, as nginx).
        version = "1.1" if keep_alive and not self._connection else p.get_http_version()
        if version[0] != "1":
            raise ParseLimit(505 if version[0] == "2" else 400)
        if not self._host and version == "1.1":
            raise ParseLimit(400)  # RFC 9112 3.2: an HTTP/1.1 request must carry Host (nginx)
        ex = Exchange(self, method, self._url, headers, version, keep_alive, self._host)
        if self._noted:  # Content-Length, Transfer-Encoding, Expect, Upgrade, Connection...
            self._noted_fields(ex, headers)
        else:  # no body, nothing noted (most GETs)
            ex.body_complete = True
        self._url = self._host = b""
        self._hosts = 0
        self._headers = []
        self._header_bytes = 0
        self.parsing = ex
        if self.active is None:
            self.active = ex
            ex.start()
        else:
            self.pipeline.append(ex)
            if len(self.pipeline) >= MAX_PIPELINE:
                self.pause_reading()

    def _noted_fields(self, ex: Exchange, headers: list[tuple[bytes, bytes]]) -> None:
        """What the noted fields say about the request: its framing (RFC 9112 6), Expect,
        the fields Connection names (RFC 9110 7.6.1), an Upgrade, the realip header. Then
        forget them for the next request."""
        if self._expect:
            ex.expect_continue = True
        if self._connection and self._connection.lower() not in PLAIN_CONNECTION:
            ex.connection_tokens = connection_tokens([(b"connection", self._connection)])
        if self._te:
            ex.body_chunked = True
            ex.has_body = True
        elif self._cl_count:
            cl = int(next(v for k, v in headers if k.lower() == b"content-length"))
            ex.content_length = cl
            ex.has_body = cl > 0
            limit = self.state.max_body_size
            if limit and cl > limit:
                ex.reject_status = 413
        if not ex.has_body:
            ex.body_complete = True
        if self._upgrade and self.parser.should_upgrade():
            self._note_upgrade(ex)
        if self._real_ip:
            if self.trust_real_ip and self.state.real_ip is not None:
                ex.client_addr = self.state.real_ip.client(self._real_ip)
            self._real_ip = b""
        self._cl_count = 0
        self._te = self._expect = self._noted = False
        self._upgrade = self._connection = b""

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is not None:
            ex.feed_body(body)

    def on_message_complete(self) -> None:
        ex = self.parsing
        self.parsing = None
        if ex is not None and not ex.body_complete:
            if ex is self._upgrading:
                # llhttp ends an Upgrade request at its head; its body is read after all.
                self.parsing = ex
                return
            ex.finish_body()
        if self.active is None and not self.pipeline and not self.closing:
            # The answer was made before the message ended (fast path): idle from now on.
            self._arm_timer(self.state.keepalive_timeout)

    # -- flow control and lifecycle -----------------------------------------------------

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.closing:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closing:
            self.reading_paused = False
            self.transport.resume_reading()

    def exchange_done(self, ex: Exchange, keep_alive: bool) -> None:
        """Called by the active exchange when its response is complete."""
        if self.active is not ex:
            return
        self.active = None
        if not keep_alive or self.closing:
            self.close()
            return
        # Stopping, but this answer did not say "Connection: close" (its exchange began before
        # the stop): the client may reuse the connection at once, so it is idle like any other
        # and the graceful stop's sweep closes it after its grace; a request arriving meanwhile
        # is answered with "Connection: close". Closing here reset that request.
        if self.pipeline:
            nxt = self.pipeline.popleft()
            self.resume_reading()
            self.active = nxt
            nxt.start()
            return
        if self.reading_paused:
            self.resume_reading()
        now = self.idle_since = self.state.loop.time()
        if self.parsing is None:
            self.deadline = now + self.state.keepalive_timeout

    def _fail(self, status: int) -> None:
        """A request we cannot parse: answer it (after in-flight ones) and close."""
        if self.transport is None or self.closing:
            return
        if self.active is not None:
            # A request whose body is broken answers with this status; the in-flight answer
            # finishes first; then the connection closes without reading more.
            ex = self.parsing
            self.parsing = None
            if ex is not None:
                ex.fail_body(status)
            self.closing = True
            self.pause_reading()
            return
        self.state.flush_writes()  # an answer still deferred goes first
        head = self.state.server_header + self.state.date_line()
        self.transport.write(closing_error(status, head))
        self.close()

    def close(self) -> None:
        self.closing = True
        self._cancel_timer()
        if self.transport is not None and not self.transport.is_closing():
            self.state.flush_writes()  # a deferred answer leaves before the connection closes
            self.transport.close()

    def close_if_idle(self, min_idle: float = 0.0) -> bool:
        """Close the connection if no request is in progress and it has been idle this long."""
        if self.active is None and self.parsing is None and not self.pipeline:
            if min_idle and self.state.loop.time() - self.idle_since < min_idle:
                return False
            if has_unread(self.transport):
                return False  # a request arrived that the loop has not read yet: answer it
            self.close()
            return True
        return False

    def _arm_timer(self, seconds: float) -> None:
        self.deadline = self.state.loop.time() + seconds if seconds > 0 else 0.0

    def _cancel_timer(self) -> None:
        self.deadline = 0.0

    def on_send_timeout(self) -> None:
        """The client read nothing for send_timeout: drop it with a reset."""
        self.closing = True
        abort_with_reset(self.transport)

    def on_deadline(self) -> None:
        if self.active is None and not self.pipeline:
            if self.parsing is not None or self._url:
                self._fail(408)
            else:
                self.close()
