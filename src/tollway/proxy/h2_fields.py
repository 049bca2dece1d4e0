"""HTTP/2 field rules (RFC 9113 8.2-8.3), pure: bytes in, bytes out, no asyncio, no h2.

An HTTP/2 request is turned into what an exchange reads of an HTTP/1.1 one (method, target,
Host, header list), and the exchange's response fields into an HTTP/2 field block.
"""

from __future__ import annotations

import re
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


class Refused(Exception):
    """A well-formed request answered at once with ``status`` on its stream (405, 431)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


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


def request_of(headers: list[tuple[bytes, bytes]], limit: int = 1 << 31) -> H2Request:
    """Pseudo-header fields to method, path and Host; cookie crumbs joined with "; " (RFC 9113
    8.2.3: the HTTP/1.1 upstream expects one Cookie field).

    The checks of RFC 9113 8.2-8.3 are made here, in one pass, instead of by h2 (its validation,
    a chain of generators, cost a tenth of a request): lowercase names, pseudo-fields known,
    once and first, no connection-specific field, ``te`` only ``trailers``, and no CR, LF or
    NUL anywhere (they would split the HTTP/1.1 head sent upstream).

    ``Refused``: a header list over ``limit`` (its RFC 7541 4.1 size, what
    SETTINGS_MAX_HEADER_LIST_SIZE bounds: RFC 9113 10.5.1 lets a server answer 431), and CONNECT
    (405, as on HTTP/1.1)."""
    pseudo: dict[bytes, bytes] = {}
    fields: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    host = b""
    length: int | None = None
    expect = False
    regular = False
    size = 32 * len(headers)
    for name, value in headers:
        size += len(name) + len(value)
        if name[:1] == b":":
            if regular or name not in _PSEUDO or name in pseudo:
                raise MalformedRequest(f"{name!r} unknown, repeated or after a regular field")
            pseudo[name] = value
            continue
        regular = True
        if not name:
            raise MalformedRequest("empty field name")
        if name in _SPECIAL:
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
            elif name == b"te":
                if value != b"trailers":
                    raise MalformedRequest("te other than trailers")
            else:
                raise MalformedRequest(f"connection-specific field {name!r}")
        fields.append((name, value))
    if size > limit:
        raise Refused(431, f"header list of {size} bytes")
    method, path, host = _target(pseudo, host)
    fields.insert(0, (b"host", host))
    if cookies:
        fields.append((b"cookie", b"; ".join(cookies)))
    _check_bytes(fields, headers)
    return H2Request(method, path, host, fields, length, expect)


def _target(pseudo: dict[bytes, bytes], host: bytes) -> tuple[bytes, bytes, bytes]:
    """Method, path and host of the request; ``host``: its Host field (or empty)."""
    method, path = pseudo.get(b":method", b""), pseudo.get(b":path", b"")
    if method == b"CONNECT":
        _check_connect(pseudo)
    if not method:
        raise MalformedRequest("no :method")
    if not path or b":scheme" not in pseudo:
        raise MalformedRequest("no :path or :scheme")
    # RFC 9113 8.3.1: :authority, else Host; one of them names the target's host.
    host = pseudo.get(b":authority") or host
    if not host:
        raise MalformedRequest("no :authority or host")
    return method, path, host


def _check_connect(pseudo: dict[bytes, bytes]) -> None:
    """RFC 9113 8.5: a CONNECT request has :authority and neither :scheme nor :path (extended
    CONNECT, RFC 8441, is not offered: a :protocol is an unknown pseudo-field). A well-formed
    one is refused with 405, as on HTTP/1.1 and by nginx (a forward-proxy tunnel)."""
    if b":scheme" in pseudo or b":path" in pseudo or not pseudo.get(b":authority"):
        raise MalformedRequest("CONNECT with :scheme or :path, or without :authority")
    raise Refused(405, "CONNECT")


_PSEUDO = frozenset({b":method", b":path", b":scheme", b":authority"})
_SPECIAL = frozenset({b"cookie", b"host", b"content-length", b"expect", b"te"}) | (
    CONNECTION_SPECIFIC
)
_BAD_NAME = re.compile(rb"[^a-z0-9!#$%&'*+\-.^_`|~]")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")


def _check_bytes(fields: list[tuple[bytes, bytes]], headers: list[tuple[bytes, bytes]]) -> None:
    """Regular names are lowercase tokens (RFC 9113 8.2.1, RFC 9110 5.1); no value holds CR, LF
    or NUL (RFC 9113 8.2.1), pseudo-fields included. One regex over all names, one over all
    values."""
    if _BAD_NAME.search(b"".join([n for n, _ in fields])):
        raise MalformedRequest("invalid field name")
    if _BAD_VALUE.search(b" ".join([v for _, v in headers])):
        raise MalformedRequest("CR, LF or NUL in a field value")


# An upstream's field names as they are -> as HTTP/2 names (b"": dropped). Upstreams send the
# same few names answer after answer: one lookup instead of lower() and a set test per field.
_H2_NAMES: dict[bytes, bytes] = {}
_H2_NAMES_MAX = 512  # past it, further names are converted each time (no unbounded growth)


# The last head converted (a copy of its pieces) and its fields: an upstream repeats its head
# answer after answer (the Date changes once a second), so most answers cost one list compare.
_last: tuple[list[bytes], list[tuple[bytes, bytes]]] = ([], [])


def response_fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The flat ``name, ": ", value, CRLF`` pieces of a response head as HTTP/2 fields:
    lowercase names, no connection-specific field (RFC 9113 8.2.2). A new list each call (the
    caller extends it)."""
    global _last
    last = _last
    if last[0] == lines:
        return last[1][:]
    out = _convert(lines)
    _last = (lines[:], out[:])
    return out


def _convert(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    names = _H2_NAMES
    for i in range(0, len(lines), 4):
        raw = lines[i]
        name = names.get(raw)
        if name is None:
            name = raw.lower()
            if name in CONNECTION_SPECIFIC:
                name = b""
            if len(names) < _H2_NAMES_MAX:
                names[raw] = name
        if name:
            out.append((name, lines[i + 2]))
    return out


def pairs_fields(pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Header pairs (a local answer, trailers) as HTTP/2 fields."""
    out: list[tuple[bytes, bytes]] = []
    for k, v in pairs:
        name = k.lower()
        if name not in CONNECTION_SPECIFIC:
            out.append((name, v))
    return out


def split_lines(block: bytes) -> list[bytes]:
    """``Name: value\\r\\n`` lines (one or several) as flat head pieces."""
    out: list[bytes] = []
    for line in block.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            out += (name, b": ", value.strip(), b"\r\n")
    return out
