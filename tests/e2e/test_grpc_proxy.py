"""gRPC upstreams through the real gateway (issue #14), from HTTP/1.1 clients: the grpc-web
plugin (APISIX's docs and t/plugin/grpc-web.t cases) in binary and text mode, and gRPC errors
a client can read when the upstream is down, slow or refuses."""

from __future__ import annotations

import base64
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.gateway import Gateway, free_port, wait_until
from tests.support.grpc_server import GrpcServer, GrpcServerProcess, Msg, frame, self_signed

WEB = "application/grpc-web+proto"
TEXT = "application/grpc-web-text"


def web_frames(body: bytes) -> tuple[list[Any], dict[str, str]]:
    """The messages and the trailer frame's fields of a gRPC-Web response body."""
    messages: list[Any] = []
    trailers: dict[str, str] = {}
    while body:
        flag, n = body[0], int.from_bytes(body[1:5], "big")
        data, body = body[5 : 5 + n], body[5 + n :]
        if flag & 0x80:
            for line in data.decode().split("\r\n"):
                if line:
                    k, _, v = line.partition(":")
                    trailers[k] = v
        else:
            messages.append(Msg.FromString(data))
    return messages, trailers


def decode_text_body(body: bytes) -> bytes:
    """A text-mode body: base64 pieces, each padded (one per chunk the gateway encoded)."""
    out, start = b"", 0
    while start < len(body):
        end = start
        while end < len(body) and body[end : end + 1] != b"=":
            end += 4 if end + 4 <= len(body) else len(body) - end
            if b"=" in body[end - 4 : end]:
                end = body.index(b"=", end - 4)
                break
        while end < len(body) and body[end : end + 1] == b"=":
            end += 1
        out += base64.b64decode(body[start:end])
        start = end
    return out


def read_to_last_chunk(s: socket.socket, got: bytes) -> bytes:
    """Read a chunked response to its end: the last chunk, any trailer fields, the blank line."""
    while not re.search(rb"\r\n0\r\n(?:[^\r\n]+\r\n)*\r\n$", got):
        data = s.recv(65536)
        assert data, "the response ends with its last chunk"
        got += data
    return got


def call(
    g: Gateway, path: str, msg: Any, *, mode: str = WEB, headers: dict[str, str] | None = None
) -> tuple[requests.Response, list[Any], dict[str, str]]:
    data = frame(msg)
    if mode == TEXT:
        data = base64.b64encode(data)
    r = requests.post(
        g.url(path), data=data, headers={"Content-Type": mode, **(headers or {})}, timeout=10
    )
    body = decode_text_body(r.content) if mode == TEXT else r.content
    messages, trailers = web_frames(body)
    return r, messages, trailers


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    s1, s2 = GrpcServer("s1").start(), GrpcServer("s2").start()
    tls = GrpcServer("tls", tls=(cert, key)).start()
    yield {"s1": s1, "s2": s2, "tls": tls}
    for s in (s1, s2, tls):
        s.stop()


def route(rid: str, uri: str, nodes: str, plugins: str = "{grpc-web: {}}", extra: str = "") -> str:
    return (
        f"  - id: {rid}\n    uri: {uri}\n    plugins: {plugins}\n{extra}"
        f"    upstream: {{scheme: grpc, nodes: {{{nodes}}}}}\n"
    )


@pytest.fixture(scope="module")
def gw(standalone_gateway: Any, servers: dict[str, Any]) -> Gateway:
    s1, s2, tls = servers["s1"], servers["s2"], servers["tls"]
    dead = f"127.0.0.1:{free_port()}"
    yaml = (
        "routes:\n"
        + route("web", "/grpc/web/*", f'"{s1.addr}": 1')
        + route("cors", "/custom/*", f'"{s1.addr}": 1', '{grpc-web: {cors_allow_headers: "grpc-accept-encoding"}}')
        + route("lb", "/lb/*", f'"{s1.addr}": 1, "{s2.addr}": 1')
        + route("down", "/down/*", f'"{dead}": 1')
        + route("slow", "/slow/*", f'"{s1.addr}": 1', extra="    timeout: {connect: 1, send: 1, read: 0.5}\n")
        + route("auth", "/auth/*", f'"{s1.addr}": 1', "{grpc-web: {}, key-auth: {}}")
        + route("plain", "/tollway.test.Echo/*", f'"{s1.addr}": 1', "{}")
        + "  - id: tls\n    uri: /tls/*\n    plugins: {grpc-web: {}}\n"
        + f'    upstream: {{scheme: grpcs, nodes: {{"{tls.addr}": 1}}}}\n'
        + "consumers:\n  - username: jack\n    plugins: {key-auth: {key: jack-key}}\n"
        + "#END\n"
    )  # fmt: skip
    return standalone_gateway(yaml)


