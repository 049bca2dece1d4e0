"""tollway.http2: the frame codec and a connection's state, in memory, frame by frame (RFC 9113).

Each test feeds raw frames (built with ``frames.frame``, header blocks encoded by an HPACK
encoder of its own) and reads back the events and the frames the connection queued.
"""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jh2._hazmat import Encoder

from tollway.http2 import events as ev
from tollway.http2.connection import (
    Connection,
    ProtocolError,
    StreamClosedError,
    _keeps_table,
    _table_free,
)
from tollway.http2.frames import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADER_TABLE_SIZE,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    PADDED,
    PING,
    PREFACE,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    ErrorCode,
    code_of,
    frame,
    header_frames,
    unpad,
)

REQ = [(b":method", b"POST"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"a")]
RESP = [(b":status", b"200"), (b"content-type", b"text/plain")]


def block(fields: list[tuple[bytes, bytes]], enc: Encoder | None = None) -> bytes:
    return (enc or Encoder()).encode([(k, v, False) for k, v in fields])


def read(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """The frames in ``data``: (type, flags, stream id, payload)."""
    out = []
    while data:
        word, flags, sid = struct.unpack(">IBI", data[:9])
        n = word >> 8
        out.append((word & 0xFF, flags, sid, data[9 : 9 + n]))
        data = data[9 + n :]
    return out


def server() -> Connection:
    """A server (4 concurrent streams) that took the preface and the client's SETTINGS."""
    c = Connection(False, {MAX_CONCURRENT_STREAMS: 4})
    c.initiate_connection()
    (settings,) = c.receive_data(PREFACE + frame(SETTINGS, 0, 0))
    assert isinstance(settings, ev.RemoteSettingsChanged) and settings.changed == {}
    c.data_to_send()
    return c


def open_request(c: Connection, sid: int = 1, end: bool = False) -> list[ev.Event]:
    flags = END_HEADERS | (END_STREAM if end else 0)
    return c.receive_data(frame(HEADERS, flags, sid, block(REQ)))


def connection_error(c: Connection, data: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as e:
        c.receive_data(data)
    assert e.value.error_code == code
    goaway = [f for f in read(c.data_to_send()) if f[0] == GOAWAY]
    assert len(goaway) == 1 and struct.unpack(">II", goaway[0][3])[1] == code
    assert c.receive_data(frame(PING, 0, 0, b"12345678")) == []  # closed: nothing more


# -- the codec ---------------------------------------------------------------------------


def test_header_block_split_into_continuation_frames() -> None:
    data = header_frames(3, b"x" * 40, True, 16)
    frames = read(data)
    assert [(t, f, s, len(p)) for t, f, s, p in frames] == [
        (HEADERS, END_STREAM, 3, 16), (CONTINUATION, 0, 3, 16), (CONTINUATION, END_HEADERS, 3, 8),
    ]  # fmt: skip
    assert read(header_frames(3, b"ab", False, 16)) == [(HEADERS, END_HEADERS, 3, b"ab")]


def test_unpad() -> None:
    assert unpad(0, b"\x05abc") == b"\x05abc"
    assert unpad(PADDED, b"\x02abc\x00\x00") == b"abc"
    assert unpad(PADDED, b"\x00") == b""
    assert unpad(PADDED, b"\x03abc") == b""  # (the Pad Length octet is not padding)
    assert unpad(PADDED, b"\x04abc") is None  # padding as long as the payload
    assert unpad(PADDED, b"") is None


def test_unknown_error_codes_stay_ints() -> None:
    assert code_of(8) is ErrorCode.CANCEL
    assert code_of(0x1234) == 0x1234


# -- frames in: sizes, padding, unknown types ----------------------------------------------


def test_frames_split_anywhere_give_the_same_events() -> None:
    whole = server()
    data = frame(HEADERS, END_HEADERS, 1, block(REQ)) + frame(DATA, END_STREAM, 1, b"hello")
    expected = [type(e) for e in whole.receive_data(data)]
    assert expected == [ev.RequestReceived, ev.DataReceived]  # (the DATA says it ended)
    c = server()
    got: list[ev.Event] = []
    for i in range(len(data)):  # one byte at a time: truncated frames wait for the rest
        got += c.receive_data(data[i : i + 1])
    assert [type(e) for e in got] == expected
    assert got[1].data == b"hello" and got[1].ended  # type: ignore[attr-defined]


def test_preface_byte_by_byte_and_a_wrong_one() -> None:
    c = Connection(False, {})
    for b in PREFACE + frame(SETTINGS, 0, 0):
        c.receive_data(bytes([b]))
    assert c.settings_seen
    connection_error(Connection(False, {}), b"GET / HTTP/1.1\r\n", ErrorCode.PROTOCOL_ERROR)


def test_first_frame_must_be_settings() -> None:
    c = Connection(False, {})
    connection_error(c, PREFACE + frame(PING, 0, 0, b"12345678"), ErrorCode.PROTOCOL_ERROR)


def test_oversized_frame_is_a_connection_error() -> None:
    c = server()
    head = struct.pack(">IBI", (16385 << 8) | DATA, 0, 1)
    connection_error(c, head, ErrorCode.FRAME_SIZE_ERROR)  # refused on its header alone


def test_padded_data_and_headers() -> None:
    c = server()
    pad = frame(HEADERS, END_HEADERS | PADDED, 1, b"\x03" + block(REQ) + b"\x00" * 3)
    assert isinstance(c.receive_data(pad)[0], ev.RequestReceived)
    (data,) = c.receive_data(frame(DATA, PADDED, 1, b"\x04abc\x00\x00\x00\x00"))
    assert isinstance(data, ev.DataReceived)
    assert data.data == b"abc" and data.flow_controlled_length == 8  # padding is flow-controlled
    connection_error(c, frame(DATA, PADDED, 1, b"\x09abc"), ErrorCode.PROTOCOL_ERROR)


def test_unknown_frame_types_are_ignored() -> None:
    c = server()
    events = c.receive_data(frame(0x42, 0xFF, 1, b"whatever") + frame(0xFA, 0, 0, b""))
    assert [type(e) for e in events] == [ev.ControlReceived, ev.ControlReceived]
    assert isinstance(open_request(c)[0], ev.RequestReceived)  # the connection goes on


# -- header blocks ---------------------------------------------------------------------------


def test_continuation_sequencing() -> None:
    c = server()
    b = block([*REQ, (b"x-long", b"v" * 100)])
    events = c.receive_data(
        frame(HEADERS, 0, 1, b[:10]) + frame(CONTINUATION, 0, 1, b[10:50])
        + frame(CONTINUATION, END_HEADERS, 1, b[50:])
    )  # fmt: skip
    assert isinstance(events[0], ev.RequestReceived)
    assert (b"x-long", b"v" * 100) in events[0].headers
    interleaved = frame(HEADERS, 0, 3, b[:10]) + frame(PING, 0, 0, b"12345678")
    connection_error(server(), interleaved, ErrorCode.PROTOCOL_ERROR)
    alone = frame(CONTINUATION, END_HEADERS, 1, b)
    connection_error(server(), alone, ErrorCode.PROTOCOL_ERROR)
    other = frame(HEADERS, 0, 1, b[:10]) + frame(CONTINUATION, END_HEADERS, 3, b[10:])
    connection_error(server(), other, ErrorCode.PROTOCOL_ERROR)


def test_unfinished_header_blocks_are_bounded() -> None:
    """CVE-2024-27316: bytes past ``max_header_block``, or more than 64 CONTINUATION frames."""
    c = server()
    c.max_header_block = 1000
    big = frame(HEADERS, 0, 1, b"\x00" * 600) + frame(CONTINUATION, 0, 1, b"\x00" * 600)
    connection_error(c, big, ErrorCode.ENHANCE_YOUR_CALM)
    empty = frame(HEADERS, 0, 1, b"") + frame(CONTINUATION, 0, 1, b"") * 65
    connection_error(server(), empty, ErrorCode.ENHANCE_YOUR_CALM)


@pytest.mark.parametrize("bad", [b"\xff\xff\xff", b"\xbf", b"\x00\x85\xff\xff"])
def test_undecodable_header_block_is_a_compression_error(bad: bytes) -> None:
    connection_error(server(), frame(HEADERS, END_HEADERS, 1, bad), ErrorCode.COMPRESSION_ERROR)


def test_hpack_bomb_is_enhance_your_calm() -> None:
    c = server()
    c.decoder.max_header_list_size = 1000
    fields = [*REQ, *[(b"x-big", b"v" * 400)] * 10]
    connection_error(c, frame(HEADERS, END_HEADERS, 1, block(fields)), ErrorCode.ENHANCE_YOUR_CALM)


def test_header_blocks_on_closed_streams_are_still_decoded() -> None:
    """The HPACK table is the connection's: a block on a stream reset here is decoded and
    dropped, and the next block (indexing into the same table) decodes right."""
    c = server()
    enc = Encoder()
    c.receive_data(frame(HEADERS, END_HEADERS, 1, block([*REQ, (b"x-a", b"1")], enc)))
    c.reset_stream(1, ErrorCode.CANCEL)
    late = frame(HEADERS, END_HEADERS | END_STREAM, 1, block([(b"x-trailer", b"t")], enc))
    assert c.receive_data(late) == []
    (req,) = c.receive_data(frame(HEADERS, END_HEADERS | END_STREAM, 3, block([*REQ, (b"x-a", b"1")], enc)))[:1]  # fmt: skip
    assert isinstance(req, ev.RequestReceived) and (b"x-a", b"1") in req.headers


# -- stream states -----------------------------------------------------------------------------


def test_stream_ids_and_states() -> None:
    connection_error(server(), frame(HEADERS, END_HEADERS, 2, block(REQ)), ErrorCode.PROTOCOL_ERROR)
    connection_error(server(), frame(DATA, 0, 5, b"x"), ErrorCode.PROTOCOL_ERROR)  # idle
    c = server()
    open_request(c, 5)  # 1 and 3 are closed, never opened (5.1.1): an unexpected id
    connection_error(c, frame(HEADERS, END_HEADERS, 3, block(REQ)), ErrorCode.PROTOCOL_ERROR)


def test_data_after_end_stream_is_a_stream_error() -> None:
    c = server()
    open_request(c, 1, end=True)
    open_request(c, 3)
    c.data_to_send()
    (reset,) = c.receive_data(frame(DATA, 0, 1, b"late"))
    assert isinstance(reset, ev.StreamReset) and reset.error_code == ErrorCode.STREAM_CLOSED
    assert not reset.remote_reset
    assert [(t, s) for t, _, s, _ in read(c.data_to_send())] == [(RST_STREAM, 1)]
    assert isinstance(c.receive_data(frame(DATA, END_STREAM, 3, b"ok"))[0], ev.DataReceived)


def test_trailers_must_end_the_stream() -> None:
    c = server()
    open_request(c, 1)
    (t,) = c.receive_data(frame(HEADERS, END_HEADERS | END_STREAM, 1, block([(b"x-t", b"1")])))
    assert isinstance(t, ev.TrailersReceived)  # (they end it: no StreamEnded follows)
    assert c.streams[1].remote_closed
    open_request(c, 3)
    (reset,) = c.receive_data(frame(HEADERS, END_HEADERS, 3, block([(b"x-t", b"1")])))
    assert isinstance(reset, ev.StreamReset) and reset.error_code == ErrorCode.PROTOCOL_ERROR


def test_content_length_against_the_data() -> None:
    """RFC 9113 8.1.1: more or fewer DATA bytes than content-length: malformed, a stream error."""
    c = server()
    head = block([*REQ, (b"content-length", b"3")])
    c.receive_data(frame(HEADERS, END_HEADERS, 1, head))
    (reset,) = c.receive_data(frame(DATA, 0, 1, b"four"))
    assert isinstance(reset, ev.StreamReset) and reset.error_code == ErrorCode.PROTOCOL_ERROR
    c.receive_data(frame(HEADERS, END_HEADERS, 3, head))
    events = c.receive_data(frame(DATA, END_STREAM, 3, b"ab"))
    assert [type(e) for e in events] == [ev.DataReceived, ev.StreamReset]
    assert not events[0].ended  # type: ignore[attr-defined]  # (reset, not ended)


def test_content_length_of_a_repeated_block() -> None:
    """A block decoded once and then taken from the cache (literals without indexing) gives
    each of its streams the content-length it holds."""
    c = server()
    # :method POST, :path / (not indexed), :scheme http, :authority a and content-length 3
    # (static names 1 and 28, not indexed)
    head = b"\x83\x04\x01/\x86\x01\x01a\x0f\x0d\x013"
    for sid in (1, 3):
        (req,) = c.receive_data(frame(HEADERS, END_HEADERS, sid, head))
        assert isinstance(req, ev.RequestReceived)
        assert (b"content-length", b"3") in req.headers
        (reset,) = c.receive_data(frame(DATA, 0, sid, b"four"))
        assert isinstance(reset, ev.StreamReset) and reset.error_code == ErrorCode.PROTOCOL_ERROR
    assert head in c._known_in  # (the second one came from the cache)
    c.receive_data(frame(HEADERS, END_HEADERS, 5, head))
    events = c.receive_data(frame(DATA, END_STREAM, 5, b"abc"))
    assert [type(e) for e in events] == [ev.DataReceived]
    assert events[0].ended  # type: ignore[attr-defined]


def test_streams_past_the_limit_are_refused() -> None:
    c = server()
    for sid in (1, 3, 5, 7):
        open_request(c, sid)
    (refused,) = open_request(c, 9)
    assert isinstance(refused, ev.StreamRefused)
    assert read(c.data_to_send()) == [(RST_STREAM, 0, 9, b"\x00\x00\x00\x07")]


def test_a_client_reset_is_reported_even_on_a_closed_stream() -> None:
    """(Every reset counts for the rapid-reset budget.)"""
    c = server()
    open_request(c, 1)
    c.reset_stream(1, ErrorCode.CANCEL)
    (reset,) = c.receive_data(frame(RST_STREAM, 0, 1, b"\x00\x00\x00\x08"))
    assert isinstance(reset, ev.StreamReset) and reset.remote_reset
    connection_error(c, frame(RST_STREAM, 0, 7, b"\x00\x00\x00\x08"), ErrorCode.PROTOCOL_ERROR)


# -- SETTINGS, PING, flow control -------------------------------------------------------------


def test_settings_are_acknowledged_and_checked() -> None:
    c = server()
    (changed,) = c.receive_data(frame(SETTINGS, 0, 0, struct.pack(">HI", 3, 7)))
    assert isinstance(changed, ev.RemoteSettingsChanged) and changed.changed == {3: 7}
    assert read(c.data_to_send()) == [(SETTINGS, ACK, 0, b"")]
    assert c.remote_max_concurrent == 7
    big = frame(SETTINGS, 0, 0, struct.pack(">HI", INITIAL_WINDOW_SIZE, 1 << 31))
    connection_error(server(), big, ErrorCode.FLOW_CONTROL_ERROR)
    connection_error(server(), frame(SETTINGS, 0, 0, b"\x00" * 5), ErrorCode.FRAME_SIZE_ERROR)
    connection_error(server(), frame(SETTINGS, ACK, 0, b"\x00" * 6), ErrorCode.FRAME_SIZE_ERROR)
    small = frame(SETTINGS, 0, 0, struct.pack(">HI", 5, 100))  # MAX_FRAME_SIZE < 16384
    connection_error(server(), small, ErrorCode.PROTOCOL_ERROR)


def test_ping_is_answered() -> None:
    c = server()
    assert [type(e) for e in c.receive_data(frame(PING, 0, 0, b"abcdefgh"))] == [ev.ControlReceived]
    assert read(c.data_to_send()) == [(PING, ACK, 0, b"abcdefgh")]
    assert c.receive_data(frame(PING, ACK, 0, b"abcdefgh")) == []
    connection_error(c, frame(PING, 0, 0, b"short"), ErrorCode.FRAME_SIZE_ERROR)


def test_initial_window_change_moves_open_streams_windows() -> None:
    c = server()
    open_request(c, 1)
    assert c.local_flow_control_window(1) == 65535
    c.receive_data(frame(SETTINGS, 0, 0, struct.pack(">HI", INITIAL_WINDOW_SIZE, 100)))
    assert c.local_flow_control_window(1) == 100
    with pytest.raises(ProtocolError):
        c.send_data(1, b"x" * 101)  # beyond the stream's window: nothing queued
    c.send_data(1, b"x" * 100)
    assert c.local_flow_control_window(1) == 0
    (up,) = c.receive_data(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 50)))
    assert isinstance(up, ev.WindowUpdated) and up.delta == 50
    assert c.local_flow_control_window(1) == 50


