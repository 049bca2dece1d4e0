"""What the response side and a gRPC client get of a gRPC upstream (``grpc_attempt``): the
upstream's response head as the response side reads it (``H2Head``), and a failed call
answered as a gRPC status a client can read (``give_up``: UNAVAILABLE, DEADLINE_EXCEEDED...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tollway.httprules.fields import RESPONSE_DROP
from tollway.httprules.grpc import error_fields, is_grpc, message_value, status_for

if TYPE_CHECKING:
    from tollway.proxy.base import ExchangeBase


class H2Head:
    """The upstream's response head as the response side reads it (``ResponseHead`` of
    ``upstream.pool``): its end-to-end fields as HTTP/2 pairs (``fields``: an HTTP/2 client's
    stream sends them as they are), as flat ``name, ": ", value, CRLF`` pieces when read
    (``lines``: an HTTP/1.1 client, header_filter plugins)."""

    __slots__ = ("_lines", "content_length", "fields")
    connection = None  # HTTP/2 has none (RFC 9113 8.2.2)

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.content_length: bytes | None = None
        self._lines: list[bytes] | None = None
        fields: list[tuple[bytes, bytes]] = []
        for k, v in headers:
            # (names are lowercase: the HTTP/2 layer refuses others, RFC 9113 8.2.1, and the
            # gateway's own fields are written so)
            if k[:1] == b":" or k in RESPONSE_DROP:
                continue
            if k == b"content-length":
                self.content_length = v
            else:
                fields.append((k, v))
        self.fields = fields

    @property
    def lines(self) -> list[bytes]:
        lines = self._lines
        if lines is None:
            lines = self._lines = []
            for k, v in self.fields:
                lines += (k, b": ", v, b"\r\n")
        return lines

    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        return list(self.fields)


def give_up(ex: ExchangeBase, status: int, statuses: list[str]) -> None:
    """Answer a failed call: a gRPC client reads a gRPC status, others an HTTP error page."""
    if ex.ctx is not None and statuses:
        ex.ctx.upstream_status = ", ".join(statuses)
    if ex.client_closed:
        return
    ctx = ex.ctx
    grpc_client = ctx is not None and is_grpc(ctx.headers.get("content-type"))
    # (the cause stays in the debug log: node addresses are not the client's business)
    reason = "upstream timed out" if status == 504 else "upstream unavailable"
    if not ex.response_started:
        if ex.reject_status:
            ex.respond_error(ex.reject_status)  # the client's body was bad
        elif grpc_client:
            ex.upstream_statuses = statuses or None
            _grpc_error(ex, status_for(status), reason)
        else:
            ex.upstream_statuses = statuses or None
            ex.respond_error(status)
        return
    if grpc_client and not ex._finished:
        # The response began: the call ends with the failure's status in its trailers.
        trailers = [
            (b"grpc-status", b"%d" % status_for(status)),
            (b"grpc-message", message_value(reason)),
        ]
        ex.resp_trailers = trailers
        if ctx is not None:
            ctx.upstream_trailers = trailers
        ex.on_upstream_complete()
    else:
        ex.keep_alive = False  # the client sees the answer cut short


def _grpc_error(ex: ExchangeBase, code: int, reason: str) -> None:
    """A gRPC status as the whole answer: trailers-only (HTTP status 200, the status in the
    headers) to an HTTP/1.1 client (gRPC-Web reads it so); an HTTP/2 client's stream sends its
    head at once, so there the status ends the stream in trailers (a response with no message)."""
    fields = error_fields(code, reason)
    if not ex.proto.http2:
        ex.respond(200, b"", fields)
        return
    ex.resp_trailers = fields[1:]
    if ex.ctx is not None:
        ex.ctx.upstream_trailers = ex.resp_trailers
    ex.on_upstream_headers(200, H2Head(fields[:1]))
    ex.on_upstream_complete()
