"""HTTP/2 field rules (RFC 9113 8.2-8.3), pure: bytes in, bytes out, no asyncio, no h2.

An HTTP/2 request is turned into what an exchange reads of an HTTP/1.1 one (method, target,
Host, header list), and the exchange's response fields into an HTTP/2 field block.
"""

from __future__ import annotations

from typing import NamedTuple

# The cleartext preface (RFC 9113 3.4) starts like an HTTP/1.x request line "PRI * HTTP/2.0",
# which is how h2c with prior knowledge is told from HTTP/1.1 on one port.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PREFACE_LINE = b"PRI * HTTP/2.0\r\n\r\n"

# RFC 9113 8.2.2: connection-specific fields are not sent in HTTP/2.
CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)


class MalformedRequest(ValueError):
    """A request RFC 9113 8.1.1 calls malformed: a stream error (PROTOCOL_ERROR)."""


class H2Request(NamedTuple):
    method: bytes
    path: bytes
    host: bytes  # :authority, else Host
    fields: list[tuple[bytes, bytes]]  # regular fields, Host first, cookies joined
    content_length: int | None
    expect_continue: bool


def starts_h2c(data: bytes) -> bool:
    """The first bytes of a plain connection are the HTTP/2 preface's request line."""
    return data.startswith(PREFACE_LINE)


def request_of(headers: list[tuple[bytes, bytes]]) -> H2Request:
    """Pseudo-header fields to method, path and Host; cookie crumbs joined with "; " (RFC 9113
    8.2.3: the HTTP/1.1 upstream expects one Cookie field). h2 has already checked the block
    (lowercase names, pseudo-fields first and once, no connection-specific field, ``te`` only
    ``trailers``)."""
    method = path = authority = b""
    fields: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    host = b""
    length: int | None = None
    expect = False
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            continue
        if name == b"cookie":
            cookies.append(value)
            continue
        if name == b"host":
            host = value
            continue  # put first below, with :authority's value when both are present
        if name == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise MalformedRequest("invalid content-length")
            length = int(value)
        elif name == b"expect":
            expect = value.lower() == b"100-continue"
            continue  # hop-by-hop: answered here
        fields.append((name, value))
    if not method or method == b"CONNECT":
        raise MalformedRequest("no :method, or CONNECT (not supported)")
    if not path:
        raise MalformedRequest("no :path")
    # RFC 9113 8.3.1: :authority, else Host; one of them names the target's host.
    host = authority or host
    if not host:
        raise MalformedRequest("no :authority or host")
    fields.insert(0, (b"host", host))
    if cookies:
        fields.append((b"cookie", b"; ".join(cookies)))
    return H2Request(method, path, host, fields, length, expect)


def response_fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The flat ``name, ": ", value, CRLF`` pieces of a response head as HTTP/2 fields:
    lowercase names, no connection-specific field (RFC 9113 8.2.2)."""
    out: list[tuple[bytes, bytes]] = []
    for i in range(0, len(lines), 4):
        name = lines[i].lower()
        if name not in CONNECTION_SPECIFIC:
            out.append((name, lines[i + 2]))
    return out


def pairs_fields(pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Header pairs (a local answer, trailers) as HTTP/2 fields."""
    return [(k.lower(), v) for k, v in pairs if k.lower() not in CONNECTION_SPECIFIC]


def split_lines(block: bytes) -> list[bytes]:
    """``Name: value\\r\\n`` lines (one or several) as flat head pieces."""
    out: list[bytes] = []
    for line in block.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            out += (name, b": ", value.strip(), b"\r\n")
    return out
