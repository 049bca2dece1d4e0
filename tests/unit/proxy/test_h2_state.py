"""The server side of ``tollway.http2.Connection`` as the gateway runs it, in memory, against
the ``h2`` library as the client (an implementation of its own)."""

from __future__ import annotations

import h2.events as ev
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes

from tollway.http2 import events as tev
from tollway.http2.connection import Connection
from tollway.http2.frames import MAX_CONCURRENT_STREAMS

REQ = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"a")]
RESP = [(b":status", b"200"), (b"content-length", b"0")]


def pair(max_streams: int, told: bool = True) -> tuple[Connection, H2Connection]:
    """A server and a client; ``told``: the client has read the server's SETTINGS."""
    server = Connection(False, {MAX_CONCURRENT_STREAMS: max_streams})
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    server.initiate_connection()
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    settings = server.data_to_send()
    if told:
        client.receive_data(settings)
    return server, client


def test_closed_streams_leave_the_table_at_once() -> None:
    """A stream answered and ended both ways is forgotten: the table holds open streams only
    (what the concurrency limit counts)."""
    server, client = pair(128)
    for _ in range(50):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, REQ, end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(sid, RESP, end_stream=True)
        client.receive_data(server.data_to_send())
        assert not server.streams


def test_stream_past_the_limit_is_refused_and_hpack_stays_in_step() -> None:
    server, client = pair(2, told=False)  # the client opens 3 streams before it knows
    sids = []
    for i in range(3):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, [*REQ, (b"x-n", str(i).encode())], end_stream=True)
        sids.append(sid)
    events = server.receive_data(client.data_to_send())
    assert [e.stream_id for e in events if isinstance(e, tev.RequestReceived)] == sids[:2]
    assert [e.stream_id for e in events if isinstance(e, tev.StreamRefused)] == sids[2:]
    resets = [
        e for e in client.receive_data(server.data_to_send()) if isinstance(e, ev.StreamReset)
    ]
    assert [(e.stream_id, e.error_code) for e in resets] == [(sids[2], ErrorCodes.REFUSED_STREAM)]
    for sid in sids[:2]:  # room again: a new stream, whose fields decode from the same table
        server.send_headers(sid, RESP, end_stream=True)
    client.receive_data(server.data_to_send())
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, [*REQ, (b"x-n", b"2")], end_stream=True)
    got = [
        e for e in server.receive_data(client.data_to_send()) if isinstance(e, tev.RequestReceived)
    ]
    assert got[0].stream_id == sid and (b"x-n", b"2") in got[0].headers
