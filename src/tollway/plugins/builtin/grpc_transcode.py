"""grpc-transcode (APISIX priority 506): HTTP/JSON in, gRPC to the upstream, JSON back.

The request's JSON body (POST/PUT/PATCH with a JSON content type), form body (POST) or query
arguments become the method's input message, sent as one gRPC message to
``POST /{package.Service}/{Method}`` (``content-type: application/grpc``, ``te: trailers``,
``grpc-timeout`` from ``deadline``). The answer's messages become JSON; a non-zero
``grpc-status`` (a header of a trailers-only answer, or a trailer) becomes the HTTP status of
APISIX's table (``kit_grpc.GRPC_HTTP_STATUS``), with ``show_status_in_body`` the decoded
``grpc-status-details-bin`` as ``{"error": {...}}``.

Protobuf's own ``json_format`` does the conversions; ``pb_option`` maps onto it: enums as names
or numbers, default values printed or not, 64-bit integers as numbers or lua-protobuf's
``#``-prefixed strings. The proto is compiled once per version by the runtime and found per
request by id; the options once per conf.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

import msgspec
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, EncodeError, Message
from msgspec import Meta

from tollway.plugins.kit import PerConf, Plugin, RequestContext
from tollway.plugins.kit_grpc import (
    GRPC_HTTP_STATUS,
    STATUS,
    CompiledProto,
    GrpcMethod,
    find_proto,
    frame,
    unframe,
)
from tollway.plugins.kit_upstream import UpstreamId

PbOption = Literal[
    "enum_as_name",
    "enum_as_value",
    "int64_as_number",
    "int64_as_string",
    "int64_as_hexstring",
    "auto_default_values",
    "no_default_values",
    "use_default_values",
    "use_default_metatable",
    "enable_hooks",
    "disable_hooks",
]
_DEFAULT_OPTIONS = ["enum_as_name", "int64_as_number", "auto_default_values", "disable_hooks"]
_BODY_LIMIT = 8 * 1024 * 1024  # request bodies read to transcode
_STATE = "grpc-transcode"


def _default_options() -> list[PbOption]:
    return list(_DEFAULT_OPTIONS)  # type: ignore[arg-type]


class Conf(msgspec.Struct, kw_only=True):
    """APISIX's schema (additionalProperties: true, so unknown fields are accepted)."""

    proto_id: UpstreamId
    service: str
    method: str
    deadline: float = 0
    pb_option: Annotated[list[PbOption], Meta(min_length=1)] = msgspec.field(
        default_factory=_default_options
    )
    show_status_in_body: bool = False
    status_detail_type: str | None = None
    max_resp_body_size: Annotated[int, Meta(ge=1)] = 67108864


_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_EXACT = 2**53  # beyond this a double (a Lua number) is not exact


def _int64_number(v: str) -> Any:
    return int(v)


def _int64_string(v: str) -> Any:
    n = int(v)
    return n if -_EXACT < n < _EXACT else f"#{n}"  # lua-protobuf's int64_as_string


def _int64_hexstring(v: str) -> Any:
    n = int(v)
    if -_EXACT < n < _EXACT:
        return n
    return f"#-0x{-n:x}" if n < 0 else f"#0x{n:x}"  # lua-protobuf's int64_as_hexstring


