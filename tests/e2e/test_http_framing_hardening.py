"""Hostile framing against the real process (issue #18): Upgrade smuggling, duplicate Host, an
HTTP/2.0 request line, CONNECT, malformed percent-encoding. The upstream records every request it
parses, so a request that slipped past the router shows up there."""

from __future__ import annotations

import base64
import os
import re
import socket

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway, send_raw, wait_until
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: public
    uri: /public/*
    upstream: {nodes: {"%(up)s": 1}}
  - id: private
    uri: /private/*
    plugins:
      ip-restriction: {blacklist: ["127.0.0.1"]}
    upstream: {nodes: {"%(up)s": 1}}
  - id: inject
    uri: /inject/*
    plugins:
      proxy-rewrite:
        uri: "/seen$uri"
        headers:
          set: {X-Odd: "a\\r\\nX-Injected: 1", X-Nul: "b\\0c", X-Uni: "\\u202e", X-Path: "$uri"}
      response-rewrite:
        headers:
          set: {X-Back: "d\\r\\nX-Split: 1"}
    upstream: {nodes: {"%(up)s": 1}}
  - id: ws
    uri: /ws
    enable_websocket: true
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    return standalone_gateway(CONFIG % {"up": upstream.addr})


def exchange(gw: Gateway, data: bytes, timeout: float = 5) -> bytes:
    """Send ``data`` in one write, read until the gateway closes (or the timeout)."""
    return send_raw(gw.port, data, timeout=timeout)


def statuses(out: bytes) -> list[int]:
    """The status of every answer in ``out`` (an answer may follow a body with no line break)."""
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", out)]


def seen_paths(up: Upstream) -> list[str]:
    return [r["path"] for r in up.requests]


SMUGGLED = b"GET /private/y HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("token", [b"h2c", b"websocket", b"foo"])
@pytest.mark.parametrize("size", [70000, 100])
def test_upgrade_does_not_smuggle_a_request_past_the_router(
    gw: Gateway, upstream: Upstream, token: bytes, size: int
) -> None:
    """POST with Connection: Upgrade and a body, then a second request in the same write: the
    body ends where Content-Length says, and the second request is routed (ip-restriction 403),
    never forwarded as it is nor appended to the first one's body."""
    upstream.requests.clear()
    body = b"b" * size
    head = (
        b"POST /public/x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: %s\r\n"
        b"Content-Length: %d\r\n\r\n" % (token, size)
    )
    out = exchange(gw, head + body + SMUGGLED, timeout=3)
    assert "/private/y" not in seen_paths(upstream)
    got = statuses(out)
    assert got[0] == 200, out[:300]
    assert got[1:] in ([403], []), got  # routed (403) or dropped with the connection
    first = upstream.requests[0]
    assert first["path"] == "/public/x"
    assert len(first["body"]) == size  # exactly its own body, nothing appended
    assert "upgrade" not in first["headers"]


def test_upgrade_with_a_chunked_body_is_framed_by_its_chunks(
    gw: Gateway, upstream: Upstream
) -> None:
    upstream.requests.clear()
    req = (
        b"POST /public/c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    out = exchange(gw, req + SMUGGLED, timeout=3)
    assert statuses(out) == [200, 403], out[:500]
    assert seen_paths(upstream) == ["/public/c"]
    assert upstream.requests[0]["body"] == "hello"


def test_upgrade_split_over_many_writes_keeps_framing(gw: Gateway, upstream: Upstream) -> None:
    """The body arrives after the head, in pieces: each piece is body, not a new request."""
    upstream.requests.clear()
    size = 3 * 65536
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(
            b"POST /public/split HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
            b"Upgrade: h2c\r\nContent-Length: %d\r\n\r\n" % size
        )
        for _ in range(3):
            s.sendall(b"GET /private/y HTTP/1.1\r\n".ljust(65536, b"z"))
        s.sendall(b"GET /public/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = b""
        while c := s.recv(65536):
            out += c
    assert statuses(out) == [200, 200], out[:300]
    assert seen_paths(upstream) == ["/public/split", "/public/next"]
    assert len(upstream.requests[0]["body"]) == size


def test_h2c_upgrade_without_body_answers_then_parses_on(gw: Gateway, upstream: Upstream) -> None:
    upstream.requests.clear()
    req = (
        b"GET /public/a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
    )
    out = exchange(gw, req + SMUGGLED, timeout=3)
    assert statuses(out) == [200, 403], out[:500]
    assert seen_paths(upstream) == ["/public/a"]


def handshake(path: bytes) -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )


def test_websocket_handshake_on_a_plain_route_never_forwards_what_follows(
    gw: Gateway, upstream: Upstream
) -> None:
    """A route without enable_websocket: no 101, and the bytes after the handshake are neither
    tunnelled nor parsed unrouted; the connection closes after the answer."""
    upstream.requests.clear()
    out = exchange(gw, handshake(b"/public/ws") + SMUGGLED, timeout=3)
    got = statuses(out)
    assert got and got[0] == 200 and 101 not in got, out[:300]
    assert got[1:] in ([403], []), got
    assert seen_paths(upstream) == ["/public/ws"]
    assert "upgrade" not in upstream.requests[0]["headers"]


def test_websocket_tunnel_carries_bytes_sent_with_the_handshake(gw: Gateway) -> None:
    """On a WebSocket route the bytes sent right after the handshake are held, then tunnelled
    once the upstream answered 101 (a client may send its first frame without waiting)."""
    payload = b"hi"
    mask = os.urandom(4)
    frame = bytes([0x81, 0x80 | len(payload)]) + mask
    frame += bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(handshake(b"/ws") + frame)
        data = b""
        while b"echo:hi" not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 101")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /public/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /public/a HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400),
        (b"GET /public/a HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET /public/a HTTP/0.9\r\nHost: a\r\n\r\n", 400),
        (b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n" + SMUGGLED, 405),
        (b"GET /public/%ff HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /public/%c3%28 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /public/%c0%ae%c0%ae/private/y HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /private/%c0%ae HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /public/\xff HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ],
    ids=[
        "two-hosts",
        "two-hosts-any-case",
        "http2-request-line",
        "http09-request-line",
        "connect",
        "pct-ff",
        "pct-bad-utf8",
        "pct-overlong-dots",
        "pct-overlong-private",
        "raw-ff",
    ],
)
def test_malformed_requests_get_4xx_and_reach_nothing(
    gw: Gateway, upstream: Upstream, request_bytes: bytes, status: int
) -> None:
    upstream.requests.clear()
    out = exchange(gw, request_bytes)
    assert statuses(out)[:1] == [status], out[:300]
    assert seen_paths(upstream) == []
    assert requests.get(gw.url("/public/ok"), timeout=5).status_code == 200
    assert "Traceback" not in gw.logs()


def test_worker_survives_the_whole_corpus(gw: Gateway) -> None:
    wait_until(lambda: requests.get(gw.url("/public/z"), timeout=5).status_code == 200)
    assert "Traceback" not in gw.logs()


@pytest.mark.parametrize(
    ("target", "upstream_path"),
    [
        (b"/public/..;/private/y", "/public/..;/private/y"),
        (b"/public/..\\private/y", "/public/..\\private/y"),
        (b"/public/%252e%252e/private/y", "/public/%252e%252e/private/y"),
        (b"/public/a;v=1/b", "/public/a;v=1/b"),
    ],
    ids=["dot-dot-semicolon", "backslash", "double-encoded-dots", "path-parameter"],
)
def test_default_mode_passes_what_nginx_passes(
    gw: Gateway, upstream: Upstream, target: bytes, upstream_path: str
) -> None:
    """Documented in the README: without normalize_uri_like_servlet these reach a /public/*
    route and its upstream unchanged, as with nginx and APISIX."""
    upstream.requests.clear()
    out = exchange(gw, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert statuses(out) == [200], out[:300]
    assert seen_paths(upstream) == [upstream_path]


@pytest.fixture(scope="module")
def servlet_gw(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    conf = {"apisix": {"normalize_uri_like_servlet": True}}
    return standalone_gateway(CONFIG % {"up": upstream.addr}, config=conf)


@pytest.mark.parametrize(
    ("target", "status", "upstream_path"),
    [
        (b"/public/..;/private/y", 400, None),
        (b"/public/..\\private/y", 400, None),
        (b"/public/%252e%252e;/private/y", 400, None),
        (b"/public/a;jsessionid=1/b", 200, "/public/a;jsessionid=1/b"),
        (b"/private;x/y", 403, None),  # matched as /private/y: the plugin sees it
    ],
    ids=["dot-dot-semicolon", "backslash", "double-encoded-dots", "kept-parameters", "routed"],
)
def test_servlet_normalisation(
    servlet_gw: Gateway,
    upstream: Upstream,
    target: bytes,
    status: int,
    upstream_path: str | None,
) -> None:
    upstream.requests.clear()
    req = b"GET " + target + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    out = exchange(servlet_gw, req)
    assert statuses(out) == [status], out[:300]
    assert seen_paths(upstream) == ([upstream_path] if upstream_path else [])


def test_plugin_made_heads_cannot_be_split(gw: Gateway, upstream: Upstream) -> None:
    """CR, LF and NUL in a header value a plugin sets become spaces (RFC 9110 5.5), text beyond
    latin-1 goes out as UTF-8, and a rewritten uri built from a decoded variable is
    percent-encoded: nothing a config or a client sends can add a header or a request line."""
    upstream.requests.clear()
    target = b"/inject/a%0d%0aX-Evil:%201%20HTTP/1.1"
    out = exchange(gw, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert statuses(out) == [200], out[:300]
    head = out.partition(b"\r\n\r\n")[0]
    assert b"\r\nX-Back: d  X-Split: 1\r\n" in head
    assert b"\r\nX-Split" not in head
    assert len(upstream.requests) == 1
    seen = upstream.requests[0]
    assert seen["raw_path"] == "/seen/inject/a%0D%0AX-Evil:%201%20HTTP/1.1"
    headers = seen["headers"]
    assert "x-injected" not in headers and "x-evil" not in headers
    assert headers["x-odd"] == "a  X-Injected: 1"
    assert headers["x-nul"] == "b c"
    assert headers["x-uni"] == "\u202e"  # sent as UTF-8
    assert headers["x-path"] == "/inject/a  X-Evil: 1 HTTP/1.1"
