"""The HTTP/2 stream framing of an exchange's response: head, DATA within the peer's windows,
the end with trailers (the convention gRPC upstreams rely on), against a real h2 client."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import h2.events as ev
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes

from tollway.http2.connection import Connection
from tollway.proxy.h2_stream import _NO_QUEUE, BODY_BUDGET, H2Stream
from tollway.proxy.pipeline import Exchange
from tollway.proxy.state import ServerState


class Carrier:
    """The connection side a stream uses (h2.H2Protocol), without sockets."""

    def __init__(self) -> None:
        self.conn = Connection(False, {})
        self.conn.initiate_connection()
        # a real ServerState: the compiled build checks the classes it is handed
        compiler: Any = SimpleNamespace()  # (never read by a stream)
        self.state = ServerState(
            compiler, max_header_size=32768, max_body_size=0, keepalive_timeout=60
        )
        self.scheme = "http"
        self.remote_addr, self.remote_port = "127.0.0.1", 1
        self.server_addr, self.server_port = "127.0.0.1", 2
        self.trust_real_ip = False
        self.client_cert = None
        self.write_paused = False
        self.done: list[H2Stream] = []
        self.held = 0
        self.starved = False
        self.acked: dict[int, int] = {}
        self.streams: list[H2Stream] = []

    def ack(self, size: int, sid: int) -> None:
        self.acked[sid] = self.acked.get(sid, 0) + size

    def release(self) -> None:  # as h2.H2Protocol.release
        if self.held <= BODY_BUDGET:
            self.starved = False
            for s in self.streams:
                if s.unacked and not s.reading_paused:
                    n, s.unacked = s.unacked, 0
                    self.ack(n, s.sid)

    def flush_soon(self) -> None:
        return None

    def stream_done(self, stream: H2Stream) -> None:
        self.done.append(stream)


def pair(window: int | None = None) -> tuple[Carrier, H2Connection]:
    server = Carrier()
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    if window is not None:
        client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
    client.send_headers(1, [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                            (b":authority", b"a")], end_stream=True)  # fmt: skip
    server.conn.receive_data(client.data_to_send())
    client.receive_data(server.conn.data_to_send())
    server.conn.receive_data(client.data_to_send())  # the SETTINGS ACK
    return server, client


def events(server: Carrier, client: H2Connection) -> list[Any]:
    out = client.receive_data(server.conn.data_to_send())
    server.conn.receive_data(client.data_to_send())
    return out


def test_head_body_and_trailers_end_the_stream() -> None:
    server, client = pair()
    s = H2Stream(server, 1)  # type: ignore[arg-type]
    s.send_head(200, [(b"content-type", b"application/grpc")], False)
    s.write(b"hello")
    s.end_response([(b"grpc-status", b"0"), (b"grpc-message", b"ok")])
    got = events(server, client)
    kinds = [type(e) for e in got]
    assert kinds == [ev.ResponseReceived, ev.DataReceived, ev.TrailersReceived, ev.StreamEnded]
    assert got[0].headers == [(b":status", b"200"), (b"content-type", b"application/grpc")]
    assert got[1].data == b"hello"
    assert got[2].headers == [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]
    assert s.ended and server.done == [s]
    # (within the windows the message and the trailers left at once, no queue made for them)
    assert s.pending is _NO_QUEUE


def test_end_without_trailers_is_an_empty_end_stream() -> None:
    server, client = pair()
    s = H2Stream(server, 1)  # type: ignore[arg-type]
    s.send_head(204, [], False)
    s.end_response(None)
    got = events(server, client)
    assert [type(e) for e in got] == [ev.ResponseReceived, ev.DataReceived, ev.StreamEnded]
    assert got[1].data == b""


def test_body_waits_for_the_window_and_end_waits_for_the_body() -> None:
    server, client = pair(window=10)
    s = H2Stream(server, 1)  # type: ignore[arg-type]
    s.send_head(200, [], False)
    s.write(b"a" * 25)
    s.end_response([(b"grpc-status", b"0")])
    got = events(server, client)
    data = b"".join(e.data for e in got if isinstance(e, ev.DataReceived))
    assert data == b"a" * 10 and s.write_paused and not s.ended  # the rest waits
    assert not any(isinstance(e, ev.TrailersReceived) for e in got)
    total = data
    for _ in range(5):
        client.acknowledge_received_data(10, 1)
        client.increment_flow_control_window(10, stream_id=1)
        server.conn.receive_data(client.data_to_send())
        s.push()  # what the connection does on WINDOW_UPDATE
        got = events(server, client)
        total += b"".join(e.data for e in got if isinstance(e, ev.DataReceived))
        if s.ended:
            break
    assert total == b"a" * 25
    assert isinstance(got[-1], ev.StreamEnded) and isinstance(got[-2], ev.TrailersReceived)
    assert not s.write_paused


def test_exchange_hands_trailers_to_the_stream_and_chunked_http11() -> None:
    server, client = pair()
    s = H2Stream(server, 1)  # type: ignore[arg-type]
    ex = Exchange(s, "POST", b"/svc/M", [(b"host", b"a")], "2.0", True, b"a")
    s.ex = ex
    s.send_head(200, [], False)
    ex.resp_trailers = [(b"grpc-status", b"7"), (b"grpc-message", b"denied")]
    ex._out = [b"\x00\x00\x00\x00\x00"]
    ex._h2_complete(None)
    got = events(server, client)
    assert [type(e) for e in got][-2:] == [ev.TrailersReceived, ev.StreamEnded]
    assert got[-2].headers == [(b"grpc-status", b"7"), (b"grpc-message", b"denied")]
    # HTTP/1.1: the trailers as trailer fields of the chunked body (RFC 9112 7.1.2)
    assert ex._last_chunk() == b"0\r\ngrpc-status: 7\r\ngrpc-message: denied\r\n\r\n"
    ex.resp_trailers = None
    assert ex._last_chunk() == b"0\r\n\r\n"


def test_windows_open_within_the_connection_budget() -> None:
    """Streams whose exchanges hold their bodies: the windows stop opening once the connection
    holds BODY_BUDGET, and open again when one exchange takes what it holds."""
    server = Carrier()
    chunk = b"b" * 16384
    for sid in range(1, 80, 2):
        s = H2Stream(server, sid)  # type: ignore[arg-type]
        # an exchange whose handler has not run: it holds the body bytes, none sent upstream
        s.ex = Exchange(s, "POST", b"/", [], "2", True, b"a")
        server.streams.append(s)
        for _ in range(4):  # a stream window's worth each
            s.on_data(chunk, len(chunk))
    total = sum(server.acked.values())
    assert server.held == 40 * 4 * len(chunk)  # what the exchanges hold: 2.5 MB
    assert BODY_BUDGET - len(chunk) <= total <= BODY_BUDGET + len(chunk)  # opened: ~2 MB
    assert server.starved
    first = server.streams[0]
    first.resume_reading()  # its exchange took what it held (64 KB): its own window opens
    assert sum(server.acked.values()) == total  # (its bytes were acked already)
    assert first.held == 0 and server.held == 39 * 4 * len(chunk) and server.starved
    for s in server.streams[1:8]:  # 512 KB taken in all: the connection is within budget
        s.resume_reading()
    assert server.held <= BODY_BUDGET and not server.starved
    assert sum(server.acked.values()) == 40 * 4 * len(chunk)  # every window opened
