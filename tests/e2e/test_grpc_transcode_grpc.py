"""grpc-transcode end to end: an HTTP/1.1 client, the real ``tollway`` process, a real etcd and
a real grpcio server (``scheme: grpc`` upstream), as in APISIX's docs and t/plugin tests (#14).

The server is APISIX's test ``helloworld.Greeter``, served by grpcio's generic handlers over the
message classes of the very proto the gateway is given.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests

from tests.support.etcd import EtcdServer
from tests.support.gateway import Gateway, free_port, wait_until
from tests.support.h2client import H2Client
from tollway.protos import STATUS, CompiledProto, compile_proto

KEY = "test-admin-key-grpc-transcode-e2e"
PROTO = """syntax = "proto3";
package helloworld;
service Greeter {
  rpc SayHello (HelloRequest) returns (HelloReply) {}
  rpc Plus (PlusRequest) returns (PlusReply) {}
  rpc Many (HelloRequest) returns (stream HelloReply) {}
  rpc GetErrResp (HelloRequest) returns (HelloReply) {}
}
enum Gender { GENDER_UNKNOWN = 0; GENDER_MALE = 1; GENDER_FEMALE = 2; }
message Person { string name = 1; int32 age = 2; }
message HelloRequest {
  string name = 1;
  repeated string items = 2;
  Gender gender = 3;
  Person person = 4;
  int32 delay_ms = 5;
}
message HelloReply { string message = 1; repeated string items = 2; Gender gender = 3; }
message PlusRequest { int64 a = 1; int64 b = 2; }
message PlusReply { int64 result = 1; }
message ErrorDetail { int64 code = 1; string message = 2; string type = 3; }
"""
# SayHello answers "Hi <name>" with this version: a proto update shows in the answer
PROTO_V2 = PROTO.replace("string message = 1;", "string greeting = 1;")


class Greeter:
    """A grpcio server for PROTO's service, in a thread pool."""

    def __init__(self, proto: CompiledProto) -> None:
        self.port = free_port()
        self.proto = proto
        self.timeouts: list[float | None] = []
        cls = {n: proto.message_class(f"helloworld.{n}") for n in _NAMES}
        self.cls = cls

        def unary(fn: Any, req: str, resp: str) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=cls[req].FromString,
                response_serializer=cls[resp].SerializeToString,
            )  # fmt: skip

        handlers = {
            "SayHello": unary(self.say_hello, "HelloRequest", "HelloReply"),
            "Plus": unary(self.plus, "PlusRequest", "PlusReply"),
            "GetErrResp": unary(self.err, "HelloRequest", "HelloReply"),
            "Many": grpc.unary_stream_rpc_method_handler(
                self.many, request_deserializer=cls["HelloRequest"].FromString,
                response_serializer=cls["HelloReply"].SerializeToString,
            ),
        }  # fmt: skip
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("helloworld.Greeter", handlers),)
        )
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")

    def say_hello(self, req: Any, context: grpc.ServicerContext) -> Any:
        self.timeouts.append(context.time_remaining())
        if req.delay_ms:
            time.sleep(req.delay_ms / 1000)
        return self.cls["HelloReply"](
            message=f"Hello {req.name}", items=list(req.items), gender=req.gender
        )

    def plus(self, req: Any, context: grpc.ServicerContext) -> Any:
        return self.cls["PlusReply"](result=req.a + req.b)

    def many(self, req: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        for i in range(3):
            yield self.cls["HelloReply"](message=f"{req.name}{i}")
            if req.name == "fail":  # a status in the trailers, after a message
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many")

    def err(self, req: Any, context: grpc.ServicerContext) -> Any:
        # APISIX's t/plugin/grpc-transcode3.t: UNAVAILABLE with a google.rpc.Status detail
        detail = self.cls["ErrorDetail"](
            code=1, message="The server is out of service", type="service"
        )
        st = STATUS(code=14, message="Out of service")
        st.details.add(
            type_url="type.googleapis.com/helloworld.ErrorDetail", value=detail.SerializeToString()
        )
        context.set_trailing_metadata((("grpc-status-details-bin", st.SerializeToString()),))
        context.abort(grpc.StatusCode.UNAVAILABLE, "Out of service")

    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Greeter:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(None)


_NAMES = ("HelloRequest", "HelloReply", "PlusRequest", "PlusReply", "ErrorDetail")


@pytest.fixture(scope="module")
def greeter() -> Iterator[Greeter]:
    with Greeter(compile_proto(PROTO)) as g:
        yield g


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, shared_etcd: EtcdServer) -> Iterator[Gateway]:
    root: Path = tmp_path_factory.mktemp("grpc-transcode-e2e")
    with Gateway(
        root, mode="etcd", etcd=shared_etcd.endpoint, prefix="/grpct2", admin_key=KEY
    ) as g:
        admin(g, "PUT", "/protos/1", {"content": PROTO})
        yield g


