"""Pieces of the response head the gateway sends its client.

Pure (no asyncio, no sockets): values in, bytes out.
"""

from __future__ import annotations


def without_bodies(method: str, status: int) -> bool:
    """A response that has no content whatever its fields say (RFC 9110 6.4.1, RFC 9112 6.3):
    to HEAD, and 1xx, 204 and 304 responses."""
    return method == "HEAD" or status in (204, 304) or 100 <= status < 200


def upstream_status_field(tried: list[str] | None, status: int) -> bytes:
    """``X-APISIX-Upstream-Status``: nginx's $upstream_status, every try in order, the answering
    one last (APISIX sends it on 5xx answers, or always with ``show_upstream_status_in_response_
    header``)."""
    if tried:
        return b"X-APISIX-Upstream-Status: %s, %d\r\n" % (", ".join(tried).encode(), status)
    return b"X-APISIX-Upstream-Status: %d\r\n" % status


def pairs_to_lines(pairs: list[tuple[bytes, bytes]]) -> list[bytes]:
    """Header pairs as the flat ``name, b": ", value, CRLF`` pieces of a head."""
    out: list[bytes] = []
    for k, v in pairs:
        out += (k, b": ", v, b"\r\n")
    return out


def lines_to_pairs(lines: list[bytes]) -> list[tuple[str, str]]:
    """The flat pieces of a head back as (name, value) text, as plugins see them."""
    return [
        (lines[i].decode("latin-1"), lines[i + 2].decode("latin-1"))
        for i in range(0, len(lines), 4)
    ]
