"""HTTP/2 towards clients (RFC 9113): one connection, many streams, each carried by an exchange.

``H2Protocol`` is the connection: ``tollway.http2``'s state (frames, HPACK, flow-control
windows, stream states), fed from the socket. Each request stream gets an ``H2Stream``, which is
the ``ClientConnection`` of the exchange answering it, so routing, plugins, the upstream attempt
and the log phase run exactly as on HTTP/1.1. The exchange hands the stream status + fields
(``send_head``), body bytes (``write``: DATA frames within the peer's windows; past them the
stream is ``write_paused`` and the upstream is not read) and the end (``end_response``, with
trailers as a last HEADERS frame). The request body is fed to the exchange as it comes; the
stream's window is opened for the bytes the exchange holds until it holds BODY_HIGH_WATER (the
bound HTTP/1.1 has, flow.py), and from then on only as it hands them upstream: a stream holds
at most that plus its window (64 KB), and the streams of a connection together BODY_BUDGET
(2 MB) before every window waits for an exchange to take what it holds.

The connection starts from ``server.HttpProtocol``: after an ALPN ``h2`` handshake, or when a
plain connection opens with the preface (h2c with prior knowledge). Defences: the flood budgets
of ``Budget`` (rapid reset CVE-2023-44487, SETTINGS/PING/PRIORITY/empty DATA floods), and
the connection's bounds (header list size past HEADER_LIST_SLACK times the limit, an unfinished
header block past the limit or 64 CONTINUATION frames: CVE-2024-27316). Protocol errors:
GOAWAY and close. A stream past the concurrent-stream limit is refused (REFUSED_STREAM), a
header list over the limit answered 431 and CONNECT 405, each on its stream alone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from tollway.http2 import events as ev
from tollway.http2.connection import Connection, ProtocolError
from tollway.http2.frames import (
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_HEADER_LIST_SIZE,
    ErrorCode,
)
from tollway.httprules.status import error_page
from tollway.proxy.h1_names import method_of
from tollway.proxy.h2_fields import (
    H2Request,
    MalformedRequest,
    Refused,
    request_of,
    response_fields,
    split_lines,
)
from tollway.proxy.h2_guard import Budget
from tollway.proxy.h2_stream import BODY_BUDGET, H2Stream

if TYPE_CHECKING:
    from tollway.proxy.contracts import HeadCache
    from tollway.proxy.pipeline import Exchange
    from tollway.proxy.state import ServerState
    from tollway.runtime.certs import ClientCheck


class Origin(Protocol):
    """What H2Protocol takes over from the HTTP/1.1 connection that started (server.py)."""

    state: ServerState
    scheme: str
    transport: asyncio.Transport | None
    remote_addr: str
    remote_port: int
    server_addr: str
    server_port: int
    trust_real_ip: bool
    client_cert: tuple[ClientCheck, bool] | None


log = logging.getLogger("tollway.proxy")

MAX_STREAMS = 128  # SETTINGS_MAX_CONCURRENT_STREAMS (nginx's http2_max_concurrent_streams)
# A header list up to this many times the limit is decoded and answered 431 on its stream; a
# larger one ends the connection (ENHANCE_YOUR_CALM): an HPACK bomb is not inflated further.
HEADER_LIST_SLACK = 4
STREAM_WINDOW = 65535  # initial stream window: bytes a client may send before we take them
# Connection window: every stream may fill its own window without blocking the others.
CONN_WINDOW = MAX_STREAMS * STREAM_WINDOW


class H2Protocol(asyncio.Protocol):
    """An HTTP/2 client connection (the SweptConnection of ServerState's sweep)."""

    def __init__(self, origin: Origin) -> None:
        state = self.state = origin.state
        self.scheme = origin.scheme
        assert origin.transport is not None
        self.transport: asyncio.Transport = origin.transport
        self.remote_addr, self.remote_port = origin.remote_addr, origin.remote_port
        self.server_addr, self.server_port = origin.server_addr, origin.server_port
        self.trust_real_ip = origin.trust_real_ip
        self.client_cert = origin.client_cert
        self.streams: dict[int, H2Stream] = {}
        self.active: Any = None  # some stream, while any (ServerState.connection_states)
        self.deadline = 0.0
        self.write_paused = False  # the socket's buffer is full (pause_writing)
        self.write_paused_at = 0.0
        self.closing = False
        self.goaway_at = 0.0  # when the graceful GOAWAY went out (0: not sent)
        self.last_stream = 0  # the highest stream id taken (GOAWAY's last-stream-id)
        self.budget = Budget(state.loop.time())
        self.held = 0  # request body bytes the exchanges hold (h2_stream.BODY_BUDGET)
        self.starved = False  # some stream's window waits for that budget
        self._dirty = False
        self.waiting: list[Exchange] = []  # exchanges started once this read is handled
        self.host_cache: tuple[bytes, str] | None = None  # the streams' (H2Stream.host_cache)
        self.head_cache: HeadCache | None = None
        # The last well-formed request's header list, what request_of made of it, its method
        self.last_request: tuple[list[tuple[bytes, bytes]], H2Request, str] | None = None
        # Our SETTINGS, enforced at once (a client may only send less before its ACK)
        conn = self.conn = Connection(
            False,
            {
                MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                MAX_HEADER_LIST_SIZE: state.max_header_size,
                INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            },
        )
        conn.decoder.max_header_list_size = HEADER_LIST_SLACK * state.max_header_size
        # CVE-2024-27316: a header block that never ends (CONTINUATION after CONTINUATION) is
        # not buffered past the header limit (ENHANCE_YOUR_CALM)
        conn.max_header_block = state.max_header_size
        conn.initiate_connection()
        conn.increment_flow_control_window(CONN_WINDOW - 65535)
        self.max_header_size = state.max_header_size
        state.connections.add(self)
        self._idle()

    # -- socket events ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        # What the events queue leaves in one write at the end (``flush`` below, or the
        # failure's): no flush is scheduled meanwhile (``flush_soon`` sees one pending).
        self._dirty = True
        try:
            events = self.conn.receive_data(data)
            try:
                for event in events:
                    if type(event) is ev.RequestReceived:  # (the usual event: no lookup)
                        self._on_request(event)
                    else:
                        handler = _HANDLERS.get(type(event))
                        if handler is not None:
                            handler(self, event)
                    if self.closing:
                        return
            finally:
                if self.waiting:
                    self._start_waiting()
        except ProtocolError as e:
            # A connection error: its GOAWAY is queued (PROTOCOL_ERROR, FRAME_SIZE_ERROR,
            # COMPRESSION_ERROR, ENHANCE_YOUR_CALM for an oversized header list...): send it
            # and close.
            log.debug("h2 protocol error from %s: %s", self.remote_addr, e)
            self._abandon()
            return
        except Exception:
            # A bug of ours or a state we did not expect: this connection ends, the worker
            # and its other connections go on.
            log.debug("h2 connection from %s failed", self.remote_addr, exc_info=True)
            self.fail(ErrorCode.INTERNAL_ERROR)
            return
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.state.connections.discard(self)
        for stream in list(self.streams.values()):
            stream.gone()
        self.streams.clear()
        self.active = None

    def eof_received(self) -> bool | None:
        return None  # a half-closed HTTP/2 connection can send no more frames: close

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_paused_at = self.state.loop.time()
        for stream in self.streams.values():
            stream.update_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            stream.update_paused()

    def start_after_read(self, ex: Exchange) -> None:
        """Start ``ex`` once the events of this read are handled (``H2Stream.start``)."""
        self.waiting.append(ex)

    def _start_waiting(self) -> None:
        waiting = self.waiting
        if waiting:
            self.waiting = []
            for ex in waiting:
                ex.start()

    # -- frames out ---------------------------------------------------------------------

    def flush(self) -> None:
        """Send what the connection has queued."""
        self._dirty = False
        if self.conn.out:  # (most reads queue nothing: a request starts an exchange)
            data = self.conn.data_to_send()
            if not self.transport.is_closing():
                self.transport.write(data)

    def flush_soon(self) -> None:
        """Send what the connection has queued once this loop iteration is over: the frames
        of several streams leave in one write (with the worker's other deferred writes)."""
        if not self._dirty:
            self._dirty = True
            state = self.state
            state.writes.flush_later(self, state.loop)

    def fail(self, code: ErrorCode) -> None:
        """A connection error (RFC 9113 5.4.1): GOAWAY with ``code``, then close."""
        self.conn.close_connection(code, last_stream_id=self.last_stream)
        self._abandon()

    def _abandon(self) -> None:
        self.flush()
        self.close()

    # -- events -------------------------------------------------------------------------

    def _on_request(self, event: ev.RequestReceived) -> None:
        sid = event.stream_id
        if self.goaway_at or self.state.shutting_down:
            # After GOAWAY (graceful stop, reload): refused, safe for the client to retry.
            self.conn.reset_stream(sid, ErrorCode.REFUSED_STREAM)
            return
        if sid > self.last_stream:
            self.last_stream = sid
        headers = event.headers
        last = self.last_request
        if last is not None and last[0] == headers:
            # A client sends the same header list request after request (its HPACK block
            # indexes them): its checks and fields are those of the last one (read only: no
            # exchange edits ``raw_headers``; request_head's cache then compares one list).
            req, method = last[1], last[2]
        else:
            try:
                req = request_of(headers, self.max_header_size)
            except MalformedRequest as e:
                log.debug("h2 stream %d malformed: %s", sid, e)
                self.conn.reset_stream(sid, ErrorCode.PROTOCOL_ERROR)
                return
            except Refused as refused:
                log.debug("h2 stream %d refused (%d): %s", sid, refused.status, refused)
                self._answer(sid, refused.status, event.ended)
                return
            method = method_of(req.method)
            self.last_request = (headers, req, method)
        stream = H2Stream(self, sid)
        self.streams[sid] = stream
        self.active = stream
        self.deadline = 0.0
        if req.expect_continue and not event.ended:
            self.conn.send_headers(sid, [(b":status", b"100")])
        stream.start(method, req, event.ended)

    def _answer(self, sid: int, status: int, ended: bool) -> None:
        """The gateway's page with ``status`` on stream ``sid``, as on HTTP/1.1 (the page goes
        only within the client's window: else the head alone ends the stream)."""
        conn = self.conn
        page = error_page(status)
        state = self.state
        fields = response_fields(split_lines(state.server_header + state.date_line()))
        head = [(b":status", b"%d" % status), *fields, (b"content-type", b"text/html"),
                (b"content-length", b"%d" % len(page))]  # fmt: skip
        fits = len(page) <= min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
        conn.send_headers(sid, head if fits else head[:-1], end_stream=not fits)
        if fits:
            conn.send_data(sid, page, end_stream=True)
        if not ended:  # RFC 9113 8.1: answered before the body; the client may stop sending it
            conn.reset_stream(sid, ErrorCode.NO_ERROR)

    def _on_refused(self, event: ev.StreamRefused) -> None:
        # A refused stream cost a header block's decoding: counted as a reset (rapid reset).
        if not self.budget.spend_reset(self.state.loop.time()):
            self.fail(ErrorCode.ENHANCE_YOUR_CALM)

    def _on_data(self, event: ev.DataReceived) -> None:
        sid = event.stream_id
        stream = self.streams.get(sid)
        size = event.flow_controlled_length
        if (
            not event.data
            and not event.ended
            and not self.budget.spend_empty(self.state.loop.time())
        ):
            self.fail(ErrorCode.ENHANCE_YOUR_CALM)
            return
        if stream is None:
            # A stream already answered or reset: its bytes still count against the
            # connection window, which is opened again.
            if size:
                self.conn.acknowledge_received_data(size, sid)
            return
        stream.on_data(event.data, size)
        if event.ended:  # (no StreamEnded follows: a unary call's message is one event)
            stream.on_end()

    def _on_trailers(self, event: ev.TrailersReceived) -> None:
        """A request's trailers end it (RFC 9113 8.1); the fields are dropped."""
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.on_end()

    def _on_end(self, event: ev.StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.on_end()

    def _on_reset(self, event: ev.StreamReset) -> None:
        stream = self.streams.pop(event.stream_id, None)
        if stream is not None:
            self._forget(stream)
            if not stream.ended:
                stream.gone()
        # CVE-2023-44487: every reset a client sends is counted, answered or not.
        if event.remote_reset and not self.budget.spend_reset(self.state.loop.time()):
            log.debug("h2 rapid reset from %s", self.remote_addr)
            self.fail(ErrorCode.ENHANCE_YOUR_CALM)

    def _on_window(self, event: ev.WindowUpdated) -> None:
        if event.stream_id:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.push()
        else:
            for stream in list(self.streams.values()):
                stream.push()

    def _on_settings(self, event: ev.RemoteSettingsChanged) -> None:
        if not self.budget.spend_control(self.state.loop.time()):
            self.fail(ErrorCode.ENHANCE_YOUR_CALM)
            return
        if INITIAL_WINDOW_SIZE in event.changed:
            for stream in list(self.streams.values()):
                stream.push()

    def _on_control(self, event: Any) -> None:
        """PING (answered already), PRIORITY, an unknown frame: cheap for the client, a write
        for us; past the budget the connection is closed."""
        if not self.budget.spend_control(self.state.loop.time()):
            log.debug("h2 control frame flood from %s", self.remote_addr)
            self.fail(ErrorCode.ENHANCE_YOUR_CALM)

    def _on_terminated(self, event: ev.ConnectionTerminated) -> None:
        self._abandon()

    # -- streams and lifecycle ----------------------------------------------------------

    def stream_done(self, stream: H2Stream) -> None:
        """A stream's response has left (or it was reset): forget it."""
        if self.streams.get(stream.sid) is stream:
            del self.streams[stream.sid]
            self._forget(stream)

    def _forget(self, stream: H2Stream) -> None:
        if stream.held:
            self.held -= stream.held
            stream.held = 0
        if self.starved:
            self.release()
        streams = self.streams
        if self.active is stream:
            self.active = next(iter(streams.values())) if streams else None
        if not streams:
            state = self.state
            if self.goaway_at or state.shutting_down:
                self.flush()
                self.close()
            else:  # (_idle, inlined: at 50 clients x 1 stream, once per request)
                t = state.keepalive_timeout
                self.deadline = state.loop.time() + t if t > 0 else 0.0

    def _idle(self) -> None:
        t = self.state.keepalive_timeout
        self.deadline = self.state.loop.time() + t if t > 0 else 0.0

    def goaway(self) -> None:
        """Graceful GOAWAY (RFC 9113 6.8): streams up to ``last_stream`` finish, later ones are
        refused."""
        if self.goaway_at or self.closing:
            return
        self.goaway_at = self.state.loop.time()
        self.conn.goaway(ErrorCode.NO_ERROR, self.last_stream)
        self.flush()

    def reading_head(self) -> bool:
        return False

    def on_deadline(self) -> None:
        if not self.streams:  # idle for keepalive_timeout (nginx: http2 idle = keepalive)
            self.goaway()
            self.close()

    def on_send_timeout(self) -> None:
        """The client read nothing for send_timeout: drop it."""
        self.closing = True
        self.transport.abort()

    def close_if_idle(self, min_idle: float = 0.0) -> bool:
        """Graceful stop: GOAWAY first; the connection closes once its streams are done and
        the client had ``min_idle`` to see the GOAWAY."""
        self.goaway()
        if self.streams:
            return False
        if min_idle and self.state.loop.time() - self.goaway_at < min_idle:
            return False
        self.close()
        return True

    def close(self) -> None:
        self.closing = True
        self.deadline = 0.0
        if not self.transport.is_closing():
            self.state.flush_writes()
            self.flush()
            self.transport.close()

    # -- what streams use ---------------------------------------------------------------

    def ack(self, size: int, sid: int) -> None:
        """Open the windows again for ``size`` body bytes the exchange took."""
        self.conn.acknowledge_received_data(size, sid)  # a closed stream: the connection's
        self.flush_soon()

    def release(self) -> None:
        """Some exchange took what it held: open the windows the budget kept shut."""
        if self.held > BODY_BUDGET:
            return
        self.starved = False
        for stream in list(self.streams.values()):
            if stream.unacked and not stream.reading_paused:
                n, stream.unacked = stream.unacked, 0
                self.ack(n, stream.sid)


_HANDLERS: dict[type, Any] = {
    ev.RequestReceived: H2Protocol._on_request,
    ev.DataReceived: H2Protocol._on_data,
    ev.StreamEnded: H2Protocol._on_end,
    ev.TrailersReceived: H2Protocol._on_trailers,
    ev.StreamReset: H2Protocol._on_reset,
    ev.WindowUpdated: H2Protocol._on_window,
    ev.RemoteSettingsChanged: H2Protocol._on_settings,
    ev.ControlReceived: H2Protocol._on_control,
    ev.ConnectionTerminated: H2Protocol._on_terminated,
    ev.StreamRefused: H2Protocol._on_refused,
}
