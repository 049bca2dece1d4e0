"""nginx's client timeouts and clients that go away, against the real process (issue #18):
client_header_timeout, client_body_timeout (Content-Length, chunked, Expect: 100-continue),
send_timeout, a client that closes mid-body, and a slow reader that must not poison the
upstream connection pool."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway, wait_until
from tests.support.upstream import Upstream

ROUTES = """
routes:
  - id: echo
    uri: /echo*
    upstream: {nodes: {"%(up)s": 1}}
  - id: big
    uri: /big/*
    upstream: {nodes: {"%(up)s": 1}}
  - id: filtered
    uri: /filtered/*
    plugins:
      response-rewrite: {filters: [{regex: "x", replace: "y"}]}
      proxy-rewrite: {regex_uri: ["^/filtered/(.*)", "/big/$1"]}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""

SHORT = {
    "nginx_config": {
        "http": {
            "client_header_timeout": "1s",
            "client_body_timeout": "1s",
            "send_timeout": "1s",
            "keepalive_timeout": "20s",
        }
    }
}


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    return standalone_gateway(ROUTES % {"up": upstream.addr}, config=SHORT)


def read_until_closed(s: socket.socket, limit: float = 10) -> tuple[bytes, float]:
    """Everything until the gateway closes, and how long that took."""
    start = time.monotonic()
    s.settimeout(limit)
    out = b""
    try:
        while c := s.recv(65536):
            out += c
    except ConnectionResetError:
        pass
    return out, time.monotonic() - start


def connect(gw: Gateway) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=10)


def test_silent_connection_is_closed_at_the_header_timeout(gw: Gateway) -> None:
    with connect(gw) as s:
        out, took = read_until_closed(s)
    assert out == b""
    assert 0.8 <= took < 5, took  # client_header_timeout 1s, not keepalive (20s) nor 60s


def test_slow_head_is_cut_at_the_header_timeout(gw: Gateway) -> None:
    with connect(gw) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        out, took = read_until_closed(s)
    assert out == b"" or out.startswith(b"HTTP/1.1 408"), out
    assert 0.8 <= took < 5, took


def test_slow_second_head_on_a_kept_alive_connection(gw: Gateway) -> None:
    """Idle keep-alive has keepalive_timeout (20s); once a head begins, client_header_timeout."""
    with connect(gw) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        s.sendall(b"GET /echo HTTP/1.1\r\nHo")
        _, took = read_until_closed(s)
    assert took < 5, took


@pytest.mark.parametrize(
    "head",
    [
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"z" * 70000,
    ],
    ids=["content-length", "chunked", "streamed"],
)
def test_stalled_body_is_answered_408(gw: Gateway, upstream: Upstream, head: bytes) -> None:
    before = len(upstream.requests)
    with connect(gw) as s:
        s.sendall(head)
        out, took = read_until_closed(s)
    assert out.startswith(b"HTTP/1.1 408"), out[:200]
    assert b"Connection: close" in out
    assert 0.8 <= took < 5, took
    assert len(upstream.requests) == before  # the upstream never got a truncated request


def test_expect_continue_without_a_body_is_answered_408(gw: Gateway) -> None:
    with connect(gw) as s:
        s.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        out, took = read_until_closed(s)
    assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 408"), out[:200]
    assert took < 5, took


TCP_ESTABLISHED = 1


def tcp_state(s: socket.socket) -> int:
    return struct.unpack("B", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[:1])[0]


def test_client_that_reads_nothing_is_dropped_at_the_send_timeout(gw: Gateway) -> None:
    s = connect(gw)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    try:
        start = time.monotonic()
        s.sendall(b"GET /big/50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        # Never read: once the buffers fill, the gateway is paused, then gives up on us.
        wait_until(lambda: tcp_state(s) != TCP_ESTABLISHED, timeout=15, interval=0.1)
        assert time.monotonic() - start >= 0.8
    finally:
        s.close()
    assert requests.get(gw.url("/echo"), timeout=5).status_code == 200


def gateway_sockets_in_close_wait(port: int) -> int:
    """Sockets on the gateway's side of ``port`` the client closed and the gateway has not."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "08":  # TCP_CLOSE_WAIT
                n += 1
    return n


@pytest.mark.parametrize(
    "partial",
    [
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Half: ",
    ],
    ids=["content-length", "chunked", "head"],
)
def test_client_gone_mid_request_frees_its_socket_at_once(
    tmp_path: Path, upstream: Upstream, partial: bytes
) -> None:
    """20 clients send part of a request and close: every socket is released well before any
    timeout (all set to 30s here) could have done it."""
    slow = {
        "nginx_config": {"http": {"client_body_timeout": "30s", "client_header_timeout": "30s"}}
    }
    with Gateway(tmp_path, apisix_yaml=ROUTES % {"up": upstream.addr}, config=slow) as g:
        start = time.monotonic()
        for _ in range(20):
            with connect(g) as s:
                s.sendall(partial)
        wait_until(lambda: gateway_sockets_in_close_wait(g.port) == 0, timeout=5)
        assert time.monotonic() - start < 10
        assert requests.get(g.url("/echo"), timeout=5).status_code == 200


@pytest.fixture
def patient_gw(tmp_path: Path, upstream: Upstream) -> Iterator[Gateway]:
    """Default client timeouts (send_timeout 10s): slow readers are not dropped."""
    with Gateway(tmp_path, apisix_yaml=ROUTES % {"up": upstream.addr}) as g:
        yield g


def test_slow_readers_of_filtered_bodies_do_not_poison_the_upstream_pool(
    patient_gw: Gateway, upstream: Upstream
) -> None:
    """A response-rewrite filter over a 10 MB body to clients that do not read: once their
    responses are complete upstream, the pooled connections serve other requests at once."""
    gw = patient_gw
    size = 10_000_000
    slow = [connect(gw) for _ in range(3)]
    try:
        for s in slow:
            s.sendall(b"GET /filtered/%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        wait_until(lambda: sum(r["path"] == f"/big/{size}" for r in upstream.requests) >= 3)

        def load(_: int) -> list[int]:
            # For a few seconds, while the three responses complete upstream and their
            # connections go back to the pool: every request is answered, and promptly.
            codes = []
            until = time.monotonic() + 3
            while time.monotonic() < until:
                codes.append(requests.get(gw.url("/echo/next"), timeout=3).status_code)
            return codes

        with ThreadPoolExecutor(4) as pool:
            codes = [c for batch in pool.map(load, range(4)) for c in batch]
        assert codes and set(codes) == {200}
        for s in slow:  # and the slow readers still get their whole answers
            s.settimeout(30)
            got = 0
            while got < size:
                chunk = s.recv(1 << 20)
                assert chunk
                got += len(chunk)
    finally:
        for s in slow:
            s.close()