def test_window_update_errors() -> None:
    c = server()
    open_request(c, 1)
    (reset,) = c.receive_data(frame(WINDOW_UPDATE, 0, 1, b"\x00\x00\x00\x00"))
    assert isinstance(reset, ev.StreamReset) and reset.error_code == ErrorCode.PROTOCOL_ERROR
    open_request(c, 3)
    (over,) = c.receive_data(frame(WINDOW_UPDATE, 0, 3, struct.pack(">I", (1 << 31) - 1)))
    assert isinstance(over, ev.StreamReset) and over.error_code == ErrorCode.FLOW_CONTROL_ERROR
    zero = frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00")
    connection_error(c, zero, ErrorCode.PROTOCOL_ERROR)
    c2 = server()
    past = frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", (1 << 31) - 1))
    connection_error(c2, past, ErrorCode.FLOW_CONTROL_ERROR)


def test_data_past_the_windows_is_a_flow_control_error() -> None:
    c = server()
    open_request(c, 1)
    chunk = frame(DATA, 0, 1, b"x" * 16384)
    c.receive_data(chunk * 3)  # 49152 of the 65535
    connection_error(c, chunk, ErrorCode.FLOW_CONTROL_ERROR)


def test_acknowledged_data_reopens_the_windows() -> None:
    """WINDOW_UPDATE once half a window was taken (few frames), for the stream and the
    connection; DATA of a stream closed here goes back to the connection window at once."""
    c = server()
    open_request(c, 1)
    c.receive_data(frame(DATA, 0, 1, b"x" * 16384))
    c.acknowledge_received_data(16384, 1)
    assert c.data_to_send() == b""  # a quarter of the window: not yet
    c.receive_data(frame(DATA, 0, 1, b"x" * 16384))
    c.acknowledge_received_data(16384, 1)
    sent = read(c.data_to_send())
    assert sorted((s, struct.unpack(">I", p)[0]) for t, _, s, p in sent) == [(0, 32768), (1, 32768)]
    c.reset_stream(1, ErrorCode.CANCEL)
    c.data_to_send()
    assert c.receive_data(frame(DATA, 0, 1, b"x" * 16384)) == []
    c.receive_data(frame(DATA, 0, 1, b"x" * 16384))
    updates = [struct.unpack(">I", p)[0] for t, _, s, p in read(c.data_to_send()) if s == 0]
    assert sum(updates) == 32768  # (no WINDOW_UPDATE for the closed stream itself)


