"""The upstream's answer, streamed to the client: the ResponseSink callbacks of an exchange
(the part after ``phases.Phases`` in the exchange's chain of classes, see ``base``).

The response head is built once from the upstream's fields (hop-by-hop ones already dropped by
the connection) and the header_filter plugins; body bytes go out in one client write per
upstream read (``flush``), or with the head when both came in one read.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast

from tollway.httprules.fields import PLAIN_CONNECTION, connection_tokens
from tollway.httprules.response_head import pairs_to_lines, upstream_status_field
from tollway.httprules.status import STATUS_LINES, status_line
from tollway.plugins.kit import RequestContext
from tollway.plugins.kit_head import ResponseHead, apply_early, early_lines, early_tail
from tollway.plugins.registry import Chain
from tollway.proxy.contracts import ClientConnection, StreamSink
from tollway.proxy.h2_fields import pairs_fields, response_fields, split_lines
from tollway.proxy.phases import Phases
from tollway.upstream.pool import ResponseHead as UpstreamHead
from tollway.upstream.pool import UpstreamConnection

if TYPE_CHECKING:
    pass

log = logging.getLogger("tollway.proxy")

# Statuses whose answers have no body (RFC 9110 6.4.1; httprules.response_head.without_bodies).
_BODYLESS = frozenset((204, 304, *range(100, 200)))


class Responding(Phases):
    __slots__ = ()

    # -- upstream response callbacks (ResponseSink) ------------------------------------

    def on_upstream_headers(self, status: int, conn: UpstreamHead) -> None:
        if self.client_closed:
            return
        ctx = self.ctx
        assert ctx is not None
        self.status = ctx.resp_status = status
        chain = self.chain
        fields = conn.fields
        plain = ctx.resp_early is None and not (chain and chain.header_filter)
        if fields is not None and self.proto.http2 and plain:
            self._h2_pass(ctx, status, fields, conn.content_length)
            return
        lines, content_length, connection = conn.lines, conn.content_length, conn.connection
        if connection is not None and connection.lower() not in PLAIN_CONNECTION:
            lines = _without_named(conn, connection, lines)
        if status == 101 and self.websocket and isinstance(conn, UpstreamConnection):
            self._start_tunnel(conn, lines)
            return
        tail: tuple[bytes, ...] = ()  # headers set in access, appended as they are
        if not plain:  # header_filter plugins, or headers set in access
            early, found = ctx.resp_early, None
            if early is not None and not (chain and (chain.header_filter or chain.buffers_body)):
                found = early_tail(early, lines)  # only those: none of their names in the head?
            if found is None:
                status, lines, content_length = self._filtered_head(
                    chain, ctx, lines, content_length
                )
            else:  # (the usual case)
                tail = found
        if ctx.upstream_status is None:
            ctx.upstream_status = str(status)
        if self.proto.http2:
            self._h2_head(status, response_fields([*lines, *tail]), content_length)
            return
        state = self.proto.state
        out = [state.status_heads.get(status) or state.status_head(status), *lines, *tail]
        if status >= 500 or state.show_upstream_status:
            out.append(upstream_status_field(self.upstream_statuses, status))
        # httprules.response_head.without_bodies, inlined: this runs for every proxied answer
        no_body = status in _BODYLESS or self.method == "HEAD"
        self.resp_no_body = no_body
        if content_length is not None and self.buffered_resp is None:
            out.append(b"Content-Length: " + content_length + b"\r\n")
        elif not no_body and self.buffered_resp is None:
            self._unsized(out)
        if not self.keep_alive or (not self.body_complete and not self.has_body):
            out.append(b"Connection: close\r\n")
            self.keep_alive = False
        elif self.http_version == "1.0":
            out.append(b"Connection: keep-alive\r\n")
        self.response_started = True
        if self.buffered_resp is not None:  # framed when the whole body is known
            # without its status line: body_filter may still set the status (on_upstream_complete)
            self.buffered_resp.append(state.server_header + b"".join(out[1:]))
            return
        out.append(b"\r\n")  # (buffered: usually one write with the first body bytes, flush())
        if self._out:
            self._out += out
        else:
            self._out = out

    def _unsized(self, out: list[bytes]) -> None:
        """An answer with a body and no Content-Length: chunked to an HTTP/1.1 client, ended by
        closing the connection to an HTTP/1.0 one."""
        if self.http_version == "1.1":
            self.resp_chunked = True
            out.append(b"Transfer-Encoding: chunked\r\n")
        else:
            self.keep_alive = False

    def _filtered_head(
        self, chain: Chain | None, ctx: RequestContext, lines: list[bytes], length: bytes | None
    ) -> tuple[int, list[bytes], bytes | None]:
        """The header_filter plugins see and edit the head: (status, lines, Content-Length),
        with the headers plugins set in access (``ctx.resp_early``) set first."""
        early = ctx.resp_early
        if chain is None or not chain.header_filter:
            assert early is not None  # only those: appended, no ResponseHead (the usual case)
            lines, length = early_lines(early, lines, length)
            if chain is not None and chain.buffers_body:
                self.buffered_resp = []
            return ctx.resp_status, lines, length
        # A lazily decoded view (kit_head): plugins that only add headers leave the upstream's
        # lines as they are.
        head = ctx.resp_head = ResponseHead(lines, length)
        if early is not None:  # set in access: header_filter plugins see them
            apply_early(head, early)
        for e in chain.header_filter:  # (Phases._header_filter, inlined: every answer)
            if e.filter is not None and not e.filter.eval(ctx.var):
                continue
            try:
                e.fn(e.conf, ctx)
            except Exception:
                log.debug("plugin %s header_filter failed", e.plugin.name, exc_info=True)
        status = self.status = ctx.resp_status
        head = ctx.resp_head  # a plugin may have replaced it (ctx.resp_headers = [...])
        lines, length = head.wire() if head is not None else ([], None)
        if chain.buffers_body:
            self.buffered_resp = []
        return status, lines, length

    def _h2_pass(
        self,
        ctx: RequestContext,
        status: int,
        fields: list[tuple[bytes, bytes]],
        length: bytes | None,
    ) -> None:
        """An HTTP/2 upstream's head to an HTTP/2 client, no plugin editing it: its fields
        as they are (no round trip through HTTP/1.1 lines)."""
        if ctx.upstream_status is None:
            ctx.upstream_status = str(status)
        self._h2_head(status, fields, length)

    def _h2_head(
        self, status: int, fields: list[tuple[bytes, bytes]], length: bytes | None
    ) -> None:
        """The head as HTTP/2 fields (``fields``: the upstream's, extended here), to the
        stream (held while a buffered body is read)."""
        state = self.proto.state
        fields.append((b"server", state.server_header[8:-2]))
        if status >= 500 or state.show_upstream_status:
            extra = upstream_status_field(self.upstream_statuses, status)
            fields += response_fields(split_lines(extra))
        no_body = self.method == "HEAD" or status in (204, 304) or 100 <= status < 200
        self.resp_no_body = no_body
        self.response_started = True
        if self.buffered_resp is not None:
            self.resp_fields = (status, fields)
            return
        if length is not None:
            fields.append((b"content-length", length))
        cast(StreamSink, self.proto).send_head(status, fields, no_body)

    def _h2_complete(self, chain: Chain | None) -> None:
        """on_upstream_complete on an HTTP/2 stream: the rest of the body, then the end (with
        the upstream's trailers)."""
        sink = cast(StreamSink, self.proto)
        ctx = self.ctx
        out = self._out
        held = self.resp_fields
        if self.buffered_resp is not None and held is not None and chain and ctx is not None:
            body = self._body_filter(chain, ctx, b"".join(self.buffered_resp), True)
            self.resp_bytes = len(body)
            status, fields = held
            # the status as the plugins left it (grpc-transcode maps a trailer's grpc-status)
            status = self.status = ctx.resp_status or status
            if not self.resp_no_body:
                fields.append((b"content-length", b"%d" % len(body)))
            sink.send_head(status, fields, False)
            out.clear()
            out.append(b"" if self.resp_no_body else body)
        elif chain is not None and chain.body_filter and ctx is not None:
            tail = self._body_filter(chain, ctx, b"", True)
            self.resp_bytes += len(tail)
            out.append(tail)
        last = b"".join(out) if out else b""
        out.clear()
        trailers = self.resp_trailers
        sink.end_response(pairs_fields(trailers) if trailers else None, last)

    def on_upstream_body(self, data: bytes) -> None:
        if self.client_closed:
            return
        if self.buffered_resp is not None:
            self.buffered_resp.append(data)
            return
        chain = self.chain
        if chain is not None and chain.body_filter and self.ctx is not None:
            data = self._body_filter(chain, self.ctx, data, False)
            if not data:
                return
        self.resp_bytes += len(data)
        if self.resp_chunked:
            self._out.append(b"%x\r\n" % len(data))
            self._out.append(data)
            self._out.append(b"\r\n")
        else:
            self._out.append(data)

    def flush(self) -> None:
        """Called after each upstream read: one client write for what that read produced. Any
        read is activity for the read timeout."""
        self.last_activity = self.proto.state.loop.time()
        out = self._out
        if not out:
            return
        self.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        if self.proto.write_paused and self.held is not None:
            self.held.pause()  # the client reads slowly: so does the upstream connection

    def on_upstream_complete(self) -> None:
        chain = self.chain
        if self.client_closed:
            pass
        elif self.proto.http2:
            self._h2_complete(chain)
        elif (
            not self.resp_chunked
            and self.buffered_resp is None
            and not (chain and chain.body_filter)
        ):
            out = self._out  # the common case: what the last read produced, in one write
            if out:
                t = self.proto.transport
                if t is not None:
                    self.proto.state.send(t, out[0] if len(out) == 1 else b"".join(out))
                out.clear()
        else:
            ctx = self.ctx
            if self.buffered_resp is not None and ctx is not None and chain is not None:
                head, *parts = self.buffered_resp
                body = self._body_filter(chain, ctx, b"".join(parts), True)
                self.resp_bytes = len(body)
                # the status as the plugins left it (grpc-transcode maps a trailer's grpc-status)
                status = self.status = ctx.resp_status or self.status
                line = STATUS_LINES.get(status) or status_line(status)
                length = b"" if self.resp_no_body else b"Content-Length: %d\r\n" % len(body)
                self._out.append(
                    line + head + length + b"\r\n" + (b"" if self.resp_no_body else body)
                )
            else:
                if chain is not None and chain.body_filter and ctx is not None:
                    tail = self._body_filter(chain, ctx, b"", True)
                    if tail:
                        self.resp_bytes += len(tail)
                        self._out.append(
                            b"%x\r\n" % len(tail) + tail + b"\r\n" if self.resp_chunked else tail
                        )
                if self.resp_chunked:
                    self._out.append(self._last_chunk())
            out = self._out
            if out:
                self.write(out[0] if len(out) == 1 else b"".join(out))
                out.clear()
        held = self.held
        if held is not None:
            held.upstream_done()

    def _last_chunk(self) -> bytes:
        """The chunked body's end, with the upstream's trailers as trailer fields (RFC 9112
        7.1.2) when it sent some."""
        trailers = self.resp_trailers
        if not trailers:
            return b"0\r\n\r\n"
        return b"0\r\n" + b"".join(pairs_to_lines(trailers)) + b"\r\n"

    def on_upstream_error(self, exc: BaseException | None) -> None:
        self.flush()
        held = self.held
        if held is not None:
            held.upstream_failed(exc)

    def _start_tunnel(self, conn: UpstreamConnection, lines: list[bytes]) -> None:
        out = [status_line(101), self.proto.state.server_header, *lines]
        out.append(b"Connection: Upgrade\r\nUpgrade: " + self.upgrade + b"\r\n\r\n")
        self.write(b"".join(out))
        self.response_started = True
        self.keep_alive = False
        # The read timer stays armed: an idle tunnel (no bytes either way) is closed after the
        # route's read timeout, as nginx's proxy_read_timeout does for WebSocket.
        conn.upgraded = True
        conn.sink = _Tunnel(self.proto, self)
        self.proto.start_tunnel(conn)

    def touch(self) -> None:
        self.last_activity = self.proto.state.loop.time()

    def tunnel_closed(self) -> None:
        held = self.held
        if held is not None:
            held.upstream_done()


def _without_named(conn: UpstreamHead, connection: bytes, lines: list[bytes]) -> list[bytes]:
    """Headers named in the upstream's Connection are hop-by-hop too (RFC 9110 7.6.1)."""
    tokens = connection_tokens([(b"connection", connection)])
    if not tokens:
        return lines
    return pairs_to_lines([(k, v) for k, v in conn.header_pairs() if k.lower() not in tokens])


class _Tunnel:
    """ResponseSink for an upgraded (WebSocket) connection: bytes to the client as they come."""

    def __init__(self, proto: ClientConnection, ex: Responding) -> None:
        self.proto = proto
        self.ex = ex

    def on_upstream_headers(self, status: int, conn: UpstreamConnection) -> None:
        return None

    def flush(self) -> None:
        return None

    def on_upstream_body(self, data: bytes) -> None:
        self.ex.touch()
        t = self.proto.transport
        if t is not None and not t.is_closing():
            t.write(data)

    def on_upstream_complete(self) -> None:
        self.proto.tunnel = None
        self.proto.close()
        self.ex.tunnel_closed()

    def on_upstream_error(self, exc: BaseException | None) -> None:
        self.on_upstream_complete()
