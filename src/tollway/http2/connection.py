"""An HTTP/2 connection's state (RFC 9113), either side: frames in -> events, calls -> frames out.

Written for Tollway's two uses (clients towards the gateway, the gateway towards gRPC
upstreams) instead of the ``h2`` state machine: h2's per-frame objects, event objects, state
tables and header validation were over half of the worker's CPU on the HTTP/2 and gRPC paths
(bench/RESULTS.md). HPACK is jh2's compiled codec. What it keeps of the protocol: the preface
and the first SETTINGS (3.4), frame sizes (4.2), padding (6.1), CONTINUATION sequencing (6.10),
stream ids and states (5.1: idle, open, half-closed, closed), SETTINGS and their ACK (6.5),
PING (6.7), GOAWAY (6.8), both flow-control windows each way (5.2, 6.9), content-length
against the DATA received (8.1.1), and the split between stream errors (RST_STREAM, the
connection goes on) and connection errors (GOAWAY, ``ProtocolError`` raised: the owner closes).
Frames on a stream closed here (answered, reset) are dropped, their DATA given back to the
connection window (5.1 lets an endpoint ignore what was in flight); no record of closed ids is
kept beyond the few ranges of ids a client jumped over (5.1.1). Server push is neither
sent nor accepted (ENABLE_PUSH 0; PUSH_PROMISE is a PROTOCOL_ERROR).
"""

from __future__ import annotations

from typing import Any, NoReturn

from jh2._hazmat import Decoder, Encoder, HPACKError, OversizedHeaderListError

from tollway.http2 import events as ev
from tollway.http2.frames import (
    ACK,
    CONTINUATION,
    DATA,
    ENABLE_PUSH,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEAD,
    HEADER_TABLE_SIZE,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_FRAME_SIZE_LIMIT,
    MAX_WINDOW,
    MIN_FRAME_SIZE,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    ErrorCode,
    code_of,
    frame,
    header_frames,
    parse_goaway,
    parse_settings,
    parse_u32,
    rst_stream,
    unpad,
    window_update,
)
from tollway.http2.inbound import check_response

MAX_CONTINUATIONS = 64  # CONTINUATION frames in one header block (empty ones cost nothing else)
# Ranges of stream ids a client jumped over that are remembered (clients open ids in order: a
# client jumping over more is told apart less strictly, its frames there dropped)
MAX_SKIPPED = 16
_BLOCK_FLAGS = END_HEADERS | PADDED | PRIORITY_FLAG  # (a HEADERS frame's: see receive_data)
_SENSITIVE = frozenset({b"authorization", b"proxy-authorization"})
# RFC 7541 6.1: an indexed header field changes neither side's dynamic table, and one octet
# 0x81-0xFE is one such field (index 1-126; 0xFF starts a longer index, 0x80 is invalid). A
# block of only these decodes to what it did last time when no other block came between (the
# table is unchanged), and a list that encoded to one encodes to it again (the encoder is
# deterministic and its table unchanged). Clients repeat their requests' fields, and answers
# repeat theirs within a second (date): HPACK was a tenth of an HTTP/2 request's CPU.
_INDEXED = bytes(range(0x81, 0xFF))
# Blocks (lists) kept per connection while the tables stay as they are: a response's head and
# its trailers alternate (gRPC), so one remembered block would miss every time.
KNOWN_BLOCKS = 4


def _keeps_table(block: bytes) -> bool:
    """The block changes no dynamic table: indexed fields (RFC 7541 6.1), literals without
    indexing or never indexed (6.2.2, 6.2.3), and no literal with incremental indexing (6.2.1)
    nor table size update (6.3). Such a block decodes to the same list while no other block came
    between. nghttp2 (h2load, curl) sends ``:path`` as a literal without indexing, so a client's
    repeated request is not indexed fields only."""
    if not block.translate(None, _INDEXED):
        return True
    i, n = 0, len(block)
    while 0 <= i < n:
        b = block[i]
        if b & 0x80:
            i = _skip_int(block, i, 0x7F)
        elif b & 0xE0:
            return False  # 01xxxxxx: added to the table; 001xxxxx: its size changes
        else:
            literal_name = not b & 0x0F  # (name index 0: the name is a string too)
            i = _skip_int(block, i, 0x0F)
            if literal_name:
                i = _skip_str(block, i)
            i = _skip_str(block, i)
    return i == n


STATIC_ENTRIES = 61  # RFC 7541 Appendix A: indices 1-61; 62 on are the dynamic table's