def admin(gw: Gateway, method: str, path: str, body: Any = None) -> requests.Response:
    data = None if body is None else json.dumps(body)
    r = requests.request(
        method, gw.admin_url(path), data=data, headers={"X-API-KEY": KEY}, timeout=10
    )
    return r


def route(
    gw: Gateway, greeter: Greeter, rid: str, uri: str, method: str = "SayHello", **conf: Any
) -> None:
    """A route to the Greeter (APISIX's doc example), served once it answers."""
    plugin = {"proto_id": "1", "service": "helloworld.Greeter", "method": method, **conf}
    body = {
        "uri": uri,
        "methods": ["GET", "POST"],
        "plugins": {"grpc-transcode": plugin},
        "upstream": {"scheme": "grpc", "type": "roundrobin", "nodes": {greeter.addr(): 1}},
    }
    r = admin(gw, "PUT", f"/routes/{rid}", body)
    assert r.status_code in (200, 201), r.text
    wait_until(lambda: requests.get(gw.url(uri), timeout=5).status_code != 404)


def test_apisix_doc_example_get_and_post(gw: Gateway, greeter: Greeter) -> None:
    route(gw, greeter, "hello", "/grpctest")
    r = requests.get(gw.url("/grpctest?name=world"), timeout=5)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"message": "Hello world", "items": [], "gender": "GENDER_UNKNOWN"}

    r = requests.post(gw.url("/grpctest"), json={"name": "world", "items": ["a", "b"]}, timeout=5)
    assert r.status_code == 200
    assert r.json()["message"] == "Hello world" and r.json()["items"] == ["a", "b"]

    r = requests.post(gw.url("/grpctest"), json={"name": "x", "gender": 2}, timeout=5)
    assert r.json()["gender"] == "GENDER_FEMALE"


def test_pb_option_effects(gw: Gateway, greeter: Greeter) -> None:
    route(gw, greeter, "plus", "/grpc_plus", method="Plus")
    route(gw, greeter, "plus-s", "/grpc_plus_s", method="Plus", pb_option=["int64_as_string"])
    route(gw, greeter, "enum-v", "/grpc_enum", pb_option=["enum_as_value", "no_default_values"])
    assert requests.get(gw.url("/grpc_plus?a=1&b=2"), timeout=5).json() == {"result": 3}
    big = "/grpc_plus?a=1&b=9007199254740993"
    assert requests.get(gw.url(big), timeout=5).json() == {"result": 9007199254740994}
    assert requests.get(gw.url(big.replace("plus", "plus_s")), timeout=5).json() == {
        "result": "#9007199254740994"
    }
    r = requests.post(gw.url("/grpc_enum"), json={"name": "n", "gender": "GENDER_MALE"}, timeout=5)
    assert r.json() == {"message": "Hello n", "gender": 1}  # no empty "items"


def test_server_streaming_answers_a_json_array_and_a_trailer_status_maps(
    gw: Gateway, greeter: Greeter
) -> None:
    route(gw, greeter, "many", "/grpc_many", method="Many")
    r = requests.get(gw.url("/grpc_many?name=m"), timeout=5)
    assert r.status_code == 200
    assert [m["message"] for m in r.json()] == ["m0", "m1", "m2"]

    # grpc-status 8 arrives as a trailer, after the first message: the answer's status is
    # decided at its end (APISIX maps only a trailers-only answer's header)
    r = requests.get(gw.url("/grpc_many?name=fail"), timeout=5)
    assert r.status_code == 429
    assert r.text == ""


