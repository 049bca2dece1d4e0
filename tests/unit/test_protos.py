"""tollway.protos: proto content compiled (protoc source or APISIX's base64 descriptor form)."""

from __future__ import annotations

import base64

import pytest

from tollway.errors import ConfigError
from tollway.protos import STATUS, compile_proto, descriptor_set

HELLO = """
syntax = "proto3";
package helloworld;
import "google/protobuf/timestamp.proto";
service Greeter {
  rpc SayHello (HelloRequest) returns (HelloReply) {}
  rpc Stream (HelloRequest) returns (stream HelloReply) {}
}
message HelloRequest { string name = 1; google.protobuf.Timestamp at = 2; }
message HelloReply { string message = 1; }
"""


def test_source_compiles_to_methods_and_message_classes() -> None:
    p = compile_proto(HELLO)
    m = p.method("helloworld.Greeter", "SayHello")
    assert m is not None
    assert m.path == "/helloworld.Greeter/SayHello"
    assert not m.server_streaming
    stream = p.method("helloworld.Greeter", "Stream")
    assert stream is not None and stream.server_streaming
    req = m.input(name="x")
    req.at.seconds = 5  # the well-known import resolved from grpc_tools' include dir
    assert m.input.FromString(req.SerializeToString()).name == "x"
    assert p.method("helloworld.Greeter", "Nope") is None
    assert p.method("Greeter", "SayHello") is None  # services are named with their package
    assert p.message_class("helloworld.HelloReply") is m.output
    assert p.message_class("helloworld.Missing") is None


def test_descriptor_form_is_the_same_proto() -> None:
    encoded = base64.b64encode(descriptor_set(HELLO)).decode()
    p = compile_proto(encoded)
    m = p.method("helloworld.Greeter", "SayHello")
    assert m is not None and m.output.DESCRIPTOR.full_name == "helloworld.HelloReply"


def test_descriptor_set_without_its_well_known_imports_links() -> None:
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set(HELLO))
    only = descriptor_pb2.FileDescriptorSet(
        file=[f for f in fds.file if not f.name.startswith("google/")]
    )
    p = compile_proto(base64.b64encode(only.SerializeToString()).decode())
    assert p.method("helloworld.Greeter", "SayHello") is not None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('syntax = "proto3"; message A { strin x = 1; }', 'content.proto:1:32: "strin" is not'),
        ("hello", "content.proto:1:1: Expected top-level statement"),
        ('syntax = "proto3"; import "other.proto";', 'Import "other.proto" was not found'),
    ],
)
def test_invalid_source_is_refused_with_protocs_message(content: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        compile_proto(content)
    assert str(e.value).startswith("invalid content: ")
    assert message in str(e.value)
    assert "/tmp" not in str(e.value) and "WARNING" not in str(e.value)


def test_status_message_decodes_grpc_status_details() -> None:
    st = STATUS(code=14, message="Out of service")
    st.details.add(type_url="type.googleapis.com/x.Y", value=b"\x08\x01")
    back = STATUS.FromString(st.SerializeToString())
    assert (back.code, back.message, back.details[0].value) == (14, "Out of service", b"\x08\x01")
