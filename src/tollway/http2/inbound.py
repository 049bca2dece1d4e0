"""Checks of the header fields a peer sends that the gateway passes on (RFC 9113 8.2-8.3), for
response heads and trailers from upstreams (the request side has its own, proxy.h2_fields)."""

from __future__ import annotations

import re

# RFC 9110 5.1 token characters, lowercase only (RFC 9113 8.2.1)
_BAD_NAME = re.compile(rb"[^a-z0-9!#$%&'*+\-.^_`|~]")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)


def check_response(headers: list[tuple[bytes, bytes]], trailers: bool) -> str:
    """Why ``headers`` is a malformed response head (``trailers``: trailer section), or "".
    A head has exactly one pseudo-field, ``:status`` of three digits, first; trailers none. No
    connection-specific field (8.2.2), names lowercase tokens, no CR, LF or NUL in a value
    (they would split an HTTP/1.1 head downstream)."""
    rest = headers
    if not trailers:
        if not headers or headers[0][0] != b":status":
            return "no :status first"
        status = headers[0][1]
        if len(status) != 3 or not status.isdigit():
            return "bad :status"
        rest = headers[1:]
    names = [n for n, _ in rest]
    if not all(names) or _BAD_NAME.search(b"".join(names)):
        return "invalid field name"
    if _CONNECTION_SPECIFIC.intersection(names):
        return "connection-specific field"
    if _BAD_VALUE.search(b" ".join([v for _, v in headers])):
        return "CR, LF or NUL in a field value"
    return ""