def test_sending_on_a_closed_stream_raises() -> None:
    c = server()
    open_request(c, 1, end=True)
    c.send_headers(1, RESP, end_stream=True)
    assert not c.streams  # closed both ways: forgotten
    with pytest.raises(StreamClosedError):
        c.send_data(1, b"x")
    c.reset_stream(1, ErrorCode.CANCEL)  # nothing to reset: nothing sent
    assert [t for t, *_ in read(c.data_to_send())] == [HEADERS]


# -- the client side, against h2 as the server --------------------------------------------------


def client_pair() -> tuple[Connection, h2.connection.H2Connection]:
    c = Connection(True, {2: 0, INITIAL_WINDOW_SIZE: 1 << 20})
    s = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    c.initiate_connection()
    s.initiate_connection()
    s.receive_data(c.data_to_send())
    c.receive_data(s.data_to_send())
    s.receive_data(c.data_to_send())
    return c, s


def test_client_request_response_and_trailers() -> None:
    c, s = client_pair()
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, [(b":method", b"POST"), (b":path", b"/x"), (b":scheme", b"http"),
                         (b":authority", b"a"), (b"authorization", b"secret")])  # fmt: skip
    c.send_data(sid, b"body", end_stream=True)
    got = s.receive_data(c.data_to_send())
    req = next(e for e in got if isinstance(e, h2.events.RequestReceived))
    assert (b"authorization", b"secret") in [(k, v) for k, v in req.headers]
    assert [type(e) for e in got if isinstance(e, h2.events.DataReceived)]
    s.send_headers(sid, [(b":status", b"100")])
    s.send_headers(sid, [(b":status", b"200"), (b"grpc-encoding", b"identity")])
    s.send_data(sid, b"reply")
    s.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    events = c.receive_data(s.data_to_send())
    assert [type(e) for e in events] == [ev.ResponseReceived, ev.DataReceived,
                                         ev.TrailersReceived]  # fmt: skip
    assert events[0].headers == [(b":status", b"200"), (b"grpc-encoding", b"identity")]  # type: ignore[attr-defined]
    assert not c.streams