def _table_free(block: bytes) -> bool:
    """The block refers to no dynamic-table entry (RFC 7541 2.3.3: indices 1-61 only, as
    fields or names) and sets no table size but 0: what a peer that acknowledged our
    SETTINGS_HEADER_TABLE_SIZE 0 sends (4.2), and a block that decodes to the same list
    whatever the table holds."""
    i, n = 0, len(block)
    while 0 <= i < n:
        b = block[i]
        if b & 0x80:
            index, i = _int(block, i, 0x7F)
            if not 0 < index <= STATIC_ENTRIES:
                return False
            continue
        if b & 0x40:
            mask = 0x3F  # literal with incremental indexing (6.2.1)
        elif b & 0x20:
            size, i = _int(block, i, 0x1F)  # table size update (6.3)
            if size:
                return False
            continue
        else:
            mask = 0x0F  # literal without indexing, never indexed (6.2.2, 6.2.3)
        index, i = _int(block, i, mask)
        if index > STATIC_ENTRIES:
            return False
        if not index:
            i = _skip_str(block, i)
        i = _skip_str(block, i)
    return i == n


def _int(block: bytes, i: int, mask: int) -> tuple[int, int]:
    """The integer at ``i`` with a ``mask`` prefix (RFC 7541 5.1) and what follows it
    (-1 when cut short)."""
    value, i, shift, n = block[i] & mask, i + 1, 0, len(block)
    if value < mask:
        return value, i
    while i < n:
        octet = block[i]
        i += 1
        value += (octet & 0x7F) << shift
        shift += 7
        if not octet & 0x80:
            return value, i
    return value, -1


def _skip_int(block: bytes, i: int, mask: int) -> int:
    """Past the integer at ``i`` with a ``mask`` prefix (RFC 7541 5.1), -1 when cut short."""
    i, value, n = i + 1, block[i] & mask, len(block)
    if value < mask:
        return i
    while i < n:
        i += 1
        if not block[i - 1] & 0x80:
            return i
    return -1


def _skip_str(block: bytes, i: int) -> int:
    """Past the string literal at ``i`` (RFC 7541 5.2), -1 when cut short."""
    n = len(block)
    if not 0 <= i < n:
        return -1
    length, shift, j = block[i] & 0x7F, 0, i + 1
    if length == 0x7F:
        while True:
            if j >= n:
                return -1
            octet = block[j]
            j += 1
            length += (octet & 0x7F) << shift
            shift += 7
            if not octet & 0x80:
                break
    j += length
    return j if j <= n else -1


class H2Error(Exception):
    pass


