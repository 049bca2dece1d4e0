"""HTTP/1.1 constants and byte-level helpers shared by the client and upstream sides."""

from __future__ import annotations

from http import HTTPStatus
from urllib.parse import quote

from tollway import __version__

SERVER_HEADER = f"Tollway/{__version__}".encode()

REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}
REASONS.setdefault(499, b"Client Closed Request")

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


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


STATUS_LINES: dict[int, bytes] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in REASONS.items()
}


# nginx's own reason phrases (ngx_http_status_lines), for the answers the gateway makes; a
# proxied answer keeps STATUS_LINES above.
NGINX_REASONS: dict[int, bytes] = {
    302: b"Moved Temporarily",
    405: b"Not Allowed",
    408: b"Request Time-out",
    413: b"Request Entity Too Large",
    414: b"Request-URI Too Large",
    416: b"Requested Range Not Satisfiable",
    503: b"Service Temporarily Unavailable",
    504: b"Gateway Time-out",
}
GATEWAY_STATUS_LINES: dict[int, bytes] = {
    **STATUS_LINES,
    **{code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in NGINX_REASONS.items()},
}


def status_line(status: int) -> bytes:
    """The status line of an answer the gateway makes (nginx's words)."""
    line = GATEWAY_STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d \r\n" % status  # nginx: no phrase for a code it does not know
    return line


def _html(status: int, title: str) -> bytes:
    return (
        f"<html>\r\n<head><title>{status} {title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {title}</h1></center>\r\n<hr><center>Tollway</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode()


# nginx-style error pages, as APISIX returns them for gateway-made errors.
ERROR_PAGES: dict[int, bytes] = {
    400: _html(400, "Bad Request"),
    403: _html(403, "Forbidden"),
    404: _html(404, "Not Found"),
    405: _html(405, "Not Allowed"),
    408: _html(408, "Request Time-out"),
    413: _html(413, "Request Entity Too Large"),
    414: _html(414, "Request-URI Too Large"),
    431: _html(431, "Request Header Fields Too Large"),
    500: _html(500, "Internal Server Error"),
    501: _html(501, "Not Implemented"),
    502: _html(502, "Bad Gateway"),
    503: _html(503, "Service Temporarily Unavailable"),
    504: _html(504, "Gateway Time-out"),
}


def error_page(status: int) -> bytes:
    page = ERROR_PAGES.get(status)
    if page is None:
        reason = REASONS.get(status, b"Error").decode()
        page = _html(status, reason)
    return page


ROUTE_NOT_FOUND = b'{"error_msg":"404 Route Not Found"}\n'
# nginx's default_type with APISIX's charset, for bodies a plugin or the router answer with.
PLAIN_TEXT = b"text/plain; charset=utf-8"