def test_client_rejects_a_malformed_response_head() -> None:
    c, s = client_pair()
    c.send_headers(1, REQ, end_stream=True)
    s.receive_data(c.data_to_send())
    s.send_headers(1, [(b":status", b"200"), (b"x-bad", b"a\r\nb")])
    (reset,) = c.receive_data(s.data_to_send())
    assert isinstance(reset, ev.StreamReset) and reset.error_code == ErrorCode.PROTOCOL_ERROR


def test_client_goaway_and_push_promise() -> None:
    c, s = client_pair()
    c.send_headers(1, REQ, end_stream=True)
    s.receive_data(c.data_to_send())
    s.close_connection(error_code=0, last_stream_id=1)
    (gone,) = c.receive_data(s.data_to_send())
    assert isinstance(gone, ev.ConnectionTerminated) and gone.last_stream_id == 1
    with pytest.raises(ProtocolError):
        c.send_headers(3, REQ)  # no new streams after GOAWAY
    c2, _ = client_pair()
    c2.send_headers(1, REQ, end_stream=True)
    push = frame(PUSH_PROMISE, END_HEADERS, 1, b"\x00\x00\x00\x02" + block(REQ))
    connection_error(c2, push, ErrorCode.PROTOCOL_ERROR)


# -- hostile input ---------------------------------------------------------------------------

