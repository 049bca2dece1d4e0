"""The request target: how a path goes back on the request line (RFC 9112 3.2).

Pure (no asyncio, no sockets): values and bytes in, values and bytes out.
"""

from __future__ import annotations

from urllib.parse import quote

import httptools

from tollway.router.path import normalize_path, servlet_path


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


def origin_form(url: bytes, method: str) -> tuple[bytes, bytes | None] | None:
    """The request target as the origin-form path and query, and the authority the target
    named (None: none). RFC 9112 3.2: an absolute-form target (a request to a proxy) carries the
    host, which wins over the Host field (RFC 9112 3.2.2, nginx's $host); the asterisk-form is
    only for OPTIONS (3.2.4) and routes as "/". None: no valid target."""
    if url.startswith(b"/"):
        return url, None
    if url == b"*" and method == "OPTIONS":
        return b"/", None
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        return None
    path = parsed.path or b"/"
    if not path.startswith(b"/"):
        return None  # "*" for another method than OPTIONS, or no scheme and authority: 400
    target = path + (b"?" + parsed.query if parsed.query else b"")
    host = parsed.host
    if host:
        host += b":%d" % parsed.port if parsed.port is not None else b""
    return target, host or None


def routed_path(
    raw_path: str, query: str, *, servlet: bool, tail_slash: bool
) -> tuple[str, bytes | None] | None:
    """The path routes and plugins see, and the target to send upstream when it differs from
    the client's (None: the client's). RFC 3986 6.2.2: percent-decoded, dot segments removed
    (so a "/a/../admin" cannot pass for "/a"); APISIX ``normalize_uri_like_servlet`` drops
    ";parameters" for routing only (the upstream gets them, as APISIX forwards the original
    uri); ``delete_uri_tail_slash`` drops a trailing "/" everywhere. None: an invalid path
    (400)."""
    target: bytes | None = None
    q = "?" + query if query else ""
    if "%" in raw_path or "/." in raw_path or "//" in raw_path:
        path = normalize_path(raw_path)
        if path is None:
            return None
        if path != raw_path:
            target = (quote_path(path) + q).encode()
    else:
        path = raw_path
    if servlet and (";" in path or "\\" in path):
        found = servlet_path(path)
        if found is None:
            return None
        path = found
    if tail_slash and path[-1] == "/" and len(path) > 1:
        path = path[:-1]
        target = (quote_path(path) + q).encode()
    return path, target


def host_name(host: bytes) -> str | None:
    """The host a request names, as routes match it: lowercase, without the port, an IPv6
    literal with its brackets. nginx ngx_http_validate_host: one trailing dot goes; "..", "/"
    or "\\" make it invalid (None: 400)."""
    name = host.decode("latin-1").lower()
    if name.startswith("["):
        return name[: name.find("]") + 1]
    name = name.partition(":")[0]
    if name.endswith("."):
        name = name[:-1]
    if ".." in name or "/" in name or "\\" in name:
        return None
    return name
