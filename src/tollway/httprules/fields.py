"""Header fields: which ones stop at the gateway (a value a plugin set is made safe for the wire
by the kit, ``plugins.kit.wire_value``, when it is set).

Pure (no asyncio, no sockets): values and bytes in, values and bytes out.
"""

from __future__ import annotations

# RFC 9110 7.6.1: hop-by-hop fields are not forwarded (plus legacy Proxy-* and Keep-Alive).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)

# Response headers the gateway replaces (nginx hides the upstream's Server by default).
RESPONSE_DROP = HOP_BY_HOP | {b"server"}

# Connection values that name no other header.
PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"upgrade"})


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names listed in Connection: hop-by-hop too (RFC 9110 7.6.1)."""
    tokens: set[bytes] = set()
    for k, v in headers:
        if k.lower() == b"connection":
            for t in v.split(b","):
                t = t.strip().lower()
                if t and t not in PLAIN_CONNECTION:
                    tokens.add(t)
    return frozenset(tokens)
