"""grpc-web (APISIX priority 505): gRPC-Web clients (browsers, over HTTP/1.1) to a gRPC upstream.

As APISIX's plugin does: OPTIONS is answered 204 (the CORS preflight), any method but POST 405,
a Content-Type that is not one of the four gRPC-Web types 400. The body is read whole (up to
``max_req_body_size``), base64-decoded in text mode, and sent upstream as ``application/grpc``;
a route whose uri ends in ``*`` sends the part it matched as the upstream path (``/grpc/web/*``
and ``/grpc/web/pkg.Service/Method`` -> ``/pkg.Service/Method``). The response keeps the
client's Content-Type, the upstream's trailers become the last frame of the body (flag 0x80,
grpc/doc/PROTOCOL-WEB.md), and text mode base64-encodes the body chunk by chunk. A trailers-only
answer (grpc-status in the headers) gets no trailer frame. CORS: Allow-Origin ``*`` unless a
cors plugin set one, Expose-Headers grpc-message,grpc-status, and on OPTIONS Allow-Methods POST
and Allow-Headers ``cors_allow_headers``.

Deviation: APISIX's trailer frame carries only grpc-status and grpc-message; this one carries
every trailer the upstream sent (trailing metadata too, as PROTOCOL-WEB.md describes).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from tollway.plugins.kit import Exit, Plugin, RequestContext

DEFAULT_CORS_ALLOW_HEADERS = "content-type,x-grpc-web,x-user-agent"
EXPOSE_HEADERS = "grpc-message,grpc-status"

BINARY, TEXT = 0, 1
ENCODINGS = {
    "application/grpc-web": BINARY,
    "application/grpc-web+proto": BINARY,
    "application/grpc-web-text": TEXT,
    "application/grpc-web-text+proto": TEXT,
}


class Conf(msgspec.Struct):
    max_req_body_size: Annotated[int, Meta(ge=1)] = 64 << 20
    cors_allow_headers: str = DEFAULT_CORS_ALLOW_HEADERS


class _State:
    """Per request: the client's type and encoding; whether the answer is the plugin's own
    (no gRPC-Web framing) or carried the gRPC status in its headers (no trailer frame)."""

    __slots__ = ("encoding", "metadata_sent", "mime", "skip")

    def __init__(self, mime: str | None) -> None:
        self.mime = mime
        self.encoding = BINARY
        self.skip = False
        self.metadata_sent = False


def trailer_frame(trailers: list[tuple[bytes, bytes]] | None) -> bytes:
    """The gRPC-Web trailer frame: 0x80, a 4-byte length, ``name:value\\r\\n`` lines. Without
    a grpc-status from the upstream: 2 (UNKNOWN), "upstream grpc status not received" (APISIX)."""
    fields = dict(trailers or ())
    if not fields.get(b"grpc-status"):
        fields = {b"grpc-status": b"2", b"grpc-message": b"upstream grpc status not received"}
    fields.setdefault(b"grpc-message", b"")
    order = [b"grpc-status", b"grpc-message", *(k for k in fields if not k.startswith(b"grpc-"))]
    block = b"".join(k + b":" + fields[k] + b"\r\n" for k in order)
    return b"\x80" + len(block).to_bytes(4, "big") + block


def decode_text(data: bytes) -> bytes | None:
    """A text-mode body: base64, possibly several padded pieces one after another (a client
    may encode each message on its own). None when it is not base64."""
    data = data.strip()
    out = []
    start = 0
    try:
        while start < len(data):
            pad = data.find(b"=", start)
            if pad < 0:
                out.append(base64.b64decode(data[start:], validate=True))
                break
            stop = pad
            while stop < len(data) and data[stop] == 0x3D:  # "="
                stop += 1
            out.append(base64.b64decode(data[start:stop], validate=True))
            start = stop
    except (binascii.Error, ValueError):
        return None
    return b"".join(out)


class GrpcWeb(Plugin):
    name = "grpc-web"
    priority = 505
    schema = Conf

    def access(self, conf: Conf, ctx: RequestContext) -> Exit | Awaitable[Exit]:
        state = _state(ctx, self.name)
        if ctx.method == "OPTIONS":
            state.skip = True
            return 204, None
        if ctx.method != "POST":
            state.skip = True
            return 405, None
        encoding = ENCODINGS.get(state.mime or "")
        if encoding is None:
            state.skip = True
            return 400, None
        state.encoding = encoding
        ext = ctx.matched_params.get(":ext") if ctx.matched_params else None
        if ext:
            ctx.set_upstream_uri(ext if ext.startswith("/") else "/" + ext)
        return self._body(conf, ctx, state)

    async def _body(self, conf: Conf, ctx: RequestContext, state: _State) -> Exit:
        body = await ctx.read_body(conf.max_req_body_size)
        if body is not None and state.encoding == TEXT:
            body = decode_text(body)
        if body is None:
            state.skip = True
            return 400, None
        ctx.set_request_header("Content-Type", "application/grpc")
        ctx.set_upstream_body(body)
        return None

    def header_filter(self, conf: Conf, ctx: RequestContext) -> None:
        state = _state(ctx, self.name)
        if ctx.method == "OPTIONS":
            ctx.set_response_header("Access-Control-Allow-Methods", "POST")
            ctx.set_response_header("Access-Control-Allow-Headers", conf.cors_allow_headers)
        if ctx.get_response_header("Access-Control-Allow-Origin") is None:
            ctx.set_response_header("Access-Control-Allow-Origin", "*")  # unless cors set one
        ctx.set_response_header("Access-Control-Expose-Headers", EXPOSE_HEADERS)
        if not state.skip and state.mime is not None:
            ctx.set_response_header("Content-Type", state.mime)
            ctx.set_response_header("Content-Length", None)
        # A trailers-only answer: the status went in the headers, no trailer frame follows.
        state.metadata_sent = ctx.get_response_header("grpc-status") is not None

    def body_filter(self, conf: Conf, ctx: RequestContext, chunk: bytes, eof: bool) -> bytes:
        state = _state(ctx, self.name)
        if state.skip or state.mime not in ENCODINGS:
            return chunk
        if eof and not state.metadata_sent:
            tail = trailer_frame(ctx.upstream_trailers)
            if state.encoding == TEXT:
                return (base64.b64encode(chunk) if chunk else b"") + base64.b64encode(tail)
            return chunk + tail
        if state.encoding == TEXT and chunk:
            return base64.b64encode(chunk)
        return chunk


def _state(ctx: RequestContext, name: str) -> _State:
    states: dict[str, Any] | None = ctx.plugin_state
    if states is None:
        states = ctx.plugin_state = {}
    state: _State | None = states.get(name)
    if state is None:
        state = states[name] = _State(ctx.get_header("content-type"))
    return state


PLUGINS = [GrpcWeb]