_FRAME = st.tuples(
    st.integers(0, 12),  # the types, and a few unknown ones
    st.integers(0, 255),
    st.sampled_from([0, 1, 2, 3, 5, 0x7FFFFFFF]),
    st.one_of(st.binary(max_size=40), st.builds(lambda: block(REQ))),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_FRAME, max_size=12), st.booleans())
def test_any_frames_end_in_events_or_a_connection_error(
    frames: list[tuple[int, int, int, bytes]], client: bool
) -> None:
    """Whatever a peer sends, the connection reports events or raises ProtocolError (its
    GOAWAY queued): never another exception, which would be a bug of ours."""
    c = Connection(client, {MAX_CONCURRENT_STREAMS: 4})
    c.initiate_connection()
    if client:
        c.send_headers(1, REQ)
        c.send_headers(3, REQ, end_stream=True)
    c.data_to_send()
    data = b"" if client else PREFACE
    data += frame(SETTINGS, 0, 0) + b"".join(frame(t, f, s, p) for t, f, s, p in frames)
    try:
        c.receive_data(data)
    except ProtocolError:
        assert c.closed and GOAWAY in [t for t, *_ in read(c.data_to_send())]


# -- HPACK: repeated blocks and lists (RFC 7541 6.1) ----------------------------------------


def test_a_repeated_indexed_block_decodes_as_the_table_says_now() -> None:
    """The same octets of indexed fields mean what the dynamic table holds when they arrive:
    a block that inserted an entry in between shifts the indices (RFC 7541 2.3.3)."""
    c = server()
    enc = Encoder()
    x_a, x_b = [(b"x-a", b"1")], [(b"x-b", b"2")]
    blocks = [block(x_a, enc), b"\xbe", b"\xbe", block(x_b, enc), b"\xbe", b"\xbf\xbe"]
    assert blocks[0][:1] == blocks[3][:1] == b"\x40"  # literals that insert (6.2.1)
    got = []
    for sid, data in zip(range(1, 12, 2), blocks, strict=True):
        (req,) = c.receive_data(frame(HEADERS, END_HEADERS | END_STREAM, sid, data))
        assert isinstance(req, ev.RequestReceived)
        got.append(req.headers)
        c.streams.clear()
    # index 62 is the newest entry: x-a, then x-b once it was inserted
    assert got == [x_a, x_a, x_a, x_b, x_b, x_a + x_b]
    got[2].append((b"x-c", b"3"))  # an owner's edit of its list reaches no later request
    (req,) = c.receive_data(frame(HEADERS, END_HEADERS | END_STREAM, 13, b"\xbf\xbe"))
    assert req.headers == x_a + x_b  # type: ignore[attr-defined]


