"""The head of the request sent upstream, for one attempt of an exchange.

The rules are the pure ones of ``httprules.upstream_head``; this gathers their inputs from the
exchange (the request, what plugins edited, the compiled upstream, the chosen node) and keeps
the per-connection cache: keep-alive clients send the same fields request after request, so
with nothing edited by plugins everything after the request line is reused.
"""

from __future__ import annotations

from tollway.httprules.target import target_bytes
from tollway.httprules.upstream_head import (
    SKIP_UPSTREAM,
    client_fields,
    forwarding_fields,
    framing_fields,
    host_field,
)
from tollway.plugins.kit import RequestContext
from tollway.proxy.base import ExchangeBase
from tollway.runtime.compiled import CompiledUpstream

# The request line's start for the usual methods (an encode and a concatenation less each).
_STARTS = {m: m.encode() + b" " for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")}


def request_head(
    ex: ExchangeBase, up: CompiledUpstream, host: str, port: int, body: bytes | None
) -> bytes:
    ctx = ex.ctx
    assert ctx is not None
    proto = ex.proto
    # Keep-alive clients send the same headers request after request, and plugins make the
    # same edits for the same client (key-auth: the consumer's headers): all after the request
    # line is cached per connection, keyed by the client's headers and the edits (two list
    # compares). The head is a function of these (and of the connection's constants).
    ops = ctx.up_header_ops
    plain = (
        ctx.up_host is None
        and up.pass_host == "pass"
        and body is None
        and not ex.has_body
        and not ex.websocket
        and not ex.connection_tokens
        and ctx.remote_addr == proto.remote_addr
    )
    method = ctx.up_method or ex.method
    target = target_bytes(ctx.up_uri) if ctx.up_uri is not None else ex.target
    start = _STARTS.get(method)
    if start is None:
        start = method.encode("latin-1") + b" "
    if plain:
        cached = proto.head_cache
        if (
            cached is not None
            and cached[0] == ex.raw_headers
            and cached[1] == ex.host_raw
            and cached[2] == ctx.host
            and cached[3] == ops
        ):
            return start + target + cached[4]
    host_hdr = host_field(
        ctx.up_host, up.pass_host, up.upstream_host, up.scheme, host, port, ex.host_raw
    )
    rest = b" HTTP/1.1\r\nHost: " + host_hdr + b"\r\n" + _header_block(ex, ctx, method, body)
    if plain:
        # (a copy of the edits: the cache outlives this request)
        proto.head_cache = (ex.raw_headers, ex.host_raw, ctx.host, ops and list(ops), rest)
    return start + target + rest


def _header_block(ex: ExchangeBase, ctx: RequestContext, method: str, body: bytes | None) -> bytes:
    """The request headers after the Host line, through the blank line."""
    tokens = ex.connection_tokens
    skip = SKIP_UPSTREAM | tokens if tokens else SKIP_UPSTREAM
    ops = ctx.up_header_ops
    edits: dict[bytes, tuple[bytes, bytes | None]] | None = None
    if ops is not None:
        # Headers a plugin set, added or removed: lowercase name -> (its spelling, the final
        # value, None when removed); values went through the kit's wire_value().
        edits = {}
        headers = ctx.headers
        for op in ops:
            name = op[0]
            lname = name.lower()
            value = headers.get(lname)
            edits[lname.encode("latin-1")] = (
                name.encode("latin-1"),
                value.encode("latin-1") if value is not None else None,
            )
    out, xff, fwd = client_fields(ex.raw_headers, skip, edits, ex.proto.trust_real_ip)
    host = ctx.host.encode("latin-1")
    out.append(
        forwarding_fields(
            ctx.remote_addr.encode(), xff, fwd, ctx.scheme.encode(), ctx.server_port, host
        )
    )
    if ex.websocket or body is not None or ex.has_body:  # else no framing field (a GET...)
        upgrade = ex.upgrade if ex.websocket else None
        out.append(
            framing_fields(method, upgrade, body, ex.has_body, ex.body_chunked, ex.content_length)
        )
    out.append(b"\r\n")
    # One flat list joined once: a few allocations per request instead of one per piece.
    return b"".join(out)