class Compiled:
    """A conf's options, once: how messages become JSON, the grpc-timeout header."""

    __slots__ = ("enum_numbers", "int64", "proto_id", "timeout", "with_defaults")

    def __init__(self, conf: Conf) -> None:
        opts = conf.pb_option
        self.proto_id = str(conf.proto_id)
        # later options win over earlier ones of the same kind (pb.option is called in order)
        self.enum_numbers = _last(opts, ("enum_as_name", "enum_as_value")) == "enum_as_value"
        self.with_defaults = _last(
            opts,
            ("auto_default_values", "no_default_values", "use_default_values"),
            "use_default_metatable",
        ) in ("auto_default_values", "use_default_values")
        int64 = _last(opts, ("int64_as_number", "int64_as_string", "int64_as_hexstring"))
        self.int64: Callable[[str], Any] = {
            "int64_as_string": _int64_string,
            "int64_as_hexstring": _int64_hexstring,
        }.get(int64 or "", _int64_number)
        # APISIX: grpc-timeout "<deadline>m" when deadline > 0 (milliseconds)
        self.timeout = f"{math.ceil(conf.deadline)}m" if conf.deadline > 0 else None

    def to_json(self, msg: Message) -> Any:
        data = json_format.MessageToDict(
            msg,
            always_print_fields_with_no_presence=self.with_defaults,
            preserving_proto_field_name=True,  # lua-protobuf keeps the proto's field names
            use_integers_for_enums=self.enum_numbers,
        )
        desc: Any = msg.DESCRIPTOR
        if _has_int64(desc):
            _convert_int64(desc, data, self.int64)
        return data


def _last(opts: list[PbOption], kinds: tuple[str, ...], *also: str) -> str | None:
    found = None
    for o in opts:
        if o in kinds or o in also:
            found = o
    return found


_compiled = PerConf(Compiled)


@lru_cache(maxsize=4096)  # per message type of the protos in use
def _has_int64(desc: Descriptor) -> bool:
    """A 64-bit integer field anywhere below ``desc`` (json_format prints them as strings)."""
    return _int64_below(desc, set())


def _int64_below(desc: Descriptor, seen: set[str]) -> bool:
    if desc.full_name in seen or desc.full_name.startswith("google.protobuf."):
        return False
    seen.add(desc.full_name)
    for f in desc.fields:
        if f.type in _INT64 or (f.message_type is not None and _int64_below(f.message_type, seen)):
            return True
    return False


def _convert_int64(desc: Descriptor, obj: Any, conv: Callable[[str], Any]) -> None:
    if not isinstance(obj, dict) or desc.full_name.startswith("google.protobuf."):
        return
    for f in desc.fields:
        value = obj.get(f.name)
        if value is None:
            continue
        mt = f.message_type
        if mt is not None and mt.GetOptions().map_entry:
            vf = mt.fields_by_name["value"]
            if vf.type in _INT64:
                obj[f.name] = {k: conv(v) for k, v in value.items()}
            elif vf.message_type is not None:
                for v in value.values():
                    _convert_int64(vf.message_type, v, conv)
        elif mt is not None:
            for v in value if isinstance(value, list) else (value,):
                _convert_int64(mt, v, conv)
        elif f.type in _INT64:
            obj[f.name] = [conv(v) for v in value] if isinstance(value, list) else conv(value)


# -- the request ------------------------------------------------------------------------

_INTS = frozenset(
    {
        FieldDescriptor.CPPTYPE_INT32,
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT32,
        FieldDescriptor.CPPTYPE_UINT64,
    }
)
_FLOATS = frozenset({FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE})


def _typed(desc: Descriptor, args: dict[str, list[str]]) -> dict[str, Any]:
    """Query or form arguments (all text) as JSON values of the message's fields, as APISIX
    reads numbers with ``tonumber``; arguments the message lacks are left out."""
    out: dict[str, Any] = {}
    for name, values in args.items():
        f = desc.fields_by_name.get(name)
        if f is None or f.message_type is not None:
            continue
        conv = [_scalar(f, v) for v in values]
        out[name] = conv if _repeated(f) else conv[0]
    return out


def _repeated(f: FieldDescriptor) -> bool:
    return bool(f.is_repeated)


def _scalar(f: FieldDescriptor, v: str) -> Any:
    t = f.cpp_type
    try:
        if t in _INTS:
            return int(v)
        if t in _FLOATS:
            return float(v)
    except ValueError:
        return v  # json_format names the field and the value
    if t == FieldDescriptor.CPPTYPE_BOOL:
        return v.lower() in ("true", "1")
    if t == FieldDescriptor.CPPTYPE_ENUM and v.lstrip("-").isdigit():
        return int(v)
    return v