class ProtocolError(H2Error):
    """A connection error (RFC 9113 5.4.1): GOAWAY with ``error_code`` is queued; close."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{code.name}: {reason}")
        self.error_code = code


class StreamClosedError(ProtocolError):
    """A call on a stream that is closed (or was never opened) here: nothing was queued."""

    def __init__(self, sid: int) -> None:
        super().__init__(ErrorCode.STREAM_CLOSED, f"stream {sid} is closed")


class Stream:
    __slots__ = ("length", "local_closed", "received", "recv_window", "remote_closed",
                 "response", "send_window", "unacked")  # fmt: skip

    def __init__(self, send_window: int, recv_window: int) -> None:
        self.send_window = send_window  # what we may send (the peer's window)
        self.recv_window = recv_window  # what the peer may send
        self.unacked = 0  # bytes taken by the owner, not yet given back by WINDOW_UPDATE
        self.local_closed = False  # END_STREAM sent
        self.remote_closed = False  # END_STREAM received
        self.response = False  # (client side) the final response head arrived
        self.length = -1  # content-length of what the peer sends (-1: none)
        self.received = 0  # DATA bytes received


class Connection:
    """One side of one connection. ``local``: the SETTINGS we send, enforced at once (the peer
    may only send less than they allow before it acknowledges them)."""

    def __init__(self, client_side: bool, local: dict[int, int]) -> None:
        self.client_side = client_side
        self.local = local
        self.out: list[bytes] = []
        self.buf = b""  # the start of a frame still incomplete
        self.preface = not client_side  # (server) the client's preface is still to come
        self.settings_seen = False  # the peer's first frame must be SETTINGS (3.4)
        self.closed = False  # a GOAWAY of ours queued: nothing more is accepted
        self.goaway_received = False
        self.streams: dict[int, Stream] = {}
        self.highest_inbound = 0  # (server) the highest stream id the client opened
        self.next_sid = 1  # (client) the id of the next stream we open
        self.max_concurrent = local.get(MAX_CONCURRENT_STREAMS, 1 << 31)
        self.local_initial = local.get(INITIAL_WINDOW_SIZE, 65535)
        self.max_inbound_frame_size = MIN_FRAME_SIZE
        self.remote_max_concurrent = 1 << 31
        self.remote_initial = 65535
        self.max_outbound_frame_size = MIN_FRAME_SIZE
        self.send_window = 65535  # the connection windows, each way (6.9.2)
        self.recv_window = 65535
        self.recv_max = 65535  # the connection window we keep open
        self.unacked = 0
        self.max_header_block = 1 << 20  # bytes of one header block, compressed (CVE-2024-27316)
        self.encoder = Encoder()
        self.decoder = Decoder()
        # The last few header blocks decoded and lists encoded that left the tables as they
        # were (``_keeps_table``), forgotten when a block changes a table: the same block or
        # list again needs no HPACK work. (Decoded: with the list's content-length, as
        # ``_in_length`` gives it.)
        self._known_in: dict[bytes, tuple[list[tuple[bytes, bytes]], int, list[bool]]] = {}
        # Whether the block decoded last passed check_response as a head, as trailers (shared
        # with its entry in _known_in: a remembered block is checked once)
        self._in_checks = [False, False]
        self._in_length = -1  # the content-length of the block decoded last (-1: none)
        self._known_out: list[tuple[list[tuple[bytes, bytes]], bytes]] = []
        # We sent SETTINGS_HEADER_TABLE_SIZE 0 (as nginx's grpc_pass does towards upstreams)
        # and the peer acknowledged it: from then on its blocks refer to no dynamic entry
        # (RFC 7541 4.2), so each decodes to the same list whatever came before; one that does
        # refer to one is a COMPRESSION_ERROR.
        self._no_table = False
        self._block: list[bytes] | None = None  # a header block waiting for CONTINUATION
        self._block_sid = 0
        self._block_flags = 0
        self._block_size = 0
        self._block_frames = 0
        self._skipped: list[tuple[int, int]] = []  # (server) ids a client jumped over
        self._handlers: dict[int, Any] = {
            DATA: self._on_data, HEADERS: self._on_headers, PRIORITY: self._on_priority,
            RST_STREAM: self._on_rst, SETTINGS: self._on_settings, PUSH_PROMISE: self._on_push,
            PING: self._on_ping, GOAWAY: self._on_goaway, WINDOW_UPDATE: self._on_window,
            CONTINUATION: self._on_continuation,
        }  # fmt: skip

    # -- set-up and what leaves ---------------------------------------------------------

    def initiate_connection(self) -> None:
        start = PREFACE if self.client_side else b""
        payload = b"".join(
            k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in self.local.items()
        )
        self.out.append(start + frame(SETTINGS, 0, 0, payload))

    def increment_flow_control_window(self, n: int) -> None:
        """Open the connection's receive window by ``n`` (kept open from then on)."""
        self.recv_window += n
        self.recv_max += n
        self.out.append(window_update(0, n))

    def data_to_send(self) -> bytes:
        out = self.out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def close_connection(self, code: int = 0, last_stream_id: int | None = None) -> None:
        """GOAWAY (RFC 9113 6.8); nothing more is received or sent after it."""
        if not self.closed:
            self.goaway(code, last_stream_id)
            self.closed = True

    def goaway(self, code: int = 0, last_stream_id: int | None = None) -> None:
        """GOAWAY without closing: streams up to ``last_stream_id`` go on (a graceful stop)."""
        last = self.highest_inbound if last_stream_id is None else last_stream_id
        self.out.append(frame(GOAWAY, 0, 0, last.to_bytes(4, "big") + code.to_bytes(4, "big")))

    # -- streams: what we send ----------------------------------------------------------

    def get_next_available_stream_id(self) -> int:
        return self.next_sid

    def send_headers(
        self, sid: int, headers: list[tuple[bytes, bytes]], end_stream: bool = False
    ) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            stream = self._open_outbound(sid)
        elif stream.local_closed:
            raise StreamClosedError(sid)
        block = self._encode(headers)  # (a remembered block first: _known_out)
        n = len(block)
        if n <= self.max_outbound_frame_size:  # one HEADERS frame (header_frames, inlined)
            flags = END_STREAM | END_HEADERS if end_stream else END_HEADERS
            self.out += (HEAD.pack(n << 8 | HEADERS, flags, sid), block)
        else:
            self.out.append(header_frames(sid, block, end_stream, self.max_outbound_frame_size))
        if end_stream:
            self._local_end(sid, stream)

    def _encode(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        known = self._known_out
        for listed, known_block in known:
            if listed == headers:
                return known_block  # (see _keeps_table: the encoder's table is as it was then)
        if self.client_side:
            # RFC 7541 7.1.3: credentials never enter the (shared) dynamic table
            triples = [
                (k, v, k in _SENSITIVE or (k == b"cookie" and len(v) < 20)) for k, v in headers
            ]
        else:
            triples = [(k, v, False) for k, v in headers]
        block = self.encoder.encode(triples)
        if not _keeps_table(block):
            known.clear()
        elif len(known) < KNOWN_BLOCKS:
            known.append((list(headers), block))
        return block

    def _open_outbound(self, sid: int) -> Stream:
        if not self.client_side or sid != self.next_sid:
            raise StreamClosedError(sid)
        if self.closed or self.goaway_received:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "the connection is going away")
        self.next_sid += 2
        stream = self.streams[sid] = Stream(self.remote_initial, self.local_initial)
        return stream

    def local_flow_control_window(self, sid: int) -> int:
        """Bytes we may send on ``sid`` now (its window and the connection's)."""
        stream = self.streams.get(sid)
        if stream is None or stream.local_closed:
            raise StreamClosedError(sid)
        return min(self.send_window, stream.send_window)

    def send_data(self, sid: int, data: bytes, end_stream: bool = False) -> None:
        stream = self.streams.get(sid)
        if stream is None or stream.local_closed:
            raise StreamClosedError(sid)
        n = len(data)
        if n > self.send_window or n > stream.send_window or n > self.max_outbound_frame_size:
            raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the window")
        self.send_window -= n
        stream.send_window -= n
        self.out.append(HEAD.pack(n << 8 | DATA, END_STREAM if end_stream else 0, sid))
        self.out.append(data)
        if end_stream:
            self._local_end(sid, stream)

    def send_fits(self, sid: int, data: bytes) -> bool:
        """``data`` as one DATA frame when the windows and the frame size take it all (an
        answer's message: one call); False, nothing sent, when not."""
        return self._send_whole(sid, data, 0) is not None

    def send_last(self, sid: int, data: bytes) -> bool:
        """``data`` as the stream's last DATA frame (END_STREAM) when the windows and the frame
        size take it all (the usual end of an answer: one call); False, nothing sent, when not.
        """
        stream = self._send_whole(sid, data, END_STREAM)
        if stream is None:
            return False
        stream.local_closed = True
        if stream.remote_closed:
            del self.streams[sid]
        return True

    def _send_whole(self, sid: int, data: bytes, flags: int) -> Stream | None:
        """One DATA frame of all ``data`` with ``flags``, its stream, when both windows and the
        frame size take it; else None and nothing sent."""
        stream = self.streams.get(sid)
        if stream is None or stream.local_closed:
            raise StreamClosedError(sid)
        n = len(data)
        if n > self.send_window or n > stream.send_window or n > self.max_outbound_frame_size:
            return None
        self.send_window -= n
        stream.send_window -= n
        self.out += (HEAD.pack(n << 8 | DATA, flags, sid), data)
        return stream

    def end_stream(self, sid: int) -> None:
        self.send_data(sid, b"", end_stream=True)

    def reset_stream(self, sid: int, code: int = ErrorCode.CANCEL) -> None:
        """RST_STREAM (a stream closed here already: nothing to send)."""
        if self.streams.pop(sid, None) is not None:
            self.out.append(rst_stream(sid, code))

    def _local_end(self, sid: int, stream: Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            del self.streams[sid]

    def acknowledge_received_data(self, size: int, sid: int) -> None:
        """The owner took ``size`` flow-controlled bytes of ``sid``: the windows open again,
        by WINDOW_UPDATE once half a window was taken, or at once when the window is shut
        (h2's rule: few frames, and a full window never waits)."""
        self.unacked += size
        n = self.unacked
        if n >= self.recv_max // 2 or (self.recv_window <= 0 and n > 1024):
            self.recv_window += n
            self.unacked = 0
            self.out.append(window_update(0, n))
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            return
        stream.unacked += size
        n = stream.unacked
        if n >= self.local_initial // 2 or (stream.recv_window <= 0 and n > 1024):
            stream.recv_window += n
            stream.unacked = 0
            self.out.append(window_update(sid, n))

    # -- frames in ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[ev.Event]:
        """The events of the frames complete in what arrived so far. A connection error raises
        ``ProtocolError`` (its GOAWAY queued); a stream error only resets its stream."""
        if self.closed:
            return []
        # (bytes, not a bytearray: a read that holds whole frames, the common case, is sliced
        # once per frame and never copied whole)
        buf = self.buf + bytes(data) if self.buf else bytes(data)
        self.buf = b""
        if self.preface:
            buf = self._take_preface(buf)
        events: list[ev.Event] = []
        pos, size = 0, len(buf)
        try:
            while size - pos >= 9:
                word, flags, sid = HEAD.unpack_from(buf, pos)
                length = word >> 8
                if length > self.max_inbound_frame_size:
                    self._fail(ErrorCode.FRAME_SIZE_ERROR, f"frame of {length} bytes")
                end = pos + 9 + length
                if end > size:
                    break
                payload = buf[pos + 9 : end]
                pos = end
                sid &= MAX_WINDOW
                ftype = word & 0xFF
                if self._block is not None or not self.settings_seen:
                    self._frame(ftype, flags, sid, payload, events)
                elif ftype == HEADERS and flags & _BLOCK_FLAGS == END_HEADERS and sid:
                    # A whole header block, no padding or priority (a client's request): what
                    # _frame and _on_headers would check, checked
                    self._header_block(sid, flags, payload, events)
                elif ftype == DATA:  # (a call's message, an answer's body: what _frame checks)
                    self._on_data(flags, sid, payload, events)
                else:
                    self._frame(ftype, flags, sid, payload, events)
        finally:
            if pos < size and not self.closed:
                self.buf = buf[pos:]  # an incomplete frame waits for the rest
        return events

    def _take_preface(self, buf: bytes) -> bytes:
        """What follows the client's connection preface (all of ``buf`` waits while the
        preface is incomplete)."""
        n = len(PREFACE)
        if len(buf) < n:
            if not PREFACE.startswith(buf):
                self._fail(ErrorCode.PROTOCOL_ERROR, "no connection preface")
            self.buf = buf
            return b""
        if buf[:n] != PREFACE:
            self._fail(ErrorCode.PROTOCOL_ERROR, "no connection preface")
        self.preface = False
        return buf[n:]

    def _fail(self, code: ErrorCode, reason: str) -> NoReturn:
        """A connection error: GOAWAY queued, ``ProtocolError`` raised."""
        if not self.closed:
            self.close_connection(code)
        raise ProtocolError(code, reason)

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes, out: list[ev.Event]) -> None:
        if self._block is not None and ftype != CONTINUATION:
            self._fail(ErrorCode.PROTOCOL_ERROR, "a frame inside a header block")
        if not self.settings_seen:
            if ftype != SETTINGS or flags & ACK:
                self._fail(ErrorCode.PROTOCOL_ERROR, "the first frame is not SETTINGS")
            self.settings_seen = True
        handler = self._handlers.get(ftype)
        if handler is None:
            out.append(ev.ControlReceived(ftype))  # unknown type: ignored (5.5)
        else:
            handler(flags, sid, payload, out)

    def _idle(self, sid: int) -> bool:
        """``sid`` names a stream the peer may not use yet (5.1: idle)."""
        if self.client_side:
            return sid % 2 == 0 or sid >= self.next_sid
        return sid % 2 == 0 or sid > self.highest_inbound

    def _stream_error(self, sid: int, code: ErrorCode, out: list[ev.Event]) -> None:
        """RFC 9113 5.4.2: RST_STREAM, the stream is over, the connection goes on."""
        self.streams.pop(sid, None)
        self.out.append(rst_stream(sid, code))
        out.append(ev.StreamReset(sid, code, False))

    # -- DATA ---------------------------------------------------------------------------

    def _on_data(self, flags: int, sid: int, payload: bytes, out: list[ev.Event]) -> None:
        size = len(payload)
        self.recv_window -= size
        if self.recv_window < 0:
            self._fail(ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        data = unpad(flags, payload) if flags & PADDED else payload
        if data is None or not sid:
            self._fail(ErrorCode.PROTOCOL_ERROR, "bad DATA frame")
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed or (self.client_side and not stream.response):
            self._stray_data(sid, stream, size, out)
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self._fail(ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the stream window")
        stream.received += len(data)
        if 0 <= stream.length < stream.received:
            self.acknowledge_received_data(size, 0)
            self._stream_error(sid, ErrorCode.PROTOCOL_ERROR, out)  # 8.1.1: malformed
            return
        if flags & END_STREAM:
            # The last DATA (a unary call's message, an answer's body): one event says it came
            # and ended the stream, no StreamEnded follows. A body shorter than its
            # content-length (8.1.1) is delivered unended, and the stream reset.
            if 0 <= stream.length != stream.received:
                out.append(ev.DataReceived(sid, data, size, False))
                self._stream_error(sid, ErrorCode.PROTOCOL_ERROR, out)
                return
            stream.remote_closed = True
            if stream.local_closed:
                del self.streams[sid]
            out.append(ev.DataReceived(sid, data, size, True))
            return
        out.append(ev.DataReceived(sid, data, size, False))

    def _stray_data(self, sid: int, stream: Stream | None, size: int, out: list[ev.Event]) -> None:
        """DATA on a stream that cannot take it: idle (a connection error), closed here
        (dropped), half-closed by the peer (STREAM_CLOSED), or before the response head
        (PROTOCOL_ERROR). Its bytes go back to the connection window."""
        if stream is None and self._idle(sid):
            self._fail(ErrorCode.PROTOCOL_ERROR, f"DATA on idle stream {sid}")
        if size:
            self.acknowledge_received_data(size, 0)
        if stream is not None:
            code = ErrorCode.STREAM_CLOSED if stream.remote_closed else ErrorCode.PROTOCOL_ERROR
            self._stream_error(sid, code, out)

    def _remote_end(self, sid: int, stream: Stream, out: list[ev.Event]) -> None:
        if 0 <= stream.length != stream.received:
            self._stream_error(sid, ErrorCode.PROTOCOL_ERROR, out)  # 8.1.1: malformed
            return
        stream.remote_closed = True
        if stream.local_closed:
            del self.streams[sid]
        out.append(ev.StreamEnded(sid))

    # -- header blocks ------------------------------------------------------------------

    def _on_headers(self, flags: int, sid: int, payload: bytes, out: list[ev.Event]) -> None:
        block = unpad(flags, payload)
        if block is None or not sid:
            self._fail(ErrorCode.PROTOCOL_ERROR, "bad HEADERS frame")
        if flags & PRIORITY_FLAG:
            if len(block) < 5:
                self._fail(ErrorCode.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            if parse_u32(block[:4]) & MAX_WINDOW == sid:
                flags |= 0x100  # depends on itself: a stream error once decoded (5.3.1)
            block = block[5:]
        if flags & END_HEADERS:
            self._header_block(sid, flags, block, out)
            return
        self._block, self._block_sid, self._block_flags = [block], sid, flags
        self._block_size, self._block_frames = len(block), 0
        self._check_block()

    def _on_continuation(self, flags: int, sid: int, payload: bytes, out: list[ev.Event]) -> None:
        block = self._block
        if block is None or sid != self._block_sid:
            self._fail(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        block.append(payload)
        self._block_size += len(payload)
        self._block_frames += 1
        self._check_block()
        if flags & END_HEADERS:
            self._block = None
            self._header_block(sid, self._block_flags, b"".join(block), out)

    def _check_block(self) -> None:
        # CVE-2024-27316: a header block that never ends is not buffered without bound
        if self._block_size > self.max_header_block or self._block_frames > MAX_CONTINUATIONS:
            self._fail(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        hit = self._known_in.get(block)
        if hit is not None:
            self._in_length = hit[1]
            self._in_checks = hit[2]
            return hit[0][:]  # (see _keeps_table; a copy: the owner may extend its list)
        try:
            headers = [(h[0], h[1]) for h in self.decoder.decode(block, raw=True)]
        except OversizedHeaderListError:
            self._fail(ErrorCode.ENHANCE_YOUR_CALM, "header list too large (HPACK bomb)")
        except HPACKError:
            self._fail(ErrorCode.COMPRESSION_ERROR, "undecodable header block")
        except BaseException as e:
            # The compiled decoder panics on some malformed blocks (pyo3's PanicException, a
            # BaseException): a hostile peer ends its connection, not the worker.
            if isinstance(e, Exception) or type(e).__name__ == "PanicException":
                self._fail(ErrorCode.COMPRESSION_ERROR, "undecodable header block")
            raise
        length = -1
        for name, value in headers:
            if name == b"content-length" and value.isdigit():
                length = int(value)  # (h2_fields rejects a bad or second one)
        self._in_length = length
        checks = self._in_checks = [False, False]
        known = self._known_in
        if self._no_table:
            # Every block is remembered (its inserts would be evicted at once: a size-0
            # table), a few per second as a date changes: the oldest go past the bound.
            if not _table_free(block):
                self._fail(ErrorCode.COMPRESSION_ERROR, "a dynamic entry past a size-0 table")
            if len(known) >= KNOWN_BLOCKS:
                del known[next(iter(known))]
            known[block] = (headers[:], length, checks)
        elif not _keeps_table(block):
            known.clear()
        elif len(known) < KNOWN_BLOCKS:
            known[block] = (headers[:], length, checks)
        return headers

    def _well_formed(self, headers: list[tuple[bytes, bytes]], trailers: bool) -> bool:
        """``check_response`` of the block decoded last, once while it is remembered (it
        decodes to the same list)."""
        checks = self._in_checks
        if checks[trailers]:
            return True
        if check_response(headers, trailers):
            return False
        checks[trailers] = True
        return True

    def _header_block(self, sid: int, flags: int, block: bytes, out: list[ev.Event]) -> None:
        headers = self._decode(block)  # always: the HPACK table is the connection's (4.3)
        ended = bool(flags & END_STREAM)
        stream = self.streams.get(sid)
        if stream is None:
            if not self.client_side and sid % 2 and sid > self.highest_inbound:
                self._open_inbound(sid, headers, flags, out)
            elif self._idle(sid) or self._skipped_id(sid):
                # an even id from a client, a stream a server may not open, or one the client
                # skipped (5.1.1: closed implicitly, never opened: an unexpected id)
                self._fail(ErrorCode.PROTOCOL_ERROR, f"HEADERS on unexpected stream {sid}")
            return  # a stream closed here: dropped
        if flags & 0x100:
            self._stream_error(sid, ErrorCode.PROTOCOL_ERROR, out)
        elif stream.remote_closed:
            self._stream_error(sid, ErrorCode.STREAM_CLOSED, out)
        elif self.client_side and not stream.response:
            self._response(sid, stream, headers, ended, out)
        elif not ended or (self.client_side and not self._well_formed(headers, True)):
            self._stream_error(sid, ErrorCode.PROTOCOL_ERROR, out)  # 8.1: trailers end it
        elif 0 <= stream.length != stream.received:
            self._stream_error(sid, ErrorCode.PROTOCOL_ERROR, out)  # 8.1.1: malformed
        else:
            # Trailers end the stream (8.1): one event, no StreamEnded follows (a gRPC answer's
            # status)
            stream.remote_closed = True
            if stream.local_closed:
                del self.streams[sid]
            out.append(ev.TrailersReceived(sid, headers))

    def _open_inbound(self, sid: int, headers: list[tuple[bytes, bytes]], flags: int,
                      out: list[ev.Event]) -> None:  # fmt: skip
        """(server) A request opens a stream: refused past our concurrency limit (5.1.2)."""
        if sid > self.highest_inbound + 2 and len(self._skipped) < MAX_SKIPPED:
            self._skipped.append((self.highest_inbound, sid))  # ids between: never opened
        self.highest_inbound = sid
        if flags & 0x100:
            self.out.append(rst_stream(sid, ErrorCode.PROTOCOL_ERROR))
            return
        if len(self.streams) >= self.max_concurrent:
            self.out.append(rst_stream(sid, ErrorCode.REFUSED_STREAM))
            out.append(ev.StreamRefused(sid))
            return
        length = self._in_length  # (read in _decode, once per distinct block)
        stream = Stream(self.remote_initial, self.local_initial)
        if flags & END_STREAM:
            # A request without a body (most of them): one event says it opened and ended (no
            # StreamEnded follows). A content-length other than 0 with no DATA is malformed
            # (8.1.1): a stream error, and no request is reported.
            if length > 0:
                self.out.append(rst_stream(sid, ErrorCode.PROTOCOL_ERROR))
                out.append(ev.StreamReset(sid, ErrorCode.PROTOCOL_ERROR, False))
                return
            stream.remote_closed = True
            self.streams[sid] = stream
            out.append(ev.RequestReceived(sid, headers, True))
            return
        stream.length = length
        self.streams[sid] = stream
        out.append(ev.RequestReceived(sid, headers, False))

    def _skipped_id(self, sid: int) -> bool:
        return any(low < sid < high for low, high in self._skipped)

    def _response(self, sid: int, stream: Stream, headers: list[tuple[bytes, bytes]],
                  ended: bool, out: list[ev.Event]) -> None:  # fmt: skip
        """(client) A response head: 1xx ones are dropped (8.1), the final one reported."""
        if not self._well_formed(headers, False):
            self._stream_error(sid, ErrorCode.PROTOCOL_ERROR, out)
            return
        if headers[0][1][:1] == b"1":
            if ended:
                self._stream_error(sid, ErrorCode.PROTOCOL_ERROR, out)
            return
        stream.response = True
        stream.length = self._in_length
        out.append(ev.ResponseReceived(sid, headers, ended))
        if ended:
            self._remote_end(sid, stream, out)

    def _on_push(self, flags: int, sid: int, payload: bytes, out: list[ev.Event]) -> None:
        self._fail(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE (push is disabled)")

    # -- the other frames ---------------------------------------------------------------

    def _on_rst(self, flags: int, sid: int, payload: bytes, out: list[ev.Event]) -> None:
        if len(payload) != 4:
            self._fail(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM of a wrong size")
        if not sid or self._idle(sid):
            self._fail(ErrorCode.PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
        self.streams.pop(sid, None)
        # (reported for a stream closed here too: every reset counts for the rapid-reset budget)
        out.append(ev.StreamReset(sid, code_of(parse_u32(payload)), True))

    def _on_window(self, flags: int, sid: int, payload: bytes, out: list[ev.Event]) -> None:
        if len(payload) != 4:
            self._fail(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE of a wrong size")
        inc = parse_u32(payload) & MAX_WINDOW
        if not sid:
            if not inc:
                self._fail(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += inc
            if self.send_window > MAX_WINDOW:
                self._fail(ErrorCode.FLOW_CONTROL_ERROR, "connection window past 2^31-1")
            out.append(ev.WindowUpdated(0, inc))
            return
        stream = self.streams.get(sid)
        if stream is None:
            if self._idle(sid):
                self._fail(ErrorCode.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
            return
        stream.send_window += inc
        if not inc:
            self._stream_error(sid, ErrorCode.PROTOCOL_ERROR, out)
        elif stream.send_window > MAX_WINDOW:
            self._stream_error(sid, ErrorCode.FLOW_CONTROL_ERROR, out)
        else:
            out.append(ev.WindowUpdated(sid, inc))

    def _on_settings(self, flags: int, sid: int, payload: bytes, out: list[ev.Event]) -> None:
        if sid:
            self._fail(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                self._fail(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            if self.local.get(HEADER_TABLE_SIZE) == 0 and not self._no_table:
                self._no_table = True  # (our one SETTINGS frame is the first acknowledged)
                self._known_in.clear()
            return
        if len(payload) % 6:
            self._fail(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS of a wrong size")
        changed: dict[int, int] = {}
        for ident, value in parse_settings(payload):
            self._setting(ident, value)
            changed[ident] = value
        self.out.append(frame(SETTINGS, ACK, 0))
        out.append(ev.RemoteSettingsChanged(changed))

    def _setting(self, ident: int, value: int) -> None:
        if ident == INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                self._fail(ErrorCode.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE past 2^31-1")
            delta, self.remote_initial = value - self.remote_initial, value
            for stream in self.streams.values():  # 6.9.2: every stream's window moves
                stream.send_window += delta
                if stream.send_window > MAX_WINDOW:
                    self._fail(ErrorCode.FLOW_CONTROL_ERROR, "a stream window past 2^31-1")
        elif ident == MAX_FRAME_SIZE:
            if not MIN_FRAME_SIZE <= value <= MAX_FRAME_SIZE_LIMIT:
                self._fail(ErrorCode.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
            self.max_outbound_frame_size = value
        elif ident == ENABLE_PUSH:
            if value > 1 or (value and self.client_side):
                self._fail(ErrorCode.PROTOCOL_ERROR, "ENABLE_PUSH other than 0 or 1")
        elif ident == HEADER_TABLE_SIZE:
            self.encoder.header_table_size = value
            self._known_out.clear()  # the next block starts with a table size update
        elif ident == MAX_CONCURRENT_STREAMS:
            self.remote_max_concurrent = value

    def _on_ping(self, flags: int, sid: int, payload: bytes, out: list[ev.Event]) -> None:
        if len(payload) != 8:
            self._fail(ErrorCode.FRAME_SIZE_ERROR, "PING of a wrong size")
        if sid:
            self._fail(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
        if not flags & ACK:
            self.out.append(frame(PING, ACK, 0, payload))
            out.append(ev.ControlReceived(PING))

    def _on_priority(self, flags: int, sid: int, payload: bytes, out: list[ev.Event]) -> None:
        if not sid:
            self._fail(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
        # 6.3 and 5.3.1: a wrong size or a stream depending on itself are stream errors (on a
        # stream open here; PRIORITY may name idle and closed streams, ignored then)
        if sid in self.streams:
            if len(payload) != 5:
                self._stream_error(sid, ErrorCode.FRAME_SIZE_ERROR, out)
            elif parse_u32(payload[:4]) & MAX_WINDOW == sid:
                self._stream_error(sid, ErrorCode.PROTOCOL_ERROR, out)
        out.append(ev.ControlReceived(PRIORITY))

    def _on_goaway(self, flags: int, sid: int, payload: bytes, out: list[ev.Event]) -> None:
        if sid:
            self._fail(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            self._fail(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY too short")
        last, code = parse_goaway(payload)
        self.goaway_received = True
        out.append(ev.ConnectionTerminated(code_of(code), last))
