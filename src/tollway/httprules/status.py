"""Status lines and the gateway's own error pages (nginx's words, as APISIX answers).

Pure (no asyncio, no sockets).
"""

from __future__ import annotations

from http import HTTPStatus

from tollway import __version__

SERVER_HEADER = f"Tollway/{__version__}".encode()

REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}
REASONS.setdefault(499, b"Client Closed Request")


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


def default_page(status: int) -> bool:
    """Whether a bodiless answer with this status gets the gateway's page. nginx's special
    response (ngx_http_special_response_handler) writes one for the 3xx/4xx/5xx codes an exit
    ends a request with; 1xx, 2xx and 304 (RFC 9110 15.4.5: no content) stay empty."""
    return status >= 300 and status != 304


def closing_error(status: int, fields: bytes) -> bytes:
    """The whole answer to a request the gateway cannot read on (a bad head, a timeout): its
    page, then the connection closes (RFC 9112 9.6: ``Connection: close``). ``fields``: the
    Server and Date lines."""
    body = error_page(status)
    return b"%s%sContent-Type: text/html\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
        status_line(status),
        fields,
        len(body),
        body,
    )


def error_page(status: int) -> bytes:
    page = ERROR_PAGES.get(status)
    if page is None:
        reason = REASONS.get(status, b"Error").decode()
        page = _html(status, reason)
    return page


ROUTE_NOT_FOUND = b'{"error_msg":"404 Route Not Found"}\n'
# nginx's default_type with APISIX's charset, for bodies a plugin or the router answer with.
PLAIN_TEXT = b"text/plain; charset=utf-8"
