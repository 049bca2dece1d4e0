"""Write batching and flow control: how much the gateway buffers, and who stops reading whom.

The rules, in one place (each is applied where the bytes are, by a call or a constant from here):

* Writes of the fast path are batched per event-loop iteration (``Writes``).
* The client's request body: past ``BODY_HIGH_WATER`` buffered bytes the client is not read
  until the upstream side took them (``Exchange.feed_body`` / ``next_body_chunk``).
* Pipelined requests: at ``MAX_PIPELINE`` waiting requests the client is not read
  (``HttpProtocol.on_headers_complete``).
* The response: while the client's transport is paused (its write buffer is full), the
  upstream connection is not read (``HttpProtocol.pause_writing`` -> ``Exchange.client_paused``,
  and after each upstream read in ``Responding.flush``); it resumes on ``resume_writing``, or
  when the pool takes the connection back (``Pool.release``). A request body streamed upstream
  waits for the upstream's transport to drain, with the send timeout (``_stream_body``).
* A WebSocket handshake: what the client sends before the upstream answered is held
  (``HeldBytes``), at most ``HELD_HIGH_WATER`` bytes before the client is not read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sized
from typing import Protocol

log = logging.getLogger("tollway.proxy")

BODY_HIGH_WATER = 256 * 1024  # buffered request body bytes before the client is not read
MAX_PIPELINE = 16  # pipelined requests waiting before the client is not read
HELD_HIGH_WATER = 256 * 1024  # bytes held during a WebSocket handshake


class Writes:
    """Writes sent once this event-loop iteration has handled every ready socket.

    Each write wakes the process reading the other end (the client, the upstream). Written
    one request at a time, between two requests' worth of Python, nearly every write woke a
    sleeping reader: a cross-CPU interrupt, the costliest part of a write in a VM (perf: 3 us of
    kernel time per request). Written back to back, the first write of a batch wakes the reader
    and the others find it running (measured with wrk at 50 connections: +7-10% requests per
    CPU-second, lower p50 and p99). With one request in flight there is nothing to batch, and
    the flush would cost an extra loop iteration: the write goes out at once. Writes to one
    transport stay in order: whoever writes to a transport directly, or closes it, calls
    ``flush`` first.

    An HTTP/2 client connection's frames leave the same way (``flush_later``): what its streams
    queued in this iteration, in one write with the others, for one scheduled call per
    iteration instead of one per connection.
    """

    __slots__ = ("_in_flight", "_later", "_outgoing", "loop")

    def __init__(self, in_flight: Sized) -> None:
        self._in_flight = in_flight  # the exchanges in progress (one: nothing to batch)
        self._outgoing: list[tuple[asyncio.Transport, bytes]] = []
        self._later: list[_Flushable] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    def send(self, transport: asyncio.Transport, data: bytes) -> None:
        out = self._outgoing
        if not out:
            if len(self._in_flight) < 2 or self.loop is None:
                transport.write(data)
                return
            if not self._later:  # (else the flush is scheduled already)
                self.loop.call_soon(self.flush)
        out.append((transport, data))

    def flush_later(self, conn: _Flushable, loop: asyncio.AbstractEventLoop) -> None:
        """``conn.flush()`` once this event-loop iteration is over, with the deferred writes."""
        later = self._later
        if not later and not self._outgoing:
            loop.call_soon(self.flush)
        later.append(conn)

    def flush(self) -> None:
        out = self._outgoing
        if out:
            self._outgoing = []
            for transport, data in out:
                if not transport.is_closing():
                    try:
                        transport.write(data)
                    except Exception:  # a transport that broke meanwhile: its protocol sees it
                        log.debug("deferred write failed", exc_info=True)
        later = self._later
        if later:
            self._later = []
            for conn in later:
                try:
                    conn.flush()
                except Exception:
                    log.debug("deferred flush failed", exc_info=True)


class _Flushable(Protocol):
    def flush(self) -> None: ...


class _Pausable(Protocol):
    def pause_reading(self) -> None: ...


class HeldBytes:
    """What a client sent after a WebSocket handshake, kept until the upstream answers it.
    Bounded: past HELD_HIGH_WATER the client is not read until the handshake is decided."""

    __slots__ = ("client", "data")

    def __init__(self, client: _Pausable) -> None:
        self.client = client
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > HELD_HIGH_WATER:
            self.client.pause_reading()

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def close(self) -> None:
        self.data.clear()