def test_error_status_and_show_status_in_body(gw: Gateway, greeter: Greeter) -> None:
    route(gw, greeter, "err", "/grpc_err", method="GetErrResp")
    r = requests.get(gw.url("/grpc_err?name=world"), timeout=5)
    assert r.status_code == 503  # UNAVAILABLE
    assert r.headers["grpc-status"] == "14"
    assert r.headers["grpc-message"] == "Out of service"
    assert "error" not in r.text

    route(gw, greeter, "err-body", "/grpc_err_body", method="GetErrResp", show_status_in_body=True)
    r = requests.get(gw.url("/grpc_err_body?name=world"), timeout=5)
    assert r.status_code == 503
    error = r.json()["error"]
    assert (error["code"], error["message"]) == (14, "Out of service")
    assert error["details"][0]["type_url"] == "type.googleapis.com/helloworld.ErrorDetail"
    assert base64.b64decode(error["details"][0]["value"])  # undecoded: the detail's bytes

    route(
        gw, greeter, "err-typed", "/grpc_err_typed", method="GetErrResp",
        show_status_in_body=True, status_detail_type="helloworld.ErrorDetail",
    )  # fmt: skip
    r = requests.get(gw.url("/grpc_err_typed?name=world"), timeout=5)
    assert r.status_code == 503
    assert r.json()["error"]["details"] == [
        {"code": 1, "message": "The server is out of service", "type": "service"}
    ]


def test_deadline_is_sent_and_exceeded_is_504(gw: Gateway, greeter: Greeter) -> None:
    route(gw, greeter, "deadline", "/grpc_deadline", deadline=500)
    greeter.timeouts.clear()
    r = requests.get(gw.url("/grpc_deadline?name=apisix"), timeout=5)
    assert r.status_code == 200 and r.json()["message"] == "Hello apisix"
    remaining = greeter.timeouts[-1]
    assert remaining is not None and 0 < remaining <= 0.5

    r = requests.get(gw.url("/grpc_deadline?name=apisix&delay_ms=1500"), timeout=10)
    assert r.status_code == 504


def test_unknown_method_is_503(gw: Gateway, greeter: Greeter) -> None:
    route(gw, greeter, "nomethod", "/grpc_nomethod", method="Nope")
    r = requests.get(gw.url("/grpc_nomethod"), timeout=5)
    assert r.status_code == 503
    assert r.json() == {"error_msg": "Undefined service method: helloworld.Greeter/Nope"}


def test_proto_update_takes_effect_and_invalid_is_400(gw: Gateway, greeter: Greeter) -> None:
    route(gw, greeter, "upd", "/grpc_upd")
    assert requests.get(gw.url("/grpc_upd?name=u"), timeout=5).json()["message"] == "Hello u"
    bad = admin(gw, "PUT", "/protos/1", {"content": PROTO.replace("int32 age", "int33 age")})
    assert bad.status_code == 400
    assert bad.json()["error_msg"].startswith("invalid content: content.proto:10:")
    try:
        assert admin(gw, "PUT", "/protos/1", {"content": PROTO_V2}).status_code == 200
        # the reply's field 1 is now called "greeting"
        wait_until(
            lambda: (
                requests.get(gw.url("/grpc_upd?name=u"), timeout=5).json().get("greeting")
                == "Hello u"
            )
        )
    finally:
        assert admin(gw, "PUT", "/protos/1", {"content": PROTO}).status_code == 200


def test_an_http2_client_gets_the_same_answers(gw: Gateway, greeter: Greeter) -> None:
    route(gw, greeter, "h2", "/grpc_h2", method="Many")
    c = H2Client(gw.port)
    try:
        ok = c.get("/grpc_h2?name=h")
        assert ok.status == 200 and ok.header(b"content-type") == b"application/json"
        assert [m["message"] for m in json.loads(bytes(ok.body))] == ["h0", "h1", "h2"]
        # the trailer's grpc-status decides the status of the head, held until the end
        failed = c.get("/grpc_h2?name=fail")
        assert failed.status == 429 and bytes(failed.body) == b""
    finally:
        c.close()
