"""gRPC end to end over HTTP/2 on both sides (issue #14): real grpcio clients to the gateway
over h2c, the gateway to real grpcio servers: every call kind, metadata and trailers both
ways, deadlines, errors, an upstream down or killed mid-stream, load balancing, key-auth."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.gateway import Gateway, free_port
from tests.support.grpc_echo import echo_pb2_grpc
from tests.support.grpc_server import GrpcServer, GrpcServerProcess, Msg


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[GrpcServer, GrpcServer]]:
    s1, s2 = GrpcServer("s1").start(), GrpcServer("s2").start()
    yield s1, s2
    s1.stop()
    s2.stop()


@pytest.fixture(scope="module")
def gw(standalone_gateway: Any, servers: tuple[GrpcServer, GrpcServer]) -> Gateway:
    s1, s2 = servers
    dead = f"127.0.0.1:{free_port()}"
    yaml = f"""
routes:
  - id: echo
    uri: /tollway.test.Echo/*
    host: echo
    upstream: {{scheme: grpc, nodes: {{"{s1.addr}": 1}}}}
  - id: lb
    uri: /tollway.test.Echo/*
    host: lb
    upstream: {{scheme: grpc, nodes: {{"{s1.addr}": 1, "{s2.addr}": 1}}}}
  - id: down
    uri: /tollway.test.Echo/*
    host: down
    upstream: {{scheme: grpc, nodes: {{"{dead}": 1}}}}
  - id: slow
    uri: /tollway.test.Echo/*
    host: slow
    timeout: {{connect: 1, send: 1, read: 0.5}}
    upstream: {{scheme: grpc, nodes: {{"{s1.addr}": 1}}}}
  - id: auth
    uri: /tollway.test.Echo/*
    host: auth
    plugins: {{key-auth: {{}}}}
    upstream: {{scheme: grpc, nodes: {{"{s1.addr}": 1}}}}
consumers:
  - username: jack
    plugins: {{key-auth: {{key: jack-key}}}}
#END
"""
    return standalone_gateway(yaml)


def stub(g: Gateway, host: str = "echo") -> Any:
    channel = grpc.insecure_channel(
        f"127.0.0.1:{g.port}", options=[("grpc.default_authority", host)]
    )
    return echo_pb2_grpc.EchoStub(channel)


def test_unary_with_metadata_and_trailers(gw: Gateway) -> None:
    reply, call = stub(gw).Unary.with_call(
        Msg(text="hi", count=7), metadata=(("x-echo", "md1"),), timeout=10
    )
    assert (reply.text, reply.count) == ("s1:hi", 7)
    assert ("x-echo", "md1") in call.initial_metadata()
    assert ("x-trailer", "md1") in call.trailing_metadata()
    assert call.code() == grpc.StatusCode.OK


def test_repeated_calls_each_send_their_own_fields(gw: Gateway) -> None:
    """One channel repeats its header list call after call, and the gateway reuses the
    upstream head it built from that list (grpc_fields.SharedFields): each call still reaches the
    upstream with its own metadata and method (a stale head echoes another call's metadata, or
    runs the other method, whose answer does not decode as this one's)."""
    s = stub(gw)
    for md in ("a", "a", "b", "a", None, "a"):
        for server_stream in (False, True, False):
            metadata = (("x-echo", md),) if md else ()
            if server_stream:
                call = s.ServerStream(Msg(text="s", count=2), metadata=metadata)
                assert [m.text for m in call] == ["s1:s0", "s1:s1"]
            else:
                reply, call = s.Unary.with_call(Msg(text="u"), metadata=metadata)
                assert reply.text == "s1:u"
            echoed = dict(call.initial_metadata()).get("x-echo")
            assert (echoed, call.code()) == (md, grpc.StatusCode.OK)


def test_server_streaming(gw: Gateway) -> None:
    replies = list(stub(gw).ServerStream(Msg(text="m", count=30), timeout=10))
    assert [r.text for r in replies] == [f"s1:m{i}" for i in range(30)]


def test_client_streaming(gw: Gateway) -> None:
    reply = stub(gw).ClientStream(iter([Msg(text=t) for t in "abcd"]), timeout=10)
    assert (reply.text, reply.count) == ("s1:a+b+c+d", 4)


def test_bidi_streaming_is_interleaved(gw: Gateway) -> None:
    """Each reply arrives before the next request is sent: the call is full duplex."""
    import queue

    outbox: queue.Queue[Any] = queue.Queue()

    def requests() -> Iterator[Any]:
        while True:
            m = outbox.get()
            if m is None:
                return
            yield m

    calls = stub(gw).Bidi(requests(), timeout=10)
    for word in ("one", "two", "three"):
        outbox.put(Msg(text=word))
        assert next(calls).text == f"s1:{word}"
    outbox.put(None)
    assert list(calls) == []


def test_error_status_and_message(gw: Gateway) -> None:
    with pytest.raises(grpc.RpcError) as e:
        stub(gw).Unary(Msg(text="fail"), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "bad input"


def test_client_deadline_reaches_the_upstream(
    gw: Gateway, servers: tuple[GrpcServer, GrpcServer]
) -> None:
    stub(gw).Unary(Msg(text="d"), timeout=5)
    left = servers[0].deadlines[-1]
    # grpc-timeout went upstream as what remained at the gateway, not more than the client's
    # (grpc-core reads it against a cached clock: a few ms of slack)
    assert left is not None and 0 < left <= 5.1
    stub(gw).Unary(Msg(text="d"))
    assert servers[0].deadlines[-1] is None  # no deadline: none invented
    with pytest.raises(grpc.RpcError) as e:
        stub(gw).Unary(Msg(text="z", delay_ms=3000), timeout=0.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_route_read_timeout_is_deadline_exceeded(gw: Gateway) -> None:
    with pytest.raises(grpc.RpcError) as e:
        stub(gw, "slow").Unary(Msg(text="z", delay_ms=3000), timeout=10)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_upstream_down_is_unavailable(gw: Gateway) -> None:
    with pytest.raises(grpc.RpcError) as e:
        stub(gw, "down").Unary(Msg(text="x"), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_load_balanced(gw: Gateway) -> None:
    names = {stub(gw, "lb").Unary(Msg(text="b"), timeout=10).text.split(":")[0] for _ in range(6)}
    assert names == {"s1", "s2"}


def test_key_auth(gw: Gateway) -> None:
    with pytest.raises(grpc.RpcError) as e:
        stub(gw, "auth").Unary(Msg(text="a"), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED  # HTTP 401 read by grpcio
    reply = stub(gw, "auth").Unary(Msg(text="a"), metadata=(("apikey", "jack-key"),), timeout=10)
    assert reply.text == "s1:a"


def test_upstream_killed_mid_stream(tmp_path: Path) -> None:
    proc = GrpcServerProcess("k").start()
    yaml = (
        "routes:\n  - id: k\n    uri: /tollway.test.Echo/*\n"
        f'    upstream: {{scheme: grpc, nodes: {{"127.0.0.1:{proc.port}": 1}}}}\n#END\n'
    )
    try:
        with Gateway(tmp_path, apisix_yaml=yaml) as g:
            replies = stub(g, "k").ServerStream(Msg(text="m", count=1000, delay_ms=10), timeout=20)
            assert next(replies).text == "k:m0"
            proc.kill()
            with pytest.raises(grpc.RpcError) as e:
                for _ in replies:
                    pass
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            proc = GrpcServerProcess("k2", port=proc.port).start()
            assert stub(g, "k").Unary(Msg(text="again"), timeout=10).text == "k2:again"
    finally:
        proc.kill()