def test_unary_binary(gw: Gateway, servers: dict[str, Any]) -> None:
    r, messages, trailers = call(gw, "/grpc/web/tollway.test.Echo/Unary", Msg(text="hi", count=2))
    assert r.status_code == 200
    assert r.headers["Content-Type"] == WEB
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert r.headers["Access-Control-Expose-Headers"] == "grpc-message,grpc-status"
    assert [(m.text, m.count) for m in messages] == [("s1:hi", 2)]
    assert trailers["grpc-status"] == "0"
    # the upstream got a gRPC call (application/grpc, grpcio refuses others) on the path after
    # the route's prefix, with the client's fields minus the hop-by-hop ones
    md = servers["s1"].metadata[-1]
    assert "connection" not in md and "content-length" not in md


def test_unary_text_mode(gw: Gateway) -> None:
    r, messages, trailers = call(gw, "/grpc/web/tollway.test.Echo/Unary", Msg(text="t"), mode=TEXT)
    assert r.status_code == 200 and r.headers["Content-Type"] == TEXT
    assert [m.text for m in messages] == ["s1:t"]
    assert trailers["grpc-status"] == "0"


def test_server_streaming(gw: Gateway) -> None:
    path = "/grpc/web/tollway.test.Echo/ServerStream"
    for mode in (WEB, TEXT):
        _r, messages, trailers = call(gw, path, Msg(text="m", count=20), mode=mode)
        assert [m.text for m in messages] == [f"s1:m{i}" for i in range(20)]
        assert trailers["grpc-status"] == "0"


