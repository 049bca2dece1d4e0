"""What the gRPC calls of one HTTP/2 client header list share (``grpc_attempt``'s fast path):
the client's ``grpc-timeout`` field and the upstream head last built from the list. An HTTP/2
client repeats its request's header list call after call, and its connection hands each call
the same list object, so these are computed once per list, not once per call."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tollway.httprules.grpc import SKIP_GRPC

if TYPE_CHECKING:
    from tollway.proxy.base import ExchangeBase

# Client header lists remembered (``SharedFields``): about one per HTTP/2 client connection.
MAX_FIELDS = 64


class SharedFields:
    """What the calls of one client header list share: an HTTP/2 client repeats its request's
    header list call after call, and its connection hands each of those calls the same list
    (``H2Protocol.last_request``; no exchange edits ``raw_headers``). Its ``grpc-timeout``
    field, and the upstream head last built from it (for the same pseudo-fields, skipped
    names, no header edits and no deadline), are then those of the last call: ~2 us a call."""

    __slots__ = ("head", "pseudo", "raw", "skip", "timeout")

    def __init__(self, raw: list[tuple[bytes, bytes]], timeout: bytes | None) -> None:
        self.raw = raw  # (kept alive while remembered: its id is not reused meanwhile)
        self.timeout = timeout
        self.pseudo: tuple[bytes, bytes, bytes, bytes] | None = None  # (None: no head yet)
        self.skip: frozenset[bytes] = SKIP_GRPC
        self.head: list[tuple[bytes, bytes]] = []


# id(raw_headers) -> its SharedFields (one worker, one event loop: no lock)
_known: dict[int, SharedFields] = {}


def fields_of(ex: ExchangeBase) -> SharedFields | None:
    """The shared part of an HTTP/2 client's call (None for an HTTP/1.1 client: a list per
    request, nothing shared)."""
    if not ex.proto.http2:
        return None
    raw = ex.raw_headers
    known = _known.get(id(raw))
    if known is not None and known.raw is raw:
        return known
    if len(_known) >= MAX_FIELDS:
        _known.clear()
    known = _known[id(raw)] = SharedFields(raw, grpc_timeout(ex))
    return known


def grpc_timeout(ex: ExchangeBase) -> bytes | None:
    """The client's ``grpc-timeout`` field, read from its header list (no header map made:
    HTTP/2 names are lowercase, RFC 9113 8.2.1; an HTTP/1.1 client's are compared so)."""
    h2 = ex.proto.http2
    found = None
    for k, v in ex.raw_headers:
        if (k if h2 else k.lower()) == b"grpc-timeout":
            if found is not None:
                return None  # repeated: malformed (joined with ", ", it parses as none)
            found = v
    return found
