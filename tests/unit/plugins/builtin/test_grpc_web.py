"""grpc-web's pure pieces: the trailer frame, text-mode decoding, and the phases on a context."""

from __future__ import annotations

import asyncio
import base64

from tollway.plugins.builtin.grpc_web import Conf, GrpcWeb, decode_text, trailer_frame
from tollway.plugins.kit import RequestContext


def ctx(
    method: str = "POST", ct: str | None = "application/grpc-web", body: bytes = b""
) -> RequestContext:
    headers = [(b"content-type", ct.encode())] if ct else []
    c = RequestContext(
        method,
        "/grpc/web/p.S/M",
        "/grpc/web/p.S/M",
        "",
        headers,
        "h",
        "1.2.3.4",
        1,
        "5.6.7.8",
        80,
        "http",
        0.0,
    )
    c.matched_params = {":ext": "p.S/M"}

    async def reader(limit: int) -> bytes | None:
        return body if len(body) <= limit else None

    c.body_reader = reader
    return c


def test_trailer_frame() -> None:
    f = trailer_frame([(b"grpc-status", b"0"), (b"x-t", b"v"), (b"grpc-message", b"ok")])
    block = b"grpc-status:0\r\ngrpc-message:ok\r\nx-t:v\r\n"
    assert f == b"\x80" + len(block).to_bytes(4, "big") + block


def test_trailer_frame_without_a_status() -> None:
    # APISIX: 2 and "upstream grpc status not received"
    assert b"grpc-status:2\r\ngrpc-message:upstream grpc status not received\r\n" in trailer_frame(
        None
    )


def test_decode_text_handles_concatenated_padded_pieces() -> None:
    a, b = b"\x00\x00\x00\x00\x01x", b"\x00\x00\x00\x00\x02yz"
    assert decode_text(base64.b64encode(a) + base64.b64encode(b)) == a + b
    assert decode_text(base64.b64encode(a)) == a
    assert decode_text(b"not base64!") is None
    assert decode_text(b"") == b""


def test_access_rejects_as_apisix_does() -> None:
    p, conf = GrpcWeb(), Conf()
    assert p.access(conf, ctx("OPTIONS")) == (204, None)
    assert p.access(conf, ctx("GET")) == (405, None)
    assert p.access(conf, ctx(ct="application/json")) == (400, None)
    assert p.access(conf, ctx(ct=None)) == (400, None)


def test_access_text_mode_decodes_the_body_and_rewrites_the_path() -> None:
    p, conf = GrpcWeb(), Conf()
    payload = b"\x00\x00\x00\x00\x03abc"
    c = ctx(ct="application/grpc-web-text", body=base64.b64encode(payload))
    res = p.access(conf, c)
    assert asyncio.run(res) is None
    assert c.up_body == payload
    assert c.up_uri == "/p.S/M"
    assert c.headers["content-type"] == "application/grpc"


def test_access_rejects_a_body_over_the_limit_or_not_base64() -> None:
    p = GrpcWeb()
    c = ctx(body=b"x" * 20)
    assert asyncio.run(p.access(Conf(max_req_body_size=10), c)) == (400, None)
    c = ctx(ct="application/grpc-web-text", body=b"%%%")
    assert asyncio.run(p.access(Conf(), c)) == (400, None)


def test_response_filters_binary_and_text() -> None:
    p, conf = GrpcWeb(), Conf()
    for ct, encode in (("application/grpc-web", False), ("application/grpc-web-text+proto", True)):
        c = ctx(ct=ct, body=base64.b64encode(b"m") if encode else b"m")
        asyncio.run(p.access(conf, c))
        c.resp_headers = [("Content-Type", "application/grpc"), ("Content-Length", "7")]
        p.header_filter(conf, c)
        assert c.get_response_header("Content-Type") == ct
        assert c.get_response_header("Content-Length") is None
        assert c.get_response_header("Access-Control-Allow-Origin") == "*"
        assert c.get_response_header("Access-Control-Expose-Headers") == "grpc-message,grpc-status"
        chunk = p.body_filter(conf, c, b"\x00\x00\x00\x00\x01z", False)
        c.upstream_trailers = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
        tail = p.body_filter(conf, c, b"", True)
        if encode:
            chunk, tail = base64.b64decode(chunk), base64.b64decode(tail)
        assert chunk == b"\x00\x00\x00\x00\x01z"
        assert tail == trailer_frame(c.upstream_trailers)


def test_trailers_only_answer_gets_no_trailer_frame() -> None:
    p, conf = GrpcWeb(), Conf()
    c = ctx()
    asyncio.run(p.access(conf, c))
    c.resp_headers = [("grpc-status", "14"), ("grpc-message", "down")]
    p.header_filter(conf, c)
    assert p.body_filter(conf, c, b"", True) == b""


def test_options_answer_has_the_cors_preflight_headers() -> None:
    p, conf = GrpcWeb(), Conf(cors_allow_headers="grpc-accept-encoding")
    c = ctx("OPTIONS")
    p.access(conf, c)
    c.resp_headers = []
    p.header_filter(conf, c)
    assert c.get_response_header("Access-Control-Allow-Methods") == "POST"
    assert c.get_response_header("Access-Control-Allow-Headers") == "grpc-accept-encoding"
    assert c.get_response_header("Content-Type") is None  # the plugin's own answer: no framing