def test_a_repeated_block_with_unindexed_literals_decodes_as_the_table_says_now() -> None:
    """nghttp2 (h2load, curl) sends ``:path`` as a literal without indexing (RFC 7541 6.2.2):
    such a block, and one with a never-indexed literal (6.2.3), leaves the table as it was, so
    it is decoded once while it repeats; a block that inserts in between changes what it means."""
    c = server()
    enc = Encoder()
    x_a, x_b = [(b"x-a", b"1")], [(b"x-b", b"2")]
    path = b"\x04\x02/p"  # :path (static name 4), "/p", not indexed
    secret = b"\x10\x03x-s\x01z"  # a new name, never indexed
    again = b"\xbe" + path + secret
    blocks = [block(x_a, enc), again, again, block(x_b, enc), again]
    got, cached = [], []
    for sid, data in zip(range(1, 10, 2), blocks, strict=True):
        (req,) = c.receive_data(frame(HEADERS, END_HEADERS | END_STREAM, sid, data))
        assert isinstance(req, ev.RequestReceived)
        got.append(req.headers)
        cached.append(again in c._known_in)
        c.streams.clear()
    rest = [(b":path", b"/p"), (b"x-s", b"z")]
    assert got == [x_a, x_a + rest, x_a + rest, x_b, x_b + rest]
    assert cached == [False, True, True, False, True]


@pytest.mark.parametrize(
    ("data", "keeps"),
    [
        (b"\x82\x04\x02/p", True),
        (b"\x82\x00\x01a\x01b", True),  # literal name, without indexing
        (b"\x82\x1f\x10\x01b", True),  # never indexed, name index 31 (a continued integer)
        (b"\x82\x44\x02/p", False),  # incremental indexing (6.2.1)
        (b"\x20\x82", False),  # table size update (6.3)
        (b"\x82\x04\x05/p", False),  # cut short
        (b"\x82\x04\x7f", False),  # cut short in a continued length
    ],
)
def test_blocks_that_keep_the_table(data: bytes, keeps: bool) -> None:
    assert _keeps_table(data) is keeps


def server_and_h2_client() -> tuple[Connection, h2.connection.H2Connection]:
    """A server connection and an ``h2`` client (an independent implementation) that have
    exchanged their prefaces and settings."""
    c = Connection(False, {})
    c.initiate_connection()
    peer = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    peer.initiate_connection()
    c.receive_data(peer.data_to_send())
    peer.receive_data(c.data_to_send())
    return c, peer


def test_a_repeated_list_encodes_to_what_a_peer_decodes() -> None:
    """The same response head again (same date, same length) is encoded once; a changed one,
    or a table size the peer lowered, is encoded anew. A peer's decoder reads them all."""
    c, peer = server_and_h2_client()
    x_n = [*RESP, (b"x-n", b"1")]
    heads = [RESP, RESP, x_n, x_n, x_n]
    sid = 1
    for i, head in enumerate(heads):
        if i == 4:
            peer.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
        peer.send_headers(sid, REQ, end_stream=True)
        c.receive_data(peer.data_to_send())
        c.send_headers(sid, head, end_stream=True)
        events = peer.receive_data(c.data_to_send())
        c.receive_data(peer.data_to_send())
        got = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
        assert [(k, v) for k, v in got.headers] == head
        sid += 2


def test_alternating_blocks_decode_from_the_cache_until_one_inserts() -> None:
    """A gRPC response's head and trailers alternate on an upstream connection: both blocks
    are remembered while neither changes the table, and each decodes as the table says (a block
    that inserts in between forgets them: the indices shift, RFC 7541 2.3.3)."""
    c = server()
    enc = Encoder()
    x_a, x_b = [(b"x-a", b"1")], [(b"x-b", b"2")]
    path = b"\x04\x02/p"  # :path, not indexed (the head); \xbe alone (the trailers)
    head, trailers = b"\xbe" + path, b"\xbe"
    blocks = [block(x_a, enc), head, trailers, head, trailers, block(x_b, enc), head, trailers]
    got, cached = [], []
    for sid, data in zip(range(1, 17, 2), blocks, strict=True):
        (req,) = c.receive_data(frame(HEADERS, END_HEADERS | END_STREAM, sid, data))
        assert isinstance(req, ev.RequestReceived)
        got.append(req.headers)
        cached.append(sorted(c._known_in) == sorted({head, trailers}))
        c.streams.clear()
    p = [(b":path", b"/p")]
    assert got == [x_a, x_a + p, x_a, x_a + p, x_a, x_b, x_b + p, x_b]
    assert cached == [False, False, True, True, True, False, False, True]


