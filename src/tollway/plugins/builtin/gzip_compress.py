"""gzip (APISIX priority 995): compress responses of the configured types on the fly.

APISIX switches on nginx's gzip filter per request; this follows that filter's rules: the client
must accept gzip (and speak at least ``http_version``), the status must be 200, 403 or 404, the
response must not be encoded already, must have a body, and a known length must be at least
``min_length``. The Content-Length goes (the body streams chunked) and ``Vary: Accept-Encoding``
is added when ``vary`` is set. ``buffers`` is accepted for compatibility (zlib sizes its own).
"""

from __future__ import annotations

import zlib
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from tollway.plugins.kit import Plugin, RequestContext

_GZIPPED_STATUSES = (200, 403, 404)


class Buffers(msgspec.Struct):
    number: Annotated[int, Meta(ge=1)] = 32
    size: Annotated[int, Meta(ge=1)] = 4096


class Conf(msgspec.Struct):
    types: (
        Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(min_length=1)] | Literal["*"]
    ) = msgspec.field(default_factory=lambda: ["text/html"])
    min_length: Annotated[int, Meta(ge=1)] = 20
    comp_level: Annotated[int, Meta(ge=1, le=9)] = 1
    http_version: float = 1.1
    buffers: Buffers = msgspec.field(default_factory=Buffers)
    vary: bool | None = None

    def __post_init__(self) -> None:
        if self.http_version not in (1.0, 1.1):
            raise ValueError(
                'property "http_version" validation failed: matches none of the enum values'
            )


def accepts_gzip(accept_encoding: str | None) -> bool:
    if not accept_encoding:
        return False
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().replace(" ", "")
            return not (q.startswith("q=0") and q.strip("q=0.") == "")
    return False


def should_compress(conf: Conf, ctx: RequestContext, http_version: float) -> bool:
    """nginx gzip filter's checks, in the filter's order."""
    if ctx.resp_status not in _GZIPPED_STATUSES or ctx.method == "HEAD":
        return False
    if http_version < conf.http_version or not accepts_gzip(ctx.get_header("accept-encoding")):
        return False
    if ctx.get_header("via") is not None:  # gzip_proxied off (nginx's default)
        return False
    if ctx.get_response_header("content-encoding") is not None:
        return False
    length = ctx.get_response_header("content-length")
    if length is not None and length.isdigit() and int(length) < conf.min_length:
        return False
    ctype = ctx.get_response_header("content-type")
    if ctype is None:
        return False
    if conf.types == "*":
        return True
    return ctype.split(";", 1)[0].strip().lower() in (t.lower() for t in conf.types)


class Gzip(Plugin):
    name = "gzip"
    priority = 995
    schema = Conf

    def header_filter(self, conf: Conf, ctx: RequestContext) -> None:
        if not should_compress(conf, ctx, float(ctx.http_version)):
            return
        ctx.set_response_header("Content-Length", None)
        ctx.set_response_header("Content-Encoding", "gzip")
        if conf.vary:
            ctx.add_response_header("Vary", "Accept-Encoding")
        state = ctx.plugin_state
        if state is None:
            state = ctx.plugin_state = {}
        state[self.name] = zlib.compressobj(conf.comp_level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def body_filter(self, conf: Conf, ctx: RequestContext, chunk: bytes, eof: bool) -> bytes:
        state = ctx.plugin_state
        comp = state.get(self.name) if state else None
        if comp is None:
            return chunk
        out = comp.compress(chunk) if chunk else b""
        if eof:
            out += comp.flush()
            del state[self.name]  # type: ignore[union-attr]
        return out


PLUGINS = [Gzip]
