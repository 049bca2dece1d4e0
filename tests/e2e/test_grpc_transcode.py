"""grpc-transcode and the ``protos`` resource through the real process and a real etcd (#14).

The Admin API compiles a proto when it is written; the config pipeline rejects an invalid one
written straight into etcd (the last good one keeps serving); the plugin's request (method,
path, headers, a framed protobuf body) is checked at a recording HTTP upstream, which sees
exactly what a gRPC server would be sent.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.etcd import EtcdServer
from tests.support.gateway import Gateway, wait_until
from tests.support.upstream import Upstream
from tollway.plugins.kit_grpc import unframe
from tollway.protos import descriptor_set

KEY = "test-admin-key-grpc-transcode"
PREFIX = "/grpct"
HELLO = """syntax = "proto3";
package helloworld;
service Greeter { rpc SayHello (HelloRequest) returns (HelloReply) {} }
message HelloRequest { string name = 1; }
message HelloReply { string message = 1; }
"""
# the same service, with the request's field renumbered: what the upstream gets shows which
# version of the proto the gateway used
HELLO_V2 = HELLO.replace("string name = 1;", "string name = 7;")


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream("grpc-ish").start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, shared_etcd: EtcdServer) -> Iterator[Gateway]:
    root: Path = tmp_path_factory.mktemp("grpc-transcode")
    with Gateway(root, mode="etcd", etcd=shared_etcd.endpoint, prefix=PREFIX, admin_key=KEY) as g:
        yield g


def admin(gw: Gateway, method: str, path: str, body: Any = None) -> requests.Response:
    data = None if body is None else json.dumps(body)
    return requests.request(
        method, gw.admin_url(path), data=data, headers={"X-API-KEY": KEY}, timeout=10
    )


def transcode_route(up: Upstream, uri: str, proto_id: str = "1", **conf: Any) -> dict[str, Any]:
    plugin = {"proto_id": proto_id, "service": "helloworld.Greeter", "method": "SayHello", **conf}
    return {
        "uri": uri,
        "plugins": {"grpc-transcode": plugin},
        "upstream": {"nodes": {up.addr: 1}, "type": "roundrobin"},
    }


def name_field(body: str) -> tuple[int, str]:
    """The (field number, value) of the one string field in a framed HelloRequest."""
    parts = unframe(body.encode("latin-1"))
    assert parts is not None and len(parts) == 1
    raw = parts[0]
    tag, size = raw[0], raw[1]
    assert tag & 7 == 2  # length-delimited
    return tag >> 3, raw[2 : 2 + size].decode()


def test_a_proto_is_compiled_when_written(gw: Gateway) -> None:
    r = admin(gw, "PUT", "/protos/w1", {"content": HELLO})
    assert r.status_code == 201, r.text
    assert r.json()["value"]["content"] == HELLO

    encoded = base64.b64encode(descriptor_set(HELLO)).decode()
    r = admin(gw, "PUT", "/protos/w2", {"content": encoded})  # APISIX's descriptor form
    assert r.status_code == 201, r.text

    bad = HELLO.replace("string name = 1;", "strin name = 1;")
    r = admin(gw, "PUT", "/protos/w3", {"content": bad})
    assert r.status_code == 400
    assert r.json() == {"error_msg": 'invalid content: content.proto:4:24: "strin" is not defined.'}
    assert admin(gw, "GET", "/protos/w3").status_code == 404

    r = admin(gw, "POST", "/protos", {"content": "message {"})
    assert r.status_code == 400
    assert r.json()["error_msg"].startswith("invalid content: content.proto:1:")
    for pid in ("w1", "w2"):
        assert admin(gw, "DELETE", f"/protos/{pid}").status_code == 200


def test_a_proto_in_use_by_a_route_or_service_is_not_deleted(
    gw: Gateway, upstream: Upstream
) -> None:
    assert admin(gw, "PUT", "/protos/u1", {"content": HELLO}).status_code == 201
    route = transcode_route(upstream, "/in-use", proto_id="u1")
    assert admin(gw, "PUT", "/routes/r-in-use", route).status_code == 201
    r = admin(gw, "DELETE", "/protos/u1")
    assert r.status_code == 400
    assert r.json() == {
        "error_msg": "can not delete this proto, route [r-in-use] is still using it now"
    }
    assert admin(gw, "DELETE", "/routes/r-in-use").status_code == 200
    service = {"plugins": route["plugins"]}
    assert admin(gw, "PUT", "/services/s-in-use", service).status_code == 201
    r = admin(gw, "DELETE", "/protos/u1")
    assert r.status_code == 400
    assert r.json()["error_msg"].endswith("service [s-in-use] is still using it now")
    assert admin(gw, "DELETE", "/services/s-in-use").status_code == 200
    assert admin(gw, "DELETE", "/protos/u1").status_code == 200


def test_the_upstream_gets_a_grpc_request(gw: Gateway, upstream: Upstream) -> None:
    assert admin(gw, "PUT", "/protos/1", {"content": HELLO}).status_code in (200, 201)
    r = admin(gw, "PUT", "/routes/g1", transcode_route(upstream, "/grpctest", deadline=1500))
    assert r.status_code in (200, 201), r.text
    wait_until(lambda: requests.get(gw.url("/grpctest?name=world"), timeout=5).status_code != 404)

    upstream.requests.clear()
    r = requests.get(gw.url("/grpctest?name=world&other=1"), timeout=5)
    seen = upstream.requests[-1]
    assert (seen["method"], seen["path"]) == ("POST", "/helloworld.Greeter/SayHello")
    assert seen["headers"]["content-type"] == "application/grpc"
    assert "te" not in seen["headers"]  # hop-by-hop on HTTP/1.1; HTTP/2 (gRPC) keeps it
    assert seen["headers"]["grpc-timeout"] == "1500m"
    assert seen["headers"]["content-length"] == str(len(seen["body"]))
    assert name_field(seen["body"]) == (1, "world")
    # an HTTP/1.1 JSON answer is no gRPC message: APISIX's message, as the body
    assert r.text == "failed to decode response data by protobuf"
    assert r.headers["content-type"] == "application/json"

    r = requests.post(gw.url("/grpctest"), json={"name": "posted"}, timeout=5)
    assert name_field(upstream.requests[-1]["body"]) == (1, "posted")

    r = admin(gw, "PUT", "/routes/g2", transcode_route(upstream, "/nomethod", method="Nope"))
    assert r.status_code == 201
    wait_until(lambda: requests.get(gw.url("/nomethod"), timeout=5).status_code == 503)
    r = requests.get(gw.url("/nomethod"), timeout=5)
    assert r.json() == {"error_msg": "Undefined service method: helloworld.Greeter/Nope"}


def _field_sent(gw: Gateway, upstream: Upstream) -> int:
    requests.get(gw.url("/grpctest?name=v"), timeout=5)
    return name_field(upstream.requests[-1]["body"])[0]


def test_a_proto_update_takes_effect_and_an_invalid_one_in_etcd_is_rejected(
    gw: Gateway, upstream: Upstream, shared_etcd: EtcdServer
) -> None:
    assert admin(gw, "PUT", "/protos/1", {"content": HELLO}).status_code in (200, 201)
    r = admin(gw, "PUT", "/routes/g1", transcode_route(upstream, "/grpctest"))
    assert r.status_code in (200, 201)
    wait_until(lambda: _field_sent(gw, upstream) == 1)

    assert admin(gw, "PUT", "/protos/1", {"content": HELLO_V2}).status_code == 200
    wait_until(lambda: _field_sent(gw, upstream) == 7)

    # straight into etcd, past the Admin API: rejected by the config pipeline, logged, counted,
    # and the last good version keeps serving
    before = int(gw.status("/status/config").json()["rejected"])
    bad = json.dumps({"id": "1", "content": "syntax = 'proto3'; message {"})
    shared_etcd.put(f"{PREFIX}/protos/1", bad)
    wait_until(lambda: int(gw.status("/status/config").json()["rejected"]) == before + 1)
    assert "rejected config item /grpct/protos/1: invalid content: content.proto:1:" in gw.logs()
    assert _field_sent(gw, upstream) == 7
    assert "Traceback" not in gw.logs()
