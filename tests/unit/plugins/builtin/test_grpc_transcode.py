"""grpc-transcode: the request and response conversions with real protobuf descriptors."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from tests.unit.plugins.ctx import decode, make_ctx
from tollway.plugins.builtin.grpc_transcode import Conf, GrpcTranscode
from tollway.plugins.kit import RequestContext
from tollway.plugins.kit_grpc import frame, unframe
from tollway.protos import STATUS, CompiledProto, compile_proto

PROTO = """
syntax = "proto3";
package helloworld;
service Greeter {
  rpc SayHello (HelloRequest) returns (HelloReply) {}
  rpc Plus (PlusRequest) returns (PlusReply) {}
  rpc Many (HelloRequest) returns (stream HelloReply) {}
}
enum Gender { GENDER_UNKNOWN = 0; GENDER_MALE = 1; GENDER_FEMALE = 2; }
message Person { string name = 1; int32 age = 2; }
message HelloRequest {
  string name = 1;
  repeated string items = 2;
  Gender gender = 3;
  Person person = 4;
  bool loud = 5;
}
message HelloReply { string message = 1; repeated string items = 2; Gender gender = 3; }
message PlusRequest { int64 a = 1; int64 b = 2; }
message PlusReply { int64 result = 1; }
message ErrorDetail { int64 code = 1; string message = 2; string type = 3; }
"""
_PROTO: list[CompiledProto] = []


def proto() -> CompiledProto:
    if not _PROTO:
        _PROTO.append(compile_proto(PROTO))
    return _PROTO[0]


class Source:
    """The runtime as the kit sees it (``ctx.upstream_source``)."""

    def __init__(self, protos: dict[str, CompiledProto]) -> None:
        self.protos = protos

    def proto_by_id(self, proto_id: str) -> CompiledProto | None:
        return self.protos.get(proto_id)


def conf(**kw: Any) -> Conf:
    raw = {"proto_id": "1", "service": "helloworld.Greeter", "method": "SayHello", **kw}
    c: Conf = decode(Conf, raw)
    return c


def request(
    uri: str, method: str = "GET", body: bytes | None = None, ctype: str = "application/json"
) -> RequestContext:
    ctx = make_ctx(uri, method=method, headers={"content-type": ctype} if body else None)
    ctx.upstream_source = Source({"1": proto()})
    if body is not None:

        async def reader(limit: int) -> bytes | None:
            return body if len(body) <= limit else None

        ctx.body_reader = reader
    return ctx


def run_access(c: Conf, ctx: RequestContext) -> Any:
    res = GrpcTranscode().access(c, ctx)
    if res is not None and not isinstance(res, tuple):
        res = asyncio.run(res)
    return res


def sent(ctx: RequestContext, method: str = "SayHello", msg: str = "HelloRequest") -> Any:
    assert ctx.up_body is not None
    parts = unframe(ctx.up_body)
    assert parts is not None and len(parts) == 1
    cls = proto().message_class(f"helloworld.{msg}")
    assert cls is not None
    return cls.FromString(parts[0])


def test_get_query_args_become_the_input_message_of_a_grpc_post() -> None:
    ctx = request("/grpctest?name=world&items=a&items=b&gender=2&loud=true&other=x")
    assert run_access(conf(deadline=300), ctx) is None
    msg = sent(ctx)
    assert (msg.name, list(msg.items), msg.gender, msg.loud) == ("world", ["a", "b"], 2, True)
    assert ctx.up_method == "POST"
    assert ctx.up_uri == "/helloworld.Greeter/SayHello"  # the query is not passed on
    assert ctx.headers["content-type"] == "application/grpc"
    assert ctx.headers["te"] == "trailers"
    assert ctx.headers["grpc-timeout"] == "300m"
    assert ctx.up_body[:5] == b"\x00" + len(ctx.up_body[5:]).to_bytes(4, "big")


def test_post_json_body_with_nested_message_and_enum_name() -> None:
    body = json.dumps(
        {"name": "world", "person": {"name": "Joe", "age": 1}, "gender": "GENDER_MALE"}
    )
    ctx = request("/grpctest", "POST", body.encode())
    assert run_access(conf(), ctx) is None
    msg = sent(ctx)
    assert (msg.name, msg.person.name, msg.person.age, msg.gender) == ("world", "Joe", 1, 1)
    assert "grpc-timeout" not in ctx.headers  # deadline 0: none


def test_post_form_body_and_int64_strings() -> None:
    ctx = request("/p", "POST", b"a=1&b=2251799813685260", "application/x-www-form-urlencoded")
    assert run_access(conf(method="Plus"), ctx) is None
    msg = sent(ctx, "Plus", "PlusRequest")
    assert (msg.a, msg.b) == (1, 2251799813685260)


def test_post_body_that_is_no_json_object_nor_form_gives_no_arguments() -> None:
    # APISIX get_request_table: a POST falls back to its form arguments, never the query's
    ctx = request("/grpctest?name=q", "POST", b"[1, 2]")
    assert run_access(conf(), ctx) is None
    assert sent(ctx).name == ""
    ctx = request("/grpctest?name=q", "PUT", b"not json")
    assert run_access(conf(), ctx) is None
    assert sent(ctx).name == "q"  # other methods: the query


def test_data_that_does_not_fit_the_message_is_400() -> None:
    ctx = request("/p", "POST", json.dumps({"a": "not a number"}).encode())
    status, body = run_access(conf(method="Plus"), ctx)
    assert status == 400
    assert body["error_msg"].startswith("failed to encode request data to protobuf")
    assert ctx.up_body is None


def test_unknown_service_or_method_or_proto_is_503() -> None:
    status, body = run_access(conf(method="Nope"), request("/x?name=a"))
    assert (status, body) == (
        503,
        {"error_msg": "Undefined service method: helloworld.Greeter/Nope"},
    )
    status, _ = run_access(conf(service="helloworld.Other"), request("/x"))
    assert status == 503
    status, body = run_access(conf(proto_id="9"), request("/x"))
    assert (status, body) == (503, {"error_msg": "failed to find proto by id: 9"})


def respond(
    c: Conf,
    ctx: RequestContext,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
    trailers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[int, bytes]:
    """The response phases as the server runs them for a buffered body."""
    plugin = GrpcTranscode()
    assert plugin.needs_body_buffer(c)
    ctx.resp_status = 200
    ctx.resp_headers = [("content-type", "application/grpc"), *(headers or [])]
    plugin.header_filter(c, ctx)
    ctx.upstream_trailers = trailers
    out = plugin.body_filter(c, ctx, body, True)
    return ctx.resp_status, out


def reply(msg: str = "HelloReply", **fields: Any) -> bytes:
    cls = proto().message_class(f"helloworld.{msg}")
    assert cls is not None
    return frame(cls(**fields).SerializeToString())


OK = [(b"grpc-status", b"0"), (b"grpc-message", b"")]


def test_reply_becomes_json_with_default_values_and_enum_names() -> None:
    c = conf()
    ctx = request("/x?name=a")
    run_access(c, ctx)
    status, out = respond(c, ctx, reply(message="Hello a"), trailers=OK)
    assert status == 200
    assert json.loads(out) == {"message": "Hello a", "items": [], "gender": "GENDER_UNKNOWN"}
    assert ctx.get_response_header("content-type") == "application/json"


def test_pb_option_enum_as_value_and_no_default_values() -> None:
    c = conf(pb_option=["enum_as_value", "no_default_values"])
    ctx = request("/x?name=a")
    run_access(c, ctx)
    _, out = respond(c, ctx, reply(message="m", gender=2), trailers=OK)
    assert json.loads(out) == {"message": "m", "gender": 2}


@pytest.mark.parametrize(
    ("option", "small", "large"),
    [
        ("int64_as_number", 3, 2**60),
        ("int64_as_string", 3, f"#{2**60}"),
        ("int64_as_hexstring", 3, f"#0x{2**60:x}"),
    ],
)
def test_pb_option_int64(option: str, small: Any, large: Any) -> None:
    c = conf(method="Plus", pb_option=[option])
    for value, expected in ((3, small), (2**60, large)):
        ctx = request("/x?a=1&b=2")
        run_access(c, ctx)
        _, out = respond(c, ctx, reply("PlusReply", result=value), trailers=OK)
        assert json.loads(out) == {"result": expected}


def test_server_streaming_messages_become_an_array() -> None:
    c = conf(method="Many")
    ctx = request("/x?name=a")
    run_access(c, ctx)
    body = reply(message="1") + reply(message="2")
    _, out = respond(c, ctx, body, trailers=OK)
    assert [m["message"] for m in json.loads(out)] == ["1", "2"]


def test_undecodable_answer_says_so() -> None:
    c = conf()
    ctx = request("/x?name=a")
    run_access(c, ctx)
    _, out = respond(c, ctx, b"\x00\x00\x00\x00\x09garbage", trailers=OK)
    assert out == b"failed to decode response data by protobuf"


def details(detail: bytes) -> str:
    st = STATUS(code=14, message="Out of service")
    st.details.add(type_url="type.googleapis.com/helloworld.ErrorDetail", value=detail)
    return base64.b64encode(st.SerializeToString()).decode().rstrip("=")


def test_trailers_only_error_maps_the_status_and_keeps_the_body_empty() -> None:
    c = conf()
    ctx = request("/x?name=a")
    run_access(c, ctx)
    hdrs = [("grpc-status", "14"), ("grpc-message", "Out of service")]
    status, out = respond(c, ctx, b"", headers=hdrs)
    assert (status, out) == (503, b"")


@pytest.mark.parametrize(("code", "http"), [("4", 504), ("5", 404), ("16", 401), ("99", 599)])
def test_grpc_status_in_trailers_maps_to_http_status(code: str, http: int) -> None:
    c = conf()
    ctx = request("/x?name=a")
    run_access(c, ctx)
    status, out = respond(c, ctx, b"", trailers=[(b"grpc-status", code.encode())])
    assert (status, out) == (http, b"")


def test_show_status_in_body_decodes_details_with_status_detail_type() -> None:
    cls = proto().message_class("helloworld.ErrorDetail")
    assert cls is not None
    detail = cls(code=1, message="The server is out of service", type="service")
    hdrs = [("grpc-status", "14"), ("grpc-status-details-bin", details(detail.SerializeToString()))]
    raw = conf(show_status_in_body=True)
    ctx = request("/x?name=a")
    run_access(raw, ctx)
    status, out = respond(raw, ctx, b"", headers=hdrs)
    assert status == 503
    error = json.loads(out)["error"]
    assert (error["code"], error["message"]) == (14, "Out of service")
    assert error["details"][0]["type_url"] == "type.googleapis.com/helloworld.ErrorDetail"
    assert base64.b64decode(error["details"][0]["value"]) == detail.SerializeToString()

    typed = conf(show_status_in_body=True, status_detail_type="helloworld.ErrorDetail")
    ctx = request("/x?name=a")
    run_access(typed, ctx)
    _, out = respond(typed, ctx, b"", headers=hdrs)
    assert json.loads(out)["error"]["details"] == [
        {"code": 1, "message": "The server is out of service", "type": "service"}
    ]

    wrong = conf(show_status_in_body=True, status_detail_type="helloworld.error")
    ctx = request("/x?name=a")
    run_access(wrong, ctx)
    status, out = respond(wrong, ctx, b"", headers=hdrs)
    assert (status, out) == (
        503,
        b"failed to call pb.decode to decode details in grpc-status-details-bin",
    )


def test_a_non_grpc_error_answer_is_left_alone() -> None:
    c = conf()
    ctx = request("/x?name=a")
    run_access(c, ctx)
    plugin = GrpcTranscode()
    ctx.resp_status = 502
    ctx.resp_headers = [("content-type", "text/html")]
    plugin.header_filter(c, ctx)
    assert plugin.body_filter(c, ctx, b"<html>", True) == b"<html>"
    assert ctx.get_response_header("content-type") == "text/html"


def test_schema_requires_proto_id_service_method() -> None:
    import msgspec

    with pytest.raises(msgspec.ValidationError, match="method"):
        decode(Conf, {"proto_id": "1", "service": "s"})
    with pytest.raises(msgspec.ValidationError):
        decode(Conf, {"proto_id": "1", "service": "s", "method": "m", "pb_option": ["bogus"]})
    assert conf(extra=1).pb_option == [
        "enum_as_name",
        "int64_as_number",
        "auto_default_values",
        "disable_hooks",
    ]
