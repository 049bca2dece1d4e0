"""gRPC over HTTP/2 rules (grpc/doc/PROTOCOL-HTTP2.md), pure: the request head sent to a gRPC
upstream, ``grpc-timeout``, and how a failed upstream attempt reads to a gRPC client.

APISIX proxies gRPC with nginx's grpc module (``location @grpc_pass``): the client's fields go
upstream minus the hop-by-hop ones, ``:authority`` is the upstream host (pass_host), ``TE:
trailers`` and ``Content-Type: application/grpc`` are set, and nothing else is added (no
X-Forwarded-*, which nginx's grpc module does not send unless configured).
"""

from __future__ import annotations

from urllib.parse import quote

from tollway.httprules.fields import HOP_BY_HOP

# gRPC status codes (grpc/doc/statuscodes.md) the gateway answers with itself.
CANCELLED = 1
UNKNOWN = 2
DEADLINE_EXCEEDED = 4
UNAVAILABLE = 14

# Client fields not copied to the stream: hop-by-hop ones (RFC 9113 8.2.2 forbids them in
# HTTP/2), Host (``:authority`` carries it), Content-Length (the stream's end delimits the body;
# a plugin may have changed it) and the fields set here.
SKIP_GRPC = HOP_BY_HOP | {b"host", b"content-length", b"te", b"content-type", b"keep-alive"}

_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_timeout(value: bytes | str | None) -> float | None:
    """``grpc-timeout`` in seconds: 1 to 8 ASCII digits and a unit (H M S m u n); None when
    absent or malformed (the call then has no deadline of its own)."""
    if not value:
        return None
    v = value.encode("latin-1") if isinstance(value, str) else value
    digits, unit = v[:-1], v[-1:]
    if not 1 <= len(digits) <= 8 or not digits.isdigit() or unit not in _UNITS:
        return None
    return int(digits) * _UNITS[unit]


def format_timeout(seconds: float) -> bytes:
    """A ``grpc-timeout`` value for ``seconds`` (at least 1 ms, at most 8 digits)."""
    ms = max(1, int(seconds * 1000))
    if ms < 100_000_000:
        return b"%dm" % ms
    return b"%dS" % min(int(seconds), 99_999_999)


def is_grpc(content_type: str | bytes | None) -> bool:
    """A gRPC (or gRPC-Web) request: ``application/grpc`` with an optional ``+format`` or
    ``-web...`` suffix; the client then reads errors from ``grpc-status``."""
    if not content_type:
        return False
    ct = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type
    return ct.lower().startswith("application/grpc")


def status_for(http_status: int) -> int:
    """The gRPC status of a failed attempt: a timeout is DEADLINE_EXCEEDED, a client that went
    away CANCELLED, anything else (refused, reset, no healthy node) UNAVAILABLE (as
    grpc/doc/http-grpc-status-mapping.md maps 502/503/504)."""
    if http_status == 504:
        return DEADLINE_EXCEEDED
    if http_status == 499:
        return CANCELLED
    return UNAVAILABLE


def message_value(message: str) -> bytes:
    """``grpc-message`` is percent-encoded UTF-8 (PROTOCOL-HTTP2.md, "Responses")."""
    return quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode("ascii")


def error_fields(code: int, message: str) -> list[tuple[bytes, bytes]]:
    """A trailers-only answer's fields (sent with HTTP status 200)."""
    return [
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"%d" % code),
        (b"grpc-message", message_value(message)),
    ]


def _plain_grpc(content_type: bytes) -> bool:
    """``application/grpc`` or ``application/grpc+format`` (not gRPC-Web)."""
    ct = content_type.lower()
    return ct == b"application/grpc" or ct.startswith((b"application/grpc+", b"application/grpc;"))


def request_fields(
    pseudo: tuple[bytes, bytes, bytes, bytes],
    raw: list[tuple[bytes, bytes]],
    skip: frozenset[bytes],
    edits: dict[bytes, bytes | None] | None,
    timeout: float | None,
) -> list[tuple[bytes, bytes]]:
    """The HEADERS of the upstream stream: ``pseudo`` (method, scheme, path, authority; gRPC
    calls are POST, and what the client sent is what nginx's grpc_pass sends), the client's
    fields (lowercase, RFC 9113 8.2.1) minus ``skip`` and the edited ones, the edits' final
    values (None: removed), then content-type, te and the call's remaining ``timeout``."""
    method, scheme, path, authority = pseudo
    out = [(b":method", method), (b":scheme", scheme), (b":path", path)]
    out.append((b":authority", authority))
    content_type = b"application/grpc"
    for k, v in raw:
        lk = k.lower()
        if lk in skip or lk == b"grpc-timeout" or (edits is not None and lk in edits):
            if lk == b"content-type" and _plain_grpc(v) and not (edits and lk in edits):
                content_type = v  # application/grpc+proto stays as it is
            continue
        out.append((lk, v))
    if edits:
        for lk, value in edits.items():
            if value is None or lk in skip:
                if lk == b"content-type" and value is not None and _plain_grpc(value):
                    content_type = value
                continue
            out.append((lk, value))
    out.append((b"content-type", content_type))
    out.append((b"te", b"trailers"))
    if timeout is not None:
        out.append((b"grpc-timeout", format_timeout(timeout)))
    return out
