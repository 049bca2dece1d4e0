"""One HTTP/2 request stream: the ``ClientConnection`` of the exchange that answers it.

The exchange sees the stream as its connection: ``transport`` is the stream itself, whose
``write`` sends DATA frames (so the exchange's body path is the one it has on HTTP/1.1), and
``http2`` tells the exchange to hand the head and the end over as fields (``send_head``,
``end_response``) instead of HTTP/1.1 bytes. Flow control (RFC 9113 5.2): bytes beyond the
peer's stream and connection windows wait in ``pending`` and the stream is ``write_paused``,
which stops the exchange reading its upstream (as a full socket buffer does on HTTP/1.1) until
a WINDOW_UPDATE makes room.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from tollway.http2.connection import H2Error
from tollway.http2.frames import ErrorCode
from tollway.proxy.flow import BODY_HIGH_WATER
from tollway.proxy.h2_fields import H2Request
from tollway.proxy.pipeline import Exchange

if TYPE_CHECKING:
    from tollway.http2.connection import Connection
    from tollway.proxy.contracts import HeadCache
    from tollway.proxy.state import ServerState
    from tollway.runtime.certs import ClientCheck


class H2Protocol(Protocol):
    """What a stream uses of its connection (h2.H2Protocol)."""

    conn: Connection
    state: ServerState
    scheme: str
    remote_addr: str
    remote_port: int
    server_addr: str
    server_port: int
    trust_real_ip: bool
    client_cert: tuple[ClientCheck, bool] | None
    write_paused: bool
    held: int  # request body bytes the exchanges of the connection hold (BODY_BUDGET)
    starved: bool  # a stream's window waits for the connection's budget
    host_cache: tuple[bytes, str] | None  # (the streams' caches: see H2Stream)
    head_cache: HeadCache | None

    def ack(self, size: int, sid: int) -> None: ...
    def start_after_read(self, ex: Exchange) -> None: ...
    def release(self) -> None: ...
    def flush_soon(self) -> None: ...
    def stream_done(self, stream: H2Stream) -> None: ...


# the :status field per code, one tuple each (the encoder's cache compares them by identity)
_STATUS = {s: (b":status", str(s).encode()) for s in range(100, 600)}
# Request body bytes the exchanges of one connection may hold before no stream's window is
# opened until some exchange takes what it holds: without it, 128 streams each holding
# BODY_HIGH_WATER (as one HTTP/1.1 request may) would be 32 MB for one connection.
BODY_BUDGET = 8 * BODY_HIGH_WATER
_END = object()  # in ``pending``: END_STREAM (or the trailers) once the data before it left
# ``pending`` of a stream that never queued (most: an answer that fits the windows leaves at
# once). Nothing is ever appended to it (``H2Stream._queue``); its maxlen of 0 would drop it.
_NO_QUEUE: deque[Any] = deque(maxlen=0)


class H2Stream:
    http2 = True
    # (slots: a stream is made per request, and its two dozen fields are set faster so)
    __slots__ = ("blocked", "client_cert", "conn", "ended", "ex", "h2p", "held", "pending",
                 "reading_paused", "remote_addr", "remote_port", "request_done", "scheme",
                 "server_addr", "server_port", "sid", "state", "trailers", "trust_real_ip",
                 "tunnel", "unacked", "write_paused")  # fmt: skip

    def __init__(self, h2p: H2Protocol, sid: int) -> None:
        self.h2p = h2p
        self.conn = h2p.conn
        self.sid = sid
        self.state = h2p.state
        self.scheme = h2p.scheme
        self.remote_addr = h2p.remote_addr
        self.remote_port = h2p.remote_port
        self.server_addr = h2p.server_addr
        self.server_port = h2p.server_port
        self.trust_real_ip = h2p.trust_real_ip
        self.client_cert = h2p.client_cert
        self.write_paused = h2p.write_paused
        # body bytes (and _END) beyond the windows: a queue of its own once there are some
        self.pending: deque[Any] = _NO_QUEUE
        self.tunnel: Any = None
        self.ex: Exchange | None = None
        self.blocked = False  # waiting for a WINDOW_UPDATE
        self.ended = False  # END_STREAM (or RST_STREAM) sent
        self.reading_paused = False
        self.unacked = 0  # body bytes received while paused: the window opens on resume
        self.held = 0  # body bytes fed to the exchange since it last took them all
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.request_done = False

    def _queue(self) -> deque[Any]:
        """``pending``, a queue of this stream's own (the shared empty one takes nothing)."""
        pending = self.pending
        if pending is _NO_QUEUE:
            pending = self.pending = deque()
        return pending

    @property
    def transport(self) -> Any:
        """The exchange's writes are this stream's DATA frames. (A property, not an attribute
        holding the stream itself: that reference cycle left every stream to the collector.)"""
        return self

    # The exchange's per-connection caches (Exchange._make_context, request_head) are the
    # connection's: its streams carry the same Host and fields request after request.

    @property
    def host_cache(self) -> tuple[bytes, str] | None:
        return self.h2p.host_cache

    @host_cache.setter
    def host_cache(self, value: tuple[bytes, str] | None) -> None:
        self.h2p.host_cache = value

    @property
    def head_cache(self) -> HeadCache | None:
        return self.h2p.head_cache

    @head_cache.setter
    def head_cache(self, value: HeadCache | None) -> None:
        self.h2p.head_cache = value

    def start(self, method: str, req: H2Request, ended: bool) -> None:
        ex = self.ex = Exchange(self, method, req.path, req.fields, "2.0", True, req.host)
        if not ended:
            ex.has_body = True
            if req.content_length is not None:
                ex.content_length = req.content_length
                ex.has_body = req.content_length > 0 or not ended
                limit = self.state.max_body_size
                if limit and req.content_length > limit:
                    ex.reject_status = 413
            else:
                ex.body_chunked = True  # to an HTTP/1.1 upstream: chunked (nginx does too)
            # Started once the frames of this read are handled: a body that came with the head
            # (a unary gRPC call's) is then whole, and the exchange needs no task for it.
            self.h2p.start_after_read(ex)
            return
        ex.body_complete = True
        self.request_done = True
        ex.start()

    # -- request body -------------------------------------------------------------------

    def on_data(self, data: bytes, size: int) -> None:
        ex = self.ex
        h2p = self.h2p
        if ex is not None and data and not ex.client_closed:
            ex.feed_body(data)
            self.held += len(data)
            h2p.held += len(data)
        if self.reading_paused or h2p.held > BODY_BUDGET:
            self.unacked += size  # the window opens when the exchange takes what it holds
            h2p.starved = h2p.starved or not self.reading_paused
        elif size:
            h2p.ack(size, self.sid)

    def on_end(self) -> None:
        self.request_done = True
        ex = self.ex
        if ex is not None and not ex.body_complete:
            ex.finish_body()

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        """The exchange took all the body bytes it held (or may take more)."""
        h2p = self.h2p
        h2p.held -= self.held
        self.held = 0
        self.reading_paused = False
        if self.unacked:
            n, self.unacked = self.unacked, 0
            h2p.ack(n, self.sid)
        if h2p.starved:
            h2p.release()

    # -- response (what the exchange calls) ---------------------------------------------

    def send_head(self, status: int, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        if self.ended:
            return
        head = [_STATUS.get(status) or (b":status", str(status).encode()), *fields]
        try:
            self.conn.send_headers(self.sid, head, end_stream=end)
        except H2Error:
            self._lost()
            return
        if end:
            self._after_end()
        self.h2p.flush_soon()

    def write(self, data: bytes) -> None:
        """Body bytes: DATA frames as far as the windows allow, the rest when they open."""
        if self.ended or not data:
            return
        if not self.pending:
            # Nothing waits: one DATA frame at once when the windows take it (a gRPC answer's
            # message), without the queue
            try:
                sent = self.conn.send_fits(self.sid, data)
            except H2Error:
                self._lost()
                return
            if sent:
                self.h2p.flush_soon()
                return
        self._queue().append(data)
        self.push()

    def end_response(self, trailers: list[tuple[bytes, bytes]] | None, last: bytes = b"") -> None:
        """The response is complete (after ``last``, its last body bytes): END_STREAM, on a
        last HEADERS frame with trailers, else on the last DATA frame."""
        if self.ended:
            return
        if not self.pending:
            # The common end (a whole answer read at once): its last bytes with END_STREAM in
            # one DATA frame when the windows take them, or its trailers (a gRPC answer's
            # status) after them, without the queue.
            conn = self.conn
            try:
                if not trailers:
                    sent = conn.send_last(self.sid, last)
                elif not last or conn.send_fits(self.sid, last):
                    conn.send_headers(self.sid, trailers, end_stream=True)
                    sent = True
                else:
                    sent = False
            except H2Error:
                self._lost()
                return
            if sent:
                self._after_end()
                self.h2p.flush_soon()
                return
        self.trailers = trailers
        pending = self._queue()
        if last:
            pending.append(last)
        pending.append(_END)
        self.push()

    def is_closing(self) -> bool:
        return self.ended

    def push(self) -> None:
        """Send what waits, within the windows (called again on WINDOW_UPDATE)."""
        pending = self.pending
        conn = self.conn
        sid = self.sid
        try:
            while pending:
                item = pending[0]
                if item is _END:
                    pending.popleft()
                    self._send_end()
                    break
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if room <= 0:
                    break
                if len(item) <= room:
                    pending.popleft()
                    if pending and pending[0] is _END and not self.trailers:
                        pending.popleft()
                        self._send_end(item)  # the last bytes carry END_STREAM: one frame
                        break
                    conn.send_data(sid, item)
                else:
                    pending[0] = item[room:]
                    conn.send_data(sid, item[:room])
        except H2Error:
            self._lost()
            return
        self.h2p.flush_soon()
        blocked = bool(pending)
        if blocked != self.blocked:
            self.blocked = blocked
            self.update_paused()

    def _send_end(self, last: bytes | None = None) -> None:
        if last is not None:
            self.conn.send_data(self.sid, last, end_stream=True)
        elif self.trailers:
            self.conn.send_headers(self.sid, self.trailers, end_stream=True)
        else:
            self.conn.end_stream(self.sid)
        self._after_end()

    def _after_end(self) -> None:
        self.ended = True
        if not self.request_done:
            # RFC 9113 8.1: the answer is complete before the request's body; the client may
            # stop sending it (unless its end crossed our answer: the stream is closed then).
            try:
                self.conn.reset_stream(self.sid, ErrorCode.NO_ERROR)
            except H2Error:
                pass
        ex = self.ex
        if ex is None or ex._finished:
            self.h2p.stream_done(self)

    def update_paused(self) -> None:
        """write_paused: the windows or the socket are full; the exchange stops its upstream."""
        paused = self.blocked or self.h2p.write_paused
        if paused == self.write_paused:
            return
        self.write_paused = paused
        ex = self.ex
        if ex is not None:
            if paused:
                ex.client_paused()
            else:
                ex.client_resumed()

    # -- lifecycle ----------------------------------------------------------------------

    def exchange_done(self, ex: Any, keep_alive: bool) -> None:
        """The exchange finished. Its answer is complete when it called end_response (maybe
        still waiting for window); otherwise it broke off (the upstream failed mid-body, the
        client went away): the stream is reset, so the client sees it is cut short."""
        # (No ServerState.flush_writes here: an exchange on a stream never defers a write to it;
        # what is deferred are upstream requests, which keep their batching.)
        # The exchange is over: the stream lets go of it (no exchange <-> stream cycle left to
        # the collector; what is still to send needs only the stream).
        self.ex = None
        if self.ended:  # (its last frame was queued, and a flush with it)
            self.h2p.stream_done(self)
            return
        if not self.pending or self.pending[-1] is not _END:
            self._reset(ErrorCode.INTERNAL_ERROR)
            self.h2p.stream_done(self)
        self.h2p.flush_soon()

    def _reset(self, code: ErrorCode) -> None:
        self.ended = True
        self.pending.clear()
        try:
            self.conn.reset_stream(self.sid, code)
        except H2Error:
            pass

    def _lost(self) -> None:
        """The stream is closed at the protocol level (the client reset it meanwhile)."""
        self.ended = True
        self.pending.clear()
        self.h2p.stream_done(self)

    def gone(self) -> None:
        """The client reset the stream or the connection closed."""
        self.ended = True
        self.pending.clear()
        ex = self.ex
        if ex is not None and not ex._finished:
            ex.client_gone()

    def start_tunnel(self, upstream: Any) -> None:
        upstream.close()  # no Upgrade on HTTP/2 (extended CONNECT is not offered)

    def close(self) -> None:
        if not self.ended:
            self._reset(ErrorCode.CANCEL)
            self.h2p.flush_soon()
