"""Upgrade (RFC 9110 7.8) on the HTTP/1.1 connection: the part of ``server.HttpProtocol`` that
decides whether a request switches protocols (a WebSocket handshake) and holds what follows it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tollway.proxy.flow import HeldBytes

if TYPE_CHECKING:
    from tollway.proxy.pipeline import Exchange


class Upgrading:
    """A mixin of HttpProtocol (its attributes are set by HttpProtocol.__init__)."""

    parser: Any
    tunnel: Any
    _upgrading: Exchange | None
    _upgrade: bytes
    _reframing: bool

    # Defined by HttpProtocol (real methods, not stubs under ``if TYPE_CHECKING:``, which mypyc
    # does not allow in a class body).
    def _reset_message(self) -> None:
        raise NotImplementedError

    def pause_reading(self) -> None:
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError

    def _cancel_timer(self) -> None:
        raise NotImplementedError

    # -- Upgrade (RFC 9110 7.8) ----------------------------------------------------------
    #
    # llhttp stops at the head of a request with "Connection: upgrade" and an Upgrade header,
    # skips its body and hands back the bytes after the head (HttpParserUpgrade). Only a
    # WebSocket handshake with no body may switch protocols, and only once the upstream answered
    # 101 on a route with enable_websocket: until then what follows the head is held, never
    # parsed and never forwarded; an answer other than 101 closes the connection. Any other
    # Upgrade is ignored (a server may, RFC 9110 7.8): the request is framed like any other,
    # its body read as Content-Length or chunked says, and what follows is the next request.

    def _note_upgrade(self, ex: Exchange) -> None:
        """At the head of a request llhttp takes as an upgrade: decide what it will be."""
        if ex.has_body:
            self._upgrading = ex  # not switching: its body is framed again
        elif ex.method == "GET" and self._upgrade.lower() == b"websocket":
            self._upgrading = ex  # may switch: what follows is held
            ex.upgrade = self._upgrade
            ex.keep_alive = False

    def _after_upgrade(self, rest: bytes) -> bytes:
        """The parser stopped after an upgrade request's head; ``rest`` is what followed it.
        Returns the bytes still to parse as HTTP/1.1."""
        ex = self._upgrading
        self._upgrading = None
        if ex is None:
            return rest  # an Upgrade ignored, no body: parse on
        if ex.has_body:
            # Resume with a head that frames the same body; on_headers_complete swallows it.
            self._reframing = True
            if ex.body_chunked:
                head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            else:
                head = b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % ex.content_length
            self.parser.feed_data(head)
            return rest
        held = self.tunnel = HeldBytes(self)
        if rest:
            held.write(rest)
        return b""

    def _end_reframe_head(self) -> None:
        """on_headers_complete for the synthetic head of _after_upgrade."""
        self._reframing = False
        self._reset_message()

    def start_tunnel(self, upstream: Any) -> None:
        """The upstream answered 101 to a WebSocket handshake: bytes flow both ways from now."""
        held = self.tunnel
        self.tunnel = upstream
        self._cancel_timer()
        if isinstance(held, HeldBytes) and held.data:
            upstream.write(bytes(held.data))
        self.resume_reading()
