"""The seams between the connection protocol, the exchange and the per-worker state.

The connection protocol (``server.HttpProtocol``, HTTP/1.1; ``h2_stream.H2Stream``, an HTTP/2
stream) carries exchanges; the exchange (``pipeline.Exchange``) asks of it only what
``ClientConnection`` names (and, on an HTTP/2 stream, ``StreamSink``). ``ServerState`` sweeps
connections and exchanges through ``SweptConnection`` and ``SweptExchange``. These Protocols
are what keeps the modules acyclic: server -> pipeline -> forward -> contracts -> state, never
back.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from tollway.proxy.state import ServerState
from tollway.runtime.certs import ClientCheck

__all__ = ["ClientConnection", "HeadCache", "ServerState", "StreamSink"]

# The upstream request head after its request line, for the client's headers, Host, the host
# name and the plugins' header edits that made it (request_head: the same four again reuse it).
HeadCache = tuple[
    list[tuple[bytes, bytes]], bytes, str, list[tuple[str, str | None, bool]] | None, bytes
]


class ClientConnection(Protocol):
    """What an exchange uses of the connection that carries it."""

    state: ServerState
    scheme: str
    remote_addr: str
    remote_port: int
    server_addr: str
    server_port: int
    write_paused: bool
    trust_real_ip: bool  # the peer may name the client (realip)
    # mTLS: (the ssl object's check, whether the client sent a verified certificate)
    client_cert: tuple[ClientCheck, bool] | None
    # per-connection caches of the exchange (see Exchange._make_context, _request_head)
    host_cache: tuple[bytes, str] | None
    head_cache: HeadCache | None
    tunnel: Any  # the upgraded upstream connection, once a WebSocket is established

    @property
    def transport(self) -> asyncio.Transport | None:
        """Where the exchange writes (read only: the connection sets it)."""
        ...

    # An HTTP/2 stream (h2_stream.H2Stream): the exchange hands the head and the end over as
    # fields (StreamSink) and writes only body bytes; HTTP/1.1 frames what the exchange wrote.
    http2: bool

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def exchange_done(self, ex: Any, keep_alive: bool) -> None: ...
    def start_tunnel(self, upstream: Any) -> None: ...
    def close(self) -> None: ...


class StreamSink(Protocol):
    """What an exchange carried by an HTTP/2 stream (``http2``) hands its response to: status
    and fields, body bytes (``write``), then the end with the trailers, if any."""

    def send_head(self, status: int, fields: list[tuple[bytes, bytes]], end: bool) -> None: ...
    def write(self, data: bytes) -> None: ...
    def end_response(
        self, trailers: list[tuple[bytes, bytes]] | None, last: bytes = b""
    ) -> None: ...
