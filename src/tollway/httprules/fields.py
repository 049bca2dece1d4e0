"""Header fields: which ones stop at the gateway, how a value a plugin set goes on the wire.

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


_CTL_TO_SP = str.maketrans({"\r": " ", "\n": " ", "\0": " "})


def field_bytes(value: str) -> bytes:
    """A header value a plugin set, as it goes on the wire: CR, LF and NUL become SP (RFC 9110
    5.5 lets a recipient replace them so), so no value can start another header line; text
    beyond latin-1 is sent as UTF-8 bytes, as nginx passes what it was given."""
    if "\r" in value or "\n" in value or "\0" in value:
        value = value.translate(_CTL_TO_SP)
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape")