def test_server_streaming_arrives_as_it_is_sent(gw: Gateway) -> None:
    """The first message reaches the client long before the stream ends (not buffered)."""
    data = frame(Msg(text="slow", count=3, delay_ms=400))
    head = (
        b"POST /grpc/web/tollway.test.Echo/ServerStream HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/grpc-web\r\nContent-Length: %d\r\n\r\n" % len(data)
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(head + data)
        s.settimeout(1.0)  # the whole stream takes 1.2 s; the first message comes at 0.4 s
        got = b""
        while b"s1:slow0" not in got:
            got += s.recv(65536)
        assert b"s1:slow2" not in got


def test_metadata_both_ways_and_in_the_trailer_frame(gw: Gateway, servers: dict[str, Any]) -> None:
    r, _messages, trailers = call(
        gw, "/grpc/web/tollway.test.Echo/Unary", Msg(text="md"), headers={"x-echo": "v1"}
    )
    assert servers["s1"].metadata[-1]["x-echo"] == "v1"
    assert r.headers["x-echo"] == "v1"  # initial metadata: a response header
    assert trailers["x-trailer"] == "v1"  # trailing metadata: in the trailer frame
    assert trailers["grpc-status"] == "0"


def test_error_status_from_the_server(gw: Gateway) -> None:
    r, messages, trailers = call(gw, "/grpc/web/tollway.test.Echo/Unary", Msg(text="fail"))
    assert r.status_code == 200 and messages == []
    # grpcio answers trailers-only: the status is in the headers, no trailer frame (APISIX
    # t/plugin/grpc-web.t TEST 18)
    assert r.headers["grpc-status"] == "3"
    assert r.headers["grpc-message"] == "bad input"
    assert trailers == {}


def test_cors_preflight(gw: Gateway) -> None:
    r = requests.options(gw.url("/grpc/web/tollway.test.Echo/Unary"), timeout=5)
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Methods"] == "POST"
    assert r.headers["Access-Control-Allow-Headers"] == "content-type,x-grpc-web,x-user-agent"
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert r.headers["Access-Control-Expose-Headers"] == "grpc-message,grpc-status"
    r = requests.options(gw.url("/custom/tollway.test.Echo/Unary"), timeout=5)
    assert r.headers["Access-Control-Allow-Headers"] == "grpc-accept-encoding"


def test_wrong_method_and_content_type(gw: Gateway) -> None:
    r = requests.get(gw.url("/grpc/web/tollway.test.Echo/Unary"), timeout=5)
    assert r.status_code == 405 and r.headers["Access-Control-Allow-Origin"] == "*"
    r = requests.post(
        gw.url("/grpc/web/tollway.test.Echo/Unary"),
        data=b"{}",
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert r.status_code == 400 and r.headers["Content-Type"] == "text/html"


def test_upstream_down_is_unavailable(gw: Gateway) -> None:
    r, messages, _trailers = call(gw, "/down/tollway.test.Echo/Unary", Msg(text="x"))
    assert r.status_code == 200 and messages == []
    assert r.headers["grpc-status"] == "14"
    assert "unavailable" in r.headers["grpc-message"]


def test_slow_server_past_the_read_timeout_is_deadline_exceeded(gw: Gateway) -> None:
    r, messages, _trailers = call(gw, "/slow/tollway.test.Echo/Unary", Msg(text="z", delay_ms=3000))
    assert r.status_code == 200 and messages == []
    assert r.headers["grpc-status"] == "4"


def test_grpc_timeout_header_is_honoured(gw: Gateway) -> None:
    r, _messages, _trailers = call(
        gw,
        "/grpc/web/tollway.test.Echo/Unary",
        Msg(text="z", delay_ms=3000),
        headers={"grpc-timeout": "300m"},
    )
    assert r.headers["grpc-status"] == "4"


def test_load_balanced_over_two_servers(gw: Gateway, servers: dict[str, Any]) -> None:
    names = set()
    for _ in range(6):
        _, messages, _ = call(gw, "/lb/tollway.test.Echo/Unary", Msg(text="b"))
        names.add(messages[0].text.split(":")[0])
    assert names == {"s1", "s2"}


def test_key_auth_on_a_grpc_route(gw: Gateway) -> None:
    r = requests.post(
        gw.url("/auth/tollway.test.Echo/Unary"),
        data=frame(Msg(text="a")),
        headers={"Content-Type": WEB},
        timeout=5,
    )
    assert r.status_code == 401
    r, messages, trailers = call(
        gw, "/auth/tollway.test.Echo/Unary", Msg(text="a"), headers={"apikey": "jack-key"}
    )
    assert [m.text for m in messages] == ["s1:a"] and trailers["grpc-status"] == "0"


def test_grpcs_upstream(gw: Gateway) -> None:
    _r, messages, trailers = call(gw, "/tls/tollway.test.Echo/Unary", Msg(text="sec"))
    assert [m.text for m in messages] == ["tls:sec"] and trailers["grpc-status"] == "0"


def test_plain_grpc_request_over_http1_gets_the_messages(gw: Gateway) -> None:
    r = requests.post(
        gw.url("/tollway.test.Echo/ServerStream"),
        data=frame(Msg(text="p", count=3)),
        headers={"Content-Type": "application/grpc"},
        timeout=5,
    )
    assert r.status_code == 200
    messages, _ = web_frames(r.content)
    assert [m.text for m in messages] == ["s1:p0", "s1:p1", "s1:p2"]


def test_server_killed_mid_stream(tmp_path: Path) -> None:
    proc = GrpcServerProcess("k").start()
    yaml = "routes:\n" + route("k", "/k/*", f'"127.0.0.1:{proc.port}": 1') + "#END\n"
    try:
        with Gateway(tmp_path, apisix_yaml=yaml) as g:
            data = frame(Msg(text="m", count=1000, delay_ms=10))
            head = (
                b"POST /k/tollway.test.Echo/ServerStream HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/grpc-web\r\nContent-Length: %d\r\n\r\n" % len(data)
            )
            with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
                s.sendall(head + data)
                got = b""
                while b"k:m1" not in got:
                    got += s.recv(65536)
                proc.kill()
                got = read_to_last_chunk(s, got)
            _, _, body = got.partition(b"\r\n\r\n")
            # the stream's failure reads as a gRPC status in the trailer frame
            assert b"grpc-status:14" in body
            # a new server on the port: the next call gets a new connection
            proc = GrpcServerProcess("k2", port=proc.port).start()
            _r, messages, _trailers = call(g, "/k/tollway.test.Echo/Unary", Msg(text="again"))
            assert [m.text for m in messages] == ["k2:again"]
    finally:
        proc.kill()


def test_retry_to_the_other_node_when_one_is_down(tmp_path: Path) -> None:
    with GrpcServer("alive") as alive:
        dead = f"127.0.0.1:{free_port()}"
        yaml = "routes:\n" + route("r", "/r/*", f'"{dead}": 1, "{alive.addr}": 1') + "#END\n"
        with Gateway(tmp_path, apisix_yaml=yaml) as g:
            for _ in range(4):  # whichever node comes first, the call succeeds
                _, messages, trailers = call(g, "/r/tollway.test.Echo/Unary", Msg(text="x"))
                assert [m.text for m in messages] == ["alive:x"]
                assert trailers["grpc-status"] == "0"
            assert alive.calls == 4


def test_bidi_is_full_duplex_through_the_gateway(gw: Gateway) -> None:
    """A chunked HTTP/1.1 request body streams to the upstream as it arrives while the answer
    streams back: the reply to the first message comes before the client sends the second."""
    head = (
        b"POST /tollway.test.Echo/Bidi HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/grpc\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    def chunk(data: bytes) -> bytes:
        return b"%x\r\n" % len(data) + data + b"\r\n"

    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(head + chunk(frame(Msg(text="one"))))
        got = b""
        while b"s1:one" not in got:
            got += s.recv(65536)
        assert got.startswith(b"HTTP/1.1 200")
        s.sendall(chunk(frame(Msg(text="two"))) + b"0\r\n\r\n")
        got = read_to_last_chunk(s, got)
        assert b"s1:two" in got


def test_client_streaming_through_the_gateway(gw: Gateway, servers: dict[str, Any]) -> None:
    body = b"".join(frame(Msg(text=t)) for t in ("a", "b", "c"))
    r = requests.post(
        gw.url("/grpc/web/tollway.test.Echo/ClientStream"),
        data=body,
        headers={"Content-Type": WEB},
        timeout=5,
    )
    messages, trailers = web_frames(r.content)
    assert [(m.text, m.count) for m in messages] == [("s1:a+b+c", 3)]
    assert trailers["grpc-status"] == "0"


def test_passive_health_check_ejects_a_dead_grpc_node(tmp_path: Path) -> None:
    """Failed attempts are reported as for HTTP: with no retries, calls keep failing on the
    dead node until passive checks eject it, then every call succeeds."""
    with GrpcServer("alive") as alive:
        dead = f"127.0.0.1:{free_port()}"
        yaml = (
            "routes:\n  - id: p\n    uri: /p/*\n    plugins: {grpc-web: {}}\n"
            "    upstream:\n      scheme: grpc\n      retries: 0\n"
            f'      nodes: {{"{dead}": 1, "{alive.addr}": 1}}\n'
            "      checks: {passive: {unhealthy: {tcp_failures: 1}}}\n#END\n"
        )
        with Gateway(tmp_path, apisix_yaml=yaml) as g:
            streak = 0
            unavailable = 0

            def ten_in_a_row() -> bool:
                nonlocal streak, unavailable
                r, messages, _ = call(g, "/p/tollway.test.Echo/Unary", Msg(text="x"))
                ok = [m.text for m in messages] == ["alive:x"]
                unavailable += r.headers.get("grpc-status") == "14"
                streak = streak + 1 if ok else 0
                return streak >= 10

            wait_until(ten_in_a_row, timeout=10, interval=0.0)
            assert unavailable >= 1  # the dead node was tried (no retry) before its ejection
