"""A large range read through etcd's native gRPC API (``etcdserverpb.KV/Range``).

Everything else Tollway asks etcd goes through its HTTP/JSON gateway (``tollway.config.etcd``),
as APISIX's lua-resty-etcd does. A full load of a large config is the exception (issue #17): the
gateway re-encodes every key-value as JSON with base64 in etcd, measured at ~35 µs a key on the
bench VM (100k routes: 3.5-6 s), where the same range over gRPC took 0.36 s. etcd serves both
on the same port (cmux), so this reaches the endpoint that just answered the gateway.

The messages are the few fields of etcd's ``rpc.proto`` / ``kv.proto`` this read needs (same
field numbers; protobuf skips the others), described here instead of generated code. The calls
are blocking (grpcio's synchronous API) and run in a thread, off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

T = TypeVar("T")
_F = descriptor_pb2.FieldDescriptorProto
_FIELDS: dict[str, list[tuple[str, int, int, str]]] = {
    "ResponseHeader": [("revision", 3, _F.TYPE_INT64, "")],
    "KeyValue": [
        ("key", 1, _F.TYPE_BYTES, ""),
        ("create_revision", 2, _F.TYPE_INT64, ""),
        ("mod_revision", 3, _F.TYPE_INT64, ""),
        ("version", 4, _F.TYPE_INT64, ""),
        ("value", 5, _F.TYPE_BYTES, ""),
        ("lease", 6, _F.TYPE_INT64, ""),
    ],
    "RangeRequest": [
        ("key", 1, _F.TYPE_BYTES, ""),
        ("range_end", 2, _F.TYPE_BYTES, ""),
        ("limit", 3, _F.TYPE_INT64, ""),
        ("revision", 4, _F.TYPE_INT64, ""),
    ],
    "RangeResponse": [
        ("header", 1, _F.TYPE_MESSAGE, ".tollway.etcd.ResponseHeader"),
        ("kvs", 2, _F.TYPE_MESSAGE, ".tollway.etcd.KeyValue"),
        ("more", 3, _F.TYPE_BOOL, ""),
        ("count", 4, _F.TYPE_INT64, ""),
    ],
}


def _messages() -> dict[str, Any]:
    proto = descriptor_pb2.FileDescriptorProto(
        name="tollway_etcd_range.proto", package="tollway.etcd", syntax="proto3"
    )
    for name, fields in _FIELDS.items():
        msg = proto.message_type.add(name=name)
        for fname, number, typ, type_name in fields:
            repeated = fname == "kvs"
            label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
            field = msg.field.add(name=fname, number=number, type=typ, label=label)
            if type_name:
                field.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tollway.etcd.{name}"))
        for name in ("RangeRequest", "RangeResponse")
    }


_MSG = _messages()
PAGE = 10_000  # keys per gRPC call: ~3 MB each for routes of ~300 bytes


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def channel(endpoint: str, tls: Any) -> grpc.Channel:
    """A channel to ``endpoint`` (``http(s)://host:port``); ``tls`` an ``EtcdTLS`` or None.
    The caller checked that a TLS endpoint verifies its peer (gRPC always does)."""
    target = urlsplit(endpoint).netloc
    options = [("grpc.max_receive_message_length", -1)]
    if not endpoint.startswith("https:"):
        return grpc.insecure_channel(target, options=options)
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca) if tls is not None else None,
        private_key=_read(tls.key) if tls is not None else None,
        certificate_chain=_read(tls.cert) if tls is not None else None,
    )
    return grpc.secure_channel(target, creds, options=options)


def range_rest(
    endpoint: str,
    tls: Any,
    token: str | None,
    span: tuple[bytes, bytes, int],
    timeout: float,
    make: Callable[[bytes, bytes, int, int, int, int], T],
) -> list[T]:
    """Every key in ``[start, end)`` at ``revision`` (``span``), in key order, each made into
    ``make(key, value, create_revision, mod_revision, version, lease)``. Raises grpc.RpcError
    (or OSError for a TLS file) on any failure: the caller reads over the gateway instead."""
    start, end, revision = span
    metadata = [("token", token)] if token else None
    out: list[T] = []
    with channel(endpoint, tls) as ch:
        call = ch.unary_unary(
            "/etcdserverpb.KV/Range",
            request_serializer=_MSG["RangeRequest"].SerializeToString,
            response_deserializer=_MSG["RangeResponse"].FromString,
        )
        while True:
            req = _MSG["RangeRequest"](key=start, range_end=end, limit=PAGE, revision=revision)
            resp = call(req, timeout=timeout, metadata=metadata)
            out.extend(
                make(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
                for kv in resp.kvs
            )
            if not resp.more or not resp.kvs:
                return out
            start = resp.kvs[-1].key + b"\x00"