def test_alternating_lists_encode_to_what_a_peer_decodes() -> None:
    """A gRPC answer's head and trailers alternate on a client connection: each list is
    encoded once while neither changes the encoder's table (then taken as encoded), and a new
    head (another date) is encoded anew. A peer's decoder reads them all."""
    c, peer = server_and_h2_client()
    trailers = [(b"grpc-status", b"0")]
    later = [*RESP, (b"date", b"Mon, 07 Dec 2026 22:00:01 GMT")]
    sid = 1
    for i, head in enumerate([RESP, RESP, RESP, later, later]):
        peer.send_headers(sid, REQ, end_stream=True)
        c.receive_data(peer.data_to_send())
        c.send_headers(sid, head)
        c.send_data(sid, b"\x00\x00\x00\x00\x00")
        c.send_headers(sid, trailers, end_stream=True)
        if i == 2:  # (by then both were encoded while the table stayed as it was)
            assert [k for k, _ in c._known_out] == [RESP, trailers]
        events = peer.receive_data(c.data_to_send())
        c.receive_data(peer.data_to_send())
        got = [e.headers for e in events if isinstance(e, h2.events.ResponseReceived)]
        ends = [e.headers for e in events if isinstance(e, h2.events.TrailersReceived)]
        assert [[(k, v) for k, v in h] for h in got + ends] == [head, trailers]
        sid += 2


@pytest.mark.parametrize(
    ("data", "free"),
    [
        (b"\x88\x82", True),  # static fields
        (b"\x88\xbe", False),  # index 62: the dynamic table's
        (b"\x76\x05nginx", True),  # incremental indexing, static name (server)
        (b"\x7f\x00\x01a", False),  # incremental indexing, name index 63
        (b"\x40\x01x\x01y", True),  # incremental indexing, new name
        (b"\x0f\x0d\x013", True),  # without indexing, name index 28 (content-length)
        (b"\x0f\x2f\x01a", False),  # without indexing, name index 62
        (b"\x20\x88", True),  # table size update to 0
        (b"\x3f\xe1\x1f\x88", False),  # table size update to 4096
        (b"\x76\x05ngin", False),  # cut short
    ],
)
def test_blocks_free_of_the_dynamic_table(data: bytes, free: bool) -> None:
    assert _table_free(data) is free


def nginx_head(date: bytes) -> bytes:
    """An answer's head as nginx encodes it: server and date as literals with incremental
    indexing in every answer (RFC 7541 6.2.1), content-type without indexing."""
    return (b"\x88\x76\x05nginx\x61" + bytes([len(date)]) + date
            + b"\x0f\x10\x10application/grpc")  # fmt: skip


def test_a_size_0_table_decodes_each_block_once_after_the_ack() -> None:
    """An upstream connection sends SETTINGS_HEADER_TABLE_SIZE 0 (as nginx's grpc_pass):
    once the peer acknowledged it, every block decodes the same whatever came before, so an
    answer's head that inserts (nginx's) and its trailers are decoded once while they repeat;
    before the ACK the usual rule holds (an inserting block is not remembered)."""
    c = Connection(True, {HEADER_TABLE_SIZE: 0})
    c.initiate_connection()
    assert (b"\x00\x01" + b"\x00" * 4) in read(c.data_to_send())[0][3]
    c.receive_data(frame(SETTINGS, 0, 0))
    trailers = b"\x40\x0bgrpc-status\x010"  # (a new name, inserted)
    one, two = nginx_head(b"Mon, 07 Dec 2026 22:00:01 GMT"), nginx_head(b"later")
    decoded = []
    real = c.decoder

    class Counting:
        def decode(self, data: bytes, raw: bool) -> list[tuple[bytes, bytes]]:
            decoded.append(data)
            return list(real.decode(data, raw=raw))

    c.decoder = Counting()  # type: ignore[assignment]
    got = []
    for i, head in enumerate([one, one, one, two, one, two]):
        if i == 1:
            c.receive_data(frame(SETTINGS, ACK, 0))
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, REQ, end_stream=True)
        events = c.receive_data(
            frame(HEADERS, END_HEADERS, sid, head) + frame(HEADERS, END_HEADERS | 1, sid, trailers)
        )
        got.append([e.headers for e in events if hasattr(e, "headers")])  # type: ignore[attr-defined]
    # before the ACK: both blocks; after: each block once (one, trailers, then two)
    assert decoded == [one, trailers, one, trailers, two]
    date = {b"date": b"Mon, 07 Dec 2026 22:00:01 GMT"}
    for (head_fields, end), block_ in zip(got, [one, one, one, two, one, two], strict=True):
        fields = dict(head_fields)
        assert fields[b"server"] == b"nginx" and end == [(b"grpc-status", b"0")]
        assert fields[b"date"] == (date[b"date"] if block_ is one else b"later")


