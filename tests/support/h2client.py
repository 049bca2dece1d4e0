"""A blocking HTTP/2 client on the ``h2`` library, for tests: several streams on one connection,
small windows, raw frames for the flood tests."""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import h2.events as ev
from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame


@dataclass
class Answer:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] | None = None
    done: bool = False
    reset: int | None = None  # RST_STREAM error code

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


class H2Client:
    def __init__(
        self,
        port: int,
        *,
        tls_ca: str | None = None,
        server_name: str = "localhost",
        window: int | None = None,
        auto_ack: bool = True,
        timeout: float = 10.0,
    ) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls_ca is not None:
            ctx = ssl.create_default_context(cadata=tls_ca)
            ctx.set_alpn_protocols(["h2"])
            self.sock: Any = ctx.wrap_socket(raw, server_hostname=server_name)
            assert self.sock.selected_alpn_protocol() == "h2"
        else:
            self.sock = raw
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        # h2 closes its side on any GOAWAY; a graceful one (NO_ERROR) still lets the streams up
        # to its last-stream-id finish (RFC 9113 6.8), so this client keeps reading them.
        table = self.conn._frame_dispatch_table
        receive_goaway = table[GoAwayFrame]

        def goaway(frame: GoAwayFrame) -> Any:
            out = receive_goaway(frame)
            if frame.error_code == 0:
                self.conn.state_machine.state = ConnectionState.CLIENT_OPEN
            return out

        table[GoAwayFrame] = goaway
        if window is not None:
            self.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.auto_ack = auto_ack  # acknowledge DATA at once (else: ack_all)
        self.answers: dict[int, Answer] = {}
        self.goaway: ev.ConnectionTerminated | None = None
        self.closed = False
        self.unacked: dict[int, int] = {}
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_request(
        self,
        path: str,
        *,
        method: str = "GET",
        host: str = "localhost",
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        end: bool = True,
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        head = [(":method", method), (":path", path), (":scheme", "http"), (":authority", host)]
        head += headers or []
        enc = [(k.encode(), v.encode()) for k, v in head]
        self.conn.send_headers(sid, enc, end_stream=body is None and end)
        self.answers[sid] = Answer()
        self.flush()
        if body is not None:
            self.send_body(sid, body, end=end)
        return sid

    def send_body(self, sid: int, body: bytes, *, end: bool = True) -> None:
        """Within the gateway's windows: waits for WINDOW_UPDATEs as it goes."""
        view = memoryview(body)
        while view:
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if room <= 0:
                self.read_once()
                continue
            self.conn.send_data(sid, bytes(view[:room]))
            view = view[room:]
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()

    def read_once(self, timeout: float | None = None) -> bool:
        if timeout is not None:
            self.sock.settimeout(timeout)
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
            return False
        for e in self.conn.receive_data(data):
            self._event(e)
        self.flush()
        return True

    def _event(self, e: Any) -> None:
        if isinstance(e, ev.ResponseReceived):
            a = self.answers[e.stream_id]
            a.headers = list(e.headers)
            a.status = int(dict(e.headers)[b":status"])
        elif isinstance(e, ev.DataReceived):
            self.answers[e.stream_id].body += e.data
            if self.auto_ack:
                self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            else:
                self.unacked[e.stream_id] = (
                    self.unacked.get(e.stream_id, 0) + e.flow_controlled_length
                )
        elif isinstance(e, ev.TrailersReceived):
            self.answers[e.stream_id].trailers = list(e.headers)
        elif isinstance(e, ev.StreamEnded):
            self.answers[e.stream_id].done = True
        elif isinstance(e, ev.StreamReset):
            if e.stream_id in self.answers:
                self.answers[e.stream_id].reset = e.error_code
                self.answers[e.stream_id].done = True
        elif isinstance(e, ev.ConnectionTerminated):
            self.goaway = e

    def ack_all(self) -> None:
        for sid, n in self.unacked.items():
            if n:
                self.conn.acknowledge_received_data(n, sid)
        self.unacked.clear()
        self.flush()

    def wait(self, *sids: int, timeout: float = 10.0) -> list[Answer]:
        deadline = time.monotonic() + timeout
        while not all(self.answers[s].done for s in sids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"streams {sids} not done")
            if not self.read_once(timeout=max(0.01, deadline - time.monotonic())):
                raise ConnectionError("closed by the gateway")
        return [self.answers[s] for s in sids]

    def get(self, path: str, **kw: Any) -> Answer:
        return self.wait(self.send_request(path, **kw))[0]

    def read_until_closed(self, timeout: float = 10.0) -> bool:
        """Read until the gateway closes the connection (True) or timeout (False)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self.read_once(timeout=max(0.01, deadline - time.monotonic())):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        except Exception:  # a frame h2 refuses after GOAWAY: the gateway is closing anyway
            return self.goaway is not None
        return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