def _args(query: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        out.setdefault(k, []).append(v)
    return out


def encode_request(method: GrpcMethod, source: dict[str, Any] | str) -> bytes:
    """The request's data (a decoded JSON object, or query/form text) -> one framed message.
    Raises ValueError or json_format.Error when it does not fit the message."""
    msg = method.input()
    data = source if isinstance(source, dict) else _typed(msg.DESCRIPTOR, _args(source))
    json_format.ParseDict(data, msg, ignore_unknown_fields=True)
    try:
        return frame(msg.SerializeToString())
    except EncodeError as e:  # proto2 required fields missing
        raise ValueError(str(e)) from None


# -- the response -----------------------------------------------------------------------


def decode_response(comp: Compiled, method: GrpcMethod, body: bytes) -> bytes | None:
    """The upstream's gRPC messages -> JSON: the message of a unary method, an array of them
    for a server-streaming one. None when they do not decode."""
    parts = unframe(body)
    if parts is None or (not method.server_streaming and len(parts) != 1):
        return None
    out = []
    for part in parts:
        msg = method.output()
        try:
            msg.ParseFromString(part)
        except DecodeError:
            return None
        out.append(comp.to_json(msg))
    value = out if method.server_streaming else out[0]
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def status_body(
    comp: Compiled, proto: CompiledProto, details_bin: str, detail_type: str | None
) -> bytes:
    """``grpc-status-details-bin`` (base64 of a google.rpc.Status) -> ``{"error": {...}}``, its
    details decoded with ``status_detail_type`` when given (APISIX's messages when it fails)."""
    try:
        raw = base64.b64decode(details_bin + "=" * (-len(details_bin) % 4), validate=True)
    except (binascii.Error, ValueError):
        return b"grpc-status-details-bin is not base64 format"
    status = STATUS()
    try:
        status.ParseFromString(raw)
    except DecodeError:
        return b"failed to call pb.decode to decode grpc-status-details-bin"
    details: list[Any] = []
    cls = proto.message_class(detail_type) if detail_type else None
    if detail_type and cls is None:
        return b"failed to call pb.decode to decode details in grpc-status-details-bin"
    for d in status.details:
        if cls is None:
            details.append({"type_url": d.type_url, "value": base64.b64encode(d.value).decode()})
            continue
        msg = cls()
        try:
            msg.ParseFromString(d.value)
        except DecodeError:
            return b"failed to call pb.decode to decode details in grpc-status-details-bin"
        details.append(comp.to_json(msg))
    error = {"code": status.code, "message": status.message, "details": details}
    return json.dumps({"error": error}, ensure_ascii=False, separators=(",", ":")).encode()


def http_status(grpc_status: str) -> int:
    try:
        return GRPC_HTTP_STATUS.get(int(grpc_status), 599)
    except ValueError:
        return 599


class _State:
    """What access found, for the response phases of the same request."""

    __slots__ = ("method", "proto", "skip")

    def __init__(self, proto: CompiledProto, method: GrpcMethod) -> None:
        self.proto = proto
        self.method = method
        self.skip = False


def _grpc_field(ctx: RequestContext, name: str) -> str | None:
    """A gRPC status field: a header (trailers-only answers) or a trailer."""
    value = ctx.get_response_header(name)
    return value if value is not None else ctx.get_upstream_trailer(name)


class GrpcTranscode(Plugin):
    name = "grpc-transcode"
    priority = 506
    schema = Conf

    def access(self, conf: Conf, ctx: RequestContext) -> Any:
        comp = _compiled(conf)
        proto = find_proto(ctx, comp.proto_id)
        if proto is None:
            # APISIX logs and proxies untranscoded; Tollway fails closed
            return 503, {"error_msg": f"failed to find proto by id: {comp.proto_id}"}
        method = proto.method(conf.service, conf.method)
        if method is None:
            return 503, {"error_msg": f"Undefined service method: {conf.service}/{conf.method}"}
        if ctx.method in ("POST", "PUT", "PATCH") and ctx.body_reader is not None:
            return self._with_body(comp, proto, method, ctx)
        return self._transcode(comp, proto, method, ctx, ctx.query)

    async def _with_body(
        self, comp: Compiled, proto: CompiledProto, method: GrpcMethod, ctx: RequestContext
    ) -> Any:
        body = await ctx.read_body(_BODY_LIMIT)
        if body is None:
            return 413, None
        ctype = (ctx.headers.get("content-type") or "").lower()
        # APISIX util.get_request_table: a JSON object body; else, for a POST, its form
        # arguments (none unless the body is a form); else the query arguments
        if "application/json" in ctype:
            try:
                data = json.loads(body) if body else None
            except ValueError:
                data = None
            if isinstance(data, dict):
                return self._transcode(comp, proto, method, ctx, data)
        source = ctx.query
        if ctx.method == "POST":
            form = "application/x-www-form-urlencoded" in ctype or not ctype
            source = body.decode("utf-8", "replace") if form else ""
        return self._transcode(comp, proto, method, ctx, source)

    def _transcode(
        self,
        comp: Compiled,
        proto: CompiledProto,
        method: GrpcMethod,
        ctx: RequestContext,
        source: dict[str, Any] | str,
    ) -> Any:
        try:
            framed = encode_request(method, source)
        except (ValueError, TypeError, json_format.Error) as e:
            return 400, {"error_msg": f"failed to encode request data to protobuf: {e}"}
        ctx.set_upstream_body(framed)
        ctx.set_upstream_method("POST")
        ctx.set_upstream_uri(method.path)  # the query goes too (APISIX set_uri_args({}))
        ctx.set_request_header("Content-Type", "application/grpc")
        ctx.set_request_header("TE", "trailers")
        if comp.timeout is not None:
            ctx.set_request_header("grpc-timeout", comp.timeout)
        if ctx.plugin_state is None:
            ctx.plugin_state = {}
        ctx.plugin_state[_STATE] = _State(proto, method)
        return None

    def needs_body_buffer(self, conf: Conf) -> bool:
        return True  # the messages, and the status a trailer may carry, come at the end

    def header_filter(self, conf: Conf, ctx: RequestContext) -> None:
        state = ctx.plugin_state.get(_STATE) if ctx.plugin_state else None
        if state is None:
            return
        if ctx.resp_status >= 300:  # not a gRPC answer (APISIX leaves it alone)
            state.skip = True
            return
        ctx.set_response_header("Content-Type", "application/json")
        ctx.set_response_header("Content-Length", None)
        grpc_status = ctx.get_response_header("grpc-status")
        if grpc_status is not None and grpc_status != "0":
            ctx.resp_status = http_status(grpc_status)

    def body_filter(self, conf: Conf, ctx: RequestContext, chunk: bytes, eof: bool) -> bytes:
        state = ctx.plugin_state.get(_STATE) if ctx.plugin_state else None
        if state is None or state.skip or not eof:
            return chunk
        if ctx.resp_status < 300:
            trailer = ctx.get_upstream_trailer("grpc-status")
            if trailer is not None and trailer != "0":
                ctx.resp_status = http_status(trailer)
        comp = _compiled(conf)
        if ctx.resp_status >= 300:
            details = _grpc_field(ctx, "grpc-status-details-bin")
            if not conf.show_status_in_body or details is None:
                return b""
            return status_body(comp, state.proto, details, conf.status_detail_type)
        # APISIX truncates a body past max_resp_body_size, which then does not decode
        out = None
        if len(chunk) <= conf.max_resp_body_size:
            out = decode_response(comp, state.method, chunk)
        return out if out is not None else b"failed to decode response data by protobuf"
