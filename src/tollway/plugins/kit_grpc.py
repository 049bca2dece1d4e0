"""The plugin kit for gRPC: the running config's compiled protos, gRPC message framing and the
gRPC status codes.

A proto (``/apisix/admin/protos/{id}``) is compiled once per version by the worker's Compiler;
``find_proto`` hands a plugin the one of the runtime its request started with.
"""

from __future__ import annotations

import struct
from typing import Any

from tollway.plugins.kit import RequestContext
from tollway.protos import STATUS, CompiledProto, GrpcMethod

__all__ = [
    "GRPC_HTTP_STATUS",
    "STATUS",
    "CompiledProto",
    "GrpcMethod",
    "find_proto",
    "frame",
    "unframe",
]

# gRPC status code -> HTTP status, as APISIX's grpc-transcode maps them (an unknown code: 599).
GRPC_HTTP_STATUS = {
    1: 499,  # CANCELLED
    2: 500,  # UNKNOWN
    3: 400,  # INVALID_ARGUMENT
    4: 504,  # DEADLINE_EXCEEDED
    5: 404,  # NOT_FOUND
    6: 409,  # ALREADY_EXISTS
    7: 403,  # PERMISSION_DENIED
    8: 429,  # RESOURCE_EXHAUSTED
    9: 400,  # FAILED_PRECONDITION
    10: 409,  # ABORTED
    11: 400,  # OUT_OF_RANGE
    12: 501,  # UNIMPLEMENTED
    13: 500,  # INTERNAL
    14: 503,  # UNAVAILABLE
    15: 500,  # DATA_LOSS
    16: 401,  # UNAUTHENTICATED
}

_PREFIX = struct.Struct(">BI")


def find_proto(ctx: RequestContext, proto_id: str) -> CompiledProto | None:
    """The proto ``proto_id`` of the runtime this request started with (None: no such proto)."""
    source: Any = ctx.upstream_source
    find = getattr(source, "proto_by_id", None)
    if find is None:
        return None
    found: CompiledProto | None = find(proto_id)
    return found


def frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message, uncompressed (gRPC over HTTP/2: a 0 flag byte and a
    4-byte big-endian length)."""
    return _PREFIX.pack(0, len(message)) + message


def unframe(data: bytes) -> list[bytes] | None:
    """The messages of a gRPC body; None when it is not whole length-prefixed messages or a
    message is compressed (no grpc-encoding is asked for, so none should be)."""
    out: list[bytes] = []
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 5:
            return None
        flag, size = _PREFIX.unpack_from(data, pos)
        pos += 5
        if flag != 0 or end - pos < size:
            return None
        out.append(data[pos : pos + size])
        pos += size
    return out
