"""Per-worker state shared by every connection, and the one timer that enforces timeouts."""

from __future__ import annotations

import asyncio
import logging
import time
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, Protocol

from tollway.httprules.status import SERVER_HEADER, STATUS_LINES, status_line
from tollway.proxy.flow import Writes
from tollway.proxy.realip import RealIp
from tollway.runtime.compiler import Compiler
from tollway.upstream.h2conn import H2Pool
from tollway.upstream.pool import Pool

log = logging.getLogger("tollway.proxy")

if TYPE_CHECKING:
    from tollway.proxy.accesslog import AccessLog


class SweptConnection(Protocol):
    """What the sweep and the graceful stop use of a client connection."""

    deadline: float  # header/keep-alive timeout (0: none)
    write_paused: bool
    write_paused_at: float
    active: Any  # the exchange being answered, if any

    def reading_head(self) -> bool: ...
    def on_deadline(self) -> None: ...
    def on_send_timeout(self) -> None: ...
    def close_if_idle(self, min_idle: float = 0.0) -> bool: ...
    def close(self) -> None: ...


class SweptExchange(Protocol):
    """What the sweep uses of an exchange: its upstream read and client body timeouts."""

    reading: bool
    last_activity: float
    read_timeout: float
    body_wait_since: float

    def on_read_timeout(self) -> None: ...
    def fail_body(self, status: int) -> None: ...


class ServerState:
    """Per-worker state shared by every connection."""

    def __init__(
        self,
        compiler: Compiler,
        *,
        max_header_size: int,
        max_body_size: int,
        keepalive_timeout: float,
        header_timeout: float = 60.0,
        body_timeout: float = 60.0,
        send_timeout: float = 10.0,
        access_log: AccessLog | None = None,
        server_tokens: bool = True,
        show_upstream_status: bool = False,
        retry_non_idempotent: bool = False,
        real_ip: RealIp | None = None,
        http2: bool = False,
    ) -> None:
        self.compiler = compiler
        self.pool = Pool()
        self.h2pool = H2Pool()  # gRPC upstreams (HTTP/2)
        self.max_header_size = max_header_size
        self.max_body_size = max_body_size
        self.keepalive_timeout = keepalive_timeout
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.send_timeout = send_timeout
        self.access_log = access_log
        self.server_header = (
            b"Server: " + (SERVER_HEADER if server_tokens else b"Tollway") + b"\r\n"
        )
        # A proxied answer's status line and Server line, one piece per status (status 200...)
        self.status_heads = {code: line + self.server_header for code, line in STATUS_LINES.items()}
        self.show_upstream_status = show_upstream_status
        self.retry_non_idempotent = retry_non_idempotent
        self.real_ip = real_ip
        self.http2 = http2  # clients may speak HTTP/2 (ALPN h2, h2c with prior knowledge)
        self._date_second = 0
        self._date_line = b""
        self.connections: set[SweptConnection] = set()
        self.exchanges: set[SweptExchange] = set()
        self.shutting_down = False
        self.requests = 0
        self.accepted = 0  # connections since start
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self._sweeper: asyncio.TimerHandle | None = None
        # Writes of the fast path, sent once the event loop has handled every ready socket
        # (flow.Writes): ``send`` and ``flush_writes`` are its methods, bound once.
        self.writes = Writes(self.exchanges)
        self.send = self.writes.send
        self.flush_writes = self.writes.flush

    SWEEP_INTERVAL = 0.2

    def connection_states(self) -> dict[str, int]:
        """nginx stub_status's view: active (all), reading (a request head on its way),
        writing (a request being answered), waiting (idle keep-alive), accepted, handled."""
        reading = writing = 0
        for conn in self.connections:
            if conn.active is not None:
                writing += 1
            elif conn.reading_head():
                reading += 1
        active = len(self.connections)
        return {
            "active": active,
            "reading": reading,
            "writing": writing,
            "waiting": active - reading - writing,
            "accepted": self.accepted,
            "handled": self.accepted,
        }

    def status_head(self, status: int) -> bytes:
        """The status line and the Server line of a proxied answer with an unusual status."""
        return status_line(status) + self.server_header

    def date_line(self) -> bytes:
        """``Date: ...\r\n`` for answers the gateway makes (RFC 9110 6.6.1), formatted once a
        second."""
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date_line = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._date_line

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the running loop. Timeouts are deadlines checked by one periodic sweep:
        arming and cancelling a timer per request cost ~3 us each (measured)."""
        self.loop = loop
        self.writes.loop = loop
        self._sweeper = loop.call_later(self.SWEEP_INTERVAL, self._sweep)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _sweep(self) -> None:
        """nginx's client timeouts, to the sweep's resolution: keepalive_timeout while idle,
        client_header_timeout from the first byte of a head (or the connection's start),
        client_body_timeout between two reads of a body, send_timeout while the client reads
        nothing; and each upstream read timeout."""
        now = self.loop.time()
        header_timeout = self.header_timeout
        for conn in list(self.connections):
            deadline = conn.deadline
            if deadline:
                if now >= deadline:
                    conn.deadline = 0.0
                    conn.on_deadline()
                elif deadline - now > header_timeout and conn.reading_head():
                    conn.deadline = now + header_timeout  # idle keep-alive became a head
            if conn.write_paused and now - conn.write_paused_at >= self.send_timeout:
                conn.on_send_timeout()
        for ex in list(self.exchanges):
            if ex.reading and now - ex.last_activity >= ex.read_timeout:
                ex.reading = False
                ex.on_read_timeout()
            if ex.body_wait_since and now - ex.body_wait_since >= self.body_timeout:
                ex.body_wait_since = 0.0
                ex.fail_body(408)
        self._sweeper = self.loop.call_later(self.SWEEP_INTERVAL, self._sweep)
