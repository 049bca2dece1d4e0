"""The ``protos`` resource compiled: descriptor pools, their services' methods, message classes.

A proto's ``content`` is either ``.proto`` source or, as APISIX also accepts, a base64
``FileDescriptorSet`` (``protoc --include_imports --descriptor_set_out``). Source is compiled by
the protoc that grpcio-tools ships, run as a subprocess on a temporary directory: its errors
come back as text on stderr (the Admin API's ``invalid content: ...``), and a crash of the
compiler cannot take the gateway with it. The well-known types (``google/protobuf/*.proto``)
are importable from grpc_tools' bundled include directory.

Compiling is work done when a proto is written or loaded, never on the request path: the
supervisor compiles to check an item, each worker's Compiler once per proto version. A process
keeps the descriptor sets of the last contents it compiled, so the checks and the Compiler of
one process run protoc once per content.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, MethodDescriptor
from google.protobuf.message import DecodeError

from tollway.errors import ConfigError

_FILE = "content.proto"  # what protoc's messages name (APISIX: "filename for loaded")
_PROTOC_TIMEOUT = 30.0
_CACHE_SIZE = 64
_LOG_LINE = re.compile(r"^(WARNING: All log messages|[IWEF]\d{4} )")
_sets: OrderedDict[bytes, bytes] = OrderedDict()  # sha256(content) -> FileDescriptorSet
_sets_lock = threading.Lock()  # the Admin API compiles in a thread, the Store's checks do not


def _include_dir() -> str:
    import grpc_tools  # only its data directory (the well-known .proto files) is used

    return os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")


def _protoc(source: str) -> bytes:
    """``.proto`` source -> a serialized FileDescriptorSet (imports included), or ConfigError
    with protoc's own messages (warnings left out)."""
    with tempfile.TemporaryDirectory(prefix="tollway-proto-") as tmp:
        src = os.path.join(tmp, _FILE)
        out = os.path.join(tmp, "set.pb")
        with open(src, "w", encoding="utf-8") as f:
            f.write(source)
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{tmp}",
            f"-I{_include_dir()}",
            "--include_imports",
            f"--descriptor_set_out={out}",
            _FILE,
        ]
        try:
            done = subprocess.run(
                cmd, cwd=tmp, capture_output=True, timeout=_PROTOC_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            raise ConfigError("invalid content: protoc took too long") from None
        if done.returncode != 0 or not os.path.exists(out):
            text = done.stderr.decode("utf-8", "replace").replace(tmp + os.sep, "")
            raise ConfigError("invalid content: " + _errors(text))
        with open(out, "rb") as f:
            return f.read()


def _errors(stderr: str) -> str:
    """protoc's error lines (``content.proto:LINE:COL: what``), without its warnings and the
    log lines of the libraries under it."""
    lines = [ln.strip() for ln in stderr.splitlines()]
    found = [ln for ln in lines if ln.startswith(_FILE) and ": warning:" not in ln]
    return "; ".join(found or [ln for ln in lines if ln and not _LOG_LINE.match(ln)][-1:]) or (
        "protoc failed"
    )


def _descriptor_form(content: str) -> bytes | None:
    """APISIX's binary form: base64 of a FileDescriptorSet with at least one file."""
    text = "".join(content.split())
    if not text or len(text) % 4 == 1:
        return None
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    fds = descriptor_pb2.FileDescriptorSet()
    try:
        fds.ParseFromString(raw)
    except DecodeError:
        return None
    if not fds.file or not all(f.name for f in fds.file):
        return None
    return raw


def descriptor_set(content: str) -> bytes:
    """The FileDescriptorSet of a proto's content (cached per content in this process)."""
    key = hashlib.sha256(content.encode("utf-8", "surrogatepass")).digest()
    with _sets_lock:
        hit = _sets.get(key)
        if hit is not None:
            _sets.move_to_end(key)
            return hit
    raw = _descriptor_form(content)
    if raw is None:
        raw = _protoc(content)
    with _sets_lock:
        _sets[key] = raw
        while len(_sets) > _CACHE_SIZE:
            _sets.popitem(last=False)
    return raw


def check_content(content: str) -> None:
    """ConfigError ``invalid content: ...`` unless ``content`` compiles (APISIX admin/proto.lua:
    a proto is compiled when it is written)."""
    compile_proto(content)


@dataclass(frozen=True, slots=True)
class GrpcMethod:
    """One RPC: its HTTP/2 path, and the classes of its input and output messages."""

    path: str  # "/package.Service/Method"
    input: type[Any]
    output: type[Any]
    server_streaming: bool
    client_streaming: bool


class CompiledProto:
    """A proto's descriptor pool, its services' methods by (full service name, method name) and
    message classes by full name. Built once per proto version; shared by every route."""

    __slots__ = ("methods", "pool")

    def __init__(self, fds: descriptor_pb2.FileDescriptorSet) -> None:
        pool = descriptor_pool.DescriptorPool()
        _add_files(pool, list(fds.file))
        self.pool = pool
        self.methods: dict[tuple[str, str], GrpcMethod] = {}
        for f in fds.file:
            fd = pool.FindFileByName(f.name)
            for service in fd.services_by_name.values():
                for m in service.methods:
                    self.methods[(service.full_name, m.name)] = _method(m)

    def method(self, service: str, method: str) -> GrpcMethod | None:
        return self.methods.get((service, method))

    def message_class(self, full_name: str) -> type[Any] | None:
        """The class of a message type of this proto (None: no such type)."""
        try:
            desc = self.pool.FindMessageTypeByName(full_name)
        except KeyError:
            return None
        return _class(desc)


def compile_proto(content: str) -> CompiledProto:
    """``content`` -> CompiledProto, or ConfigError ``invalid content: ...``."""
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(descriptor_set(content))
    try:
        return CompiledProto(fds)
    except (TypeError, KeyError, ValueError) as e:  # a descriptor set that does not link
        raise ConfigError(f"invalid content: {e}") from None


def _method(m: MethodDescriptor) -> GrpcMethod:
    return GrpcMethod(
        f"/{m.containing_service.full_name}/{m.name}",
        _class(m.input_type),
        _class(m.output_type),
        bool(m.server_streaming),
        bool(m.client_streaming),
    )


def _class(desc: Descriptor) -> type[Any]:
    cls: type[Any] = message_factory.GetMessageClass(desc)
    return cls


def _add_files(pool: descriptor_pool.DescriptorPool, files: list[Any]) -> None:
    """Add the files dependencies first; a well-known type a descriptor set leaves out
    (``protoc`` without ``--include_imports``) comes from protobuf's own copy."""
    by_name = {f.name: f for f in files}
    added: set[str] = set()

    def add(name: str) -> None:
        if name in added:
            return
        added.add(name)
        f = by_name.get(name)
        if f is None:
            f = _well_known(name)
        for dep in f.dependency:
            add(dep)
        pool.Add(f)

    for f in files:
        add(f.name)


def _well_known(name: str) -> descriptor_pb2.FileDescriptorProto:
    if name.startswith("google/protobuf/"):
        # importing the well-known modules registers them in the default pool
        from google.protobuf import (  # noqa: F401
            api_pb2,
            duration_pb2,
            empty_pb2,
            field_mask_pb2,
            struct_pb2,
            timestamp_pb2,
            type_pb2,
            wrappers_pb2,
        )

        try:
            fd = descriptor_pool.Default().FindFileByName(name)
        except KeyError:
            pass
        else:
            proto = descriptor_pb2.FileDescriptorProto()
            fd.CopyToProto(proto)
            return proto
    raise KeyError(f"{name} is imported but not in the descriptor set")


def _status_class() -> type[Any]:
    """``google.rpc.Status`` (code, message, repeated Any details): what a gRPC server puts,
    serialized, in ``grpc-status-details-bin`` (APISIX decodes it as its ErrorStatus)."""
    f = descriptor_pb2.FileDescriptorProto(
        name="tollway/grpc_status.proto",
        package="google.rpc",
        syntax="proto3",
        dependency=["google/protobuf/any.proto"],
    )
    m = f.message_type.add(name="Status")
    fdp = descriptor_pb2.FieldDescriptorProto
    m.field.add(name="code", number=1, type=fdp.TYPE_INT32, label=fdp.LABEL_OPTIONAL)
    m.field.add(name="message", number=2, type=fdp.TYPE_STRING, label=fdp.LABEL_OPTIONAL)
    m.field.add(
        name="details",
        number=3,
        type=fdp.TYPE_MESSAGE,
        label=fdp.LABEL_REPEATED,
        type_name=".google.protobuf.Any",
    )
    anyfile = descriptor_pb2.FileDescriptorProto()
    any_pb2.DESCRIPTOR.CopyToProto(anyfile)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(anyfile)
    pool.Add(f)
    return _class(pool.FindMessageTypeByName("google.rpc.Status"))


STATUS = _status_class()