def test_a_dynamic_entry_after_a_size_0_table_is_a_compression_error() -> None:
    """After the ACK, a peer that still refers to an entry it inserted (its table is 0 octets:
    the entry was evicted at once) sends an undecodable block (RFC 7541 2.3.3)."""
    c = Connection(True, {HEADER_TABLE_SIZE: 0})
    c.initiate_connection()
    c.receive_data(frame(SETTINGS, 0, 0) + frame(SETTINGS, ACK, 0))
    c.data_to_send()
    for sid in (1, 3):
        c.send_headers(sid, REQ, end_stream=True)
    (head, _) = c.receive_data(frame(HEADERS, END_HEADERS | 1, 1, b"\x88\x40\x01x\x01y"))
    assert head.headers == [(b":status", b"200"), (b"x", b"y")]  # type: ignore[attr-defined]
    data = frame(HEADERS, END_HEADERS | 1, 3, b"\x88\xbe")  # index 62: x: y
    connection_error(c, data, ErrorCode.COMPRESSION_ERROR)


def test_a_remembered_block_is_checked_once_as_a_head_and_once_as_trailers() -> None:
    """A remembered block skips check_response the second time for the same use only: a head
    (with ``:status``) that comes again as trailers is malformed there (RFC 9113 8.1), and a
    malformed head is refused each time it comes."""
    c = Connection(True, {HEADER_TABLE_SIZE: 0})
    c.initiate_connection()
    c.receive_data(frame(SETTINGS, 0, 0) + frame(SETTINGS, ACK, 0))
    head = b"\x88\x0f\x10\x10application/grpc"  # :status 200, content-type
    bad = b"\x88\x00\x03X-A\x011"  # an uppercase name (8.2.1)
    trailers = b"\x00\x0bgrpc-status\x010"
    kinds = []
    for sid, blocks in ((1, [head, trailers]), (3, [head, head]), (5, [bad]), (7, [bad])):
        c.send_headers(sid, REQ, end_stream=True)
        data = frame(HEADERS, END_HEADERS, sid, blocks[0])
        if len(blocks) == 2:
            data += frame(HEADERS, END_HEADERS | END_STREAM, sid, blocks[1])
        kinds.append([type(e).__name__ for e in c.receive_data(data)])
    assert kinds == [
        ["ResponseReceived", "TrailersReceived"],
        ["ResponseReceived", "StreamReset"],
        ["StreamReset"],
        ["StreamReset"],
    ]
    assert len(c._known_in) == 3  # (each block was remembered)


# -- a request without a body, an answer's last frame ----------------------------------------


def test_a_request_ended_on_its_headers_is_one_event() -> None:
    """HEADERS with END_STREAM: RequestReceived(ended) and no StreamEnded after it (the owner
    takes the end from the event); the stream is half-closed (the peer may send nothing more)."""
    c = server()
    (req,) = open_request(c, 1, end=True)
    assert isinstance(req, ev.RequestReceived) and req.ended and req.stream_id == 1
    assert c.streams[1].remote_closed
    (reset,) = c.receive_data(frame(DATA, 0, 1, b"late"))  # 5.1: half-closed (remote)
    assert isinstance(reset, ev.StreamReset) and reset.error_code == ErrorCode.STREAM_CLOSED


def test_a_bodiless_request_declaring_a_length_is_reset_not_reported() -> None:
    """content-length 5 and END_STREAM on the HEADERS: malformed (RFC 9113 8.1.1), a stream
    error; the request is not reported (no exchange starts for it). content-length 0 is fine."""
    c = server()
    events = c.receive_data(
        frame(HEADERS, END_HEADERS | END_STREAM, 1, block([*REQ, (b"content-length", b"5")]))
    )
    assert [type(e) for e in events] == [ev.StreamReset]
    assert events[0].error_code == ErrorCode.PROTOCOL_ERROR  # type: ignore[attr-defined]
    assert read(c.data_to_send()) == [(RST_STREAM, 0, 1, struct.pack(">I", 1))]
    assert 1 not in c.streams
    (req,) = c.receive_data(
        frame(HEADERS, END_HEADERS | END_STREAM, 3, block([*REQ, (b"content-length", b"0")]))
    )
    assert isinstance(req, ev.RequestReceived) and req.ended


def test_send_last_takes_the_windows_or_sends_nothing() -> None:
    """send_last: the last DATA frame with END_STREAM when both windows and the frame size take
    it (the stream closes); else False and nothing queued (the caller queues it)."""
    c = server()
    open_request(c, 1, end=True)
    open_request(c, 3, end=True)
    c.streams[3].send_window = 3
    assert not c.send_last(3, b"abcd")
    assert c.data_to_send() == b"" and c.send_window == 65535
    assert c.send_last(1, b"abcd")
    assert read(c.data_to_send()) == [(DATA, END_STREAM, 1, b"abcd")]
    assert 1 not in c.streams and c.send_window == 65535 - 4
    with pytest.raises(StreamClosedError):
        c.send_last(1, b"")
    big = b"x" * (c.max_outbound_frame_size + 1)
    c.streams[3].send_window = len(big)
    assert not c.send_last(3, big)  # (past the frame size: split by the caller's queue)
