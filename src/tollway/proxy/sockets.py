"""Socket-level steps on a client connection, off the request path: peeking for a request the
loop has not read yet, and dropping a connection with a reset."""

from __future__ import annotations

import asyncio
import socket
import struct

_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def has_unread(transport: asyncio.BaseTransport | None) -> bool:
    """Whether the socket holds bytes not read yet. After the worker was starved of CPU, the
    loop runs its timers (the graceful stop's sweep) before it reads: a connection that looks
    idle may already carry the client's next request, and closing it then resets that request
    (seen as "connection reset" by clients during a reload)."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    try:
        with socket.fromfd(sock.fileno(), socket.AF_INET, socket.SOCK_STREAM) as peek:
            return bool(peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # BlockingIOError: nothing to read; anything else: let it close
        return False


def abort_with_reset(transport: asyncio.Transport | None) -> None:
    """Close with a reset, so that what the peer was sent does not linger in the kernel
    either (nginx's reset_timedout_connection)."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()
