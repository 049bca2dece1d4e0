"""The request target: how a path goes back on the request line (RFC 9112 3.2).

Pure (no asyncio, no sockets): values and bytes in, values and bytes out.
"""

from __future__ import annotations

from urllib.parse import quote


def quote_path(path: str) -> str:
    """Re-encode a normalised path for the upstream request line."""
    return quote(path, safe="/!$&'()*+,;=:@~-._")


def target_bytes(target: str) -> bytes:
    """A request target a plugin made (proxy-rewrite's ``uri`` from variables, which hold
    decoded text) as it goes on the request line: whitespace, control characters and
    non-ASCII are percent-encoded (RFC 9112 3.2 allows none of them there; RFC 3986 2.1), so no
    value can end the line or start a header. What is already valid is left as it is."""
    if target.isascii() and target.isprintable() and " " not in target:
        return target.encode("ascii")
    raw = target.encode("utf-8", "surrogateescape")
    return b"".join(b"%%%02X" % c if c <= 0x20 or c >= 0x7F else bytes((c,)) for c in raw)
