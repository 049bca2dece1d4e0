"""The h2 state machine as the gateway runs it (``_ServerState``), in memory."""

from __future__ import annotations

import jh2.events as ev
from jh2.config import H2Configuration
from jh2.connection import H2Connection
from jh2.errors import ErrorCodes
from jh2.settings import SettingCodes, Settings

from tollway.proxy.h2 import _CONFIG, SWEEP_AT, StreamRefused, _ServerState

REQ = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"a")]
RESP = [(b":status", b"200"), (b"content-length", b"0")]


def pair(max_streams: int, told: bool = True) -> tuple[_ServerState, H2Connection]:
    """A server and a client; ``told``: the client has read the server's SETTINGS."""
    server = _ServerState(_CONFIG)
    server.local_settings = Settings(
        client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: max_streams}
    )
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    server.initiate_connection()
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    settings = server.data_to_send()
    if told:
        client.receive_data(settings)
    return server, client


def test_closed_streams_are_swept_at_sweep_at() -> None:
    """h2's table of streams stays bounded although it is no longer swept per new stream."""
    server, client = pair(128)
    for _ in range(5 * SWEEP_AT):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, REQ, end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(sid, RESP, end_stream=True)
        client.receive_data(server.data_to_send())
        assert len(server.streams) <= SWEEP_AT


def test_stream_past_the_limit_is_refused_and_hpack_stays_in_step() -> None:
    server, client = pair(2, told=False)  # the client opens 3 streams before it knows
    sids = []
    for i in range(3):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, [*REQ, (b"x-n", str(i).encode())], end_stream=True)
        sids.append(sid)
    events = server.receive_data(client.data_to_send())
    assert [e.stream_id for e in events if isinstance(e, ev.RequestReceived)] == sids[:2]
    assert [e.stream_id for e in events if isinstance(e, StreamRefused)] == sids[2:]
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
        e for e in server.receive_data(client.data_to_send()) if isinstance(e, ev.RequestReceived)
    ]
    assert got[0].stream_id == sid and (b"x-n", b"2") in got[0].headers
