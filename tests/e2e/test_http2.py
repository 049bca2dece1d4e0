"""HTTP/2 towards clients (issue #14): h2c with prior knowledge and ALPN h2 on the real process,
streams through routing and plugins, flow control both ways, GOAWAY on graceful stop."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from h2.errors import ErrorCodes

from tests.e2e.test_tls_listener import self_signed
from tests.support.gateway import Gateway, send_raw, wait_until
from tests.support.h2client import Answer, H2Client
from tests.support.upstream import Upstream

ROUTES = """
routes:
  - id: auth
    uri: /auth/*
    plugins: {key-auth: {}}
    upstream: {nodes: {"%(up)s": 1}}
  - id: limited
    uri: /limited
    plugins: {limit-count: {count: 2, time_window: 60, rejected_code: 429}}
    upstream: {nodes: {"%(up)s": 1}}
  - id: rewritten
    uri: /rewritten
    plugins:
      response-rewrite: {body: "rewritten\\n", headers: {set: {X-Rw: "yes", X-Proto: "$server_protocol"}}}
    upstream: {nodes: {"%(up)s": 1}}
  - id: all
    uri: /*
    upstream: {nodes: {"%(up)s": 1}}
consumers:
  - username: jack
    plugins: {key-auth: {key: jack-key}}
"""


def _yaml(up: Upstream, ssls: str = "") -> str:
    return ssls + ROUTES % {"up": up.addr} + "#END\n"


@pytest.fixture(scope="module")
def up() -> Iterator[Upstream]:
    u = Upstream().start()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, up: Upstream) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("h2")
    cert, key = self_signed(root, "h2.test", "DNS:h2.test")
    ssls = f"ssls: {json.dumps([{'id': 'a', 'cert': cert, 'key': key, 'snis': ['h2.test']}])}\n"
    with Gateway(root, apisix_yaml=_yaml(up, ssls)) as g:
        g.ca = cert  # type: ignore[attr-defined]
        yield g


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, check=False
    )


def test_curl_h2c_and_http11_on_one_port(gw: Gateway) -> None:
    out = curl("-i", "--http2-prior-knowledge", gw.url("/echo?a=1"), "-H", "cookie: a=1",
               "-H", "cookie: b=2")  # fmt: skip
    head, _, body = out.stdout.partition("\n\n")
    assert head.startswith("HTTP/2 200"), out
    assert "x-upstream: up" in head and "server: " in head and "content-length: " in head
    seen = json.loads(body)
    assert seen["path"] == "/echo?a=1"
    # :authority became Host; cookie crumbs were joined for the HTTP/1.1 upstream (RFC 9113 8.2.3)
    assert seen["headers"]["host"] == f"127.0.0.1:{gw.port}"
    assert seen["headers"]["cookie"] == "a=1; b=2"
    out = curl("-i", "--http1.1", gw.url("/echo"))
    assert out.stdout.startswith("HTTP/1.1 200"), out


def test_curl_alpn_h2(gw: Gateway) -> None:
    ca = Path(gw.root / "ca.pem")
    ca.write_text(gw.ca)  # type: ignore[attr-defined]
    res = f"h2.test:{gw.tls_port}:127.0.0.1"
    out = curl("-i", "--http2", "--cacert", str(ca), "--resolve", res,
               f"https://h2.test:{gw.tls_port}/tls")  # fmt: skip
    head, _, body = out.stdout.partition("\n\n")
    assert head.startswith("HTTP/2 200"), out
    assert json.loads(body)["headers"]["x-forwarded-proto"] == "https"
    out = curl("-i", "--http1.1", "--cacert", str(ca), "--resolve", res,
               f"https://h2.test:{gw.tls_port}/tls")  # fmt: skip
    assert out.stdout.startswith("HTTP/1.1 200"), out


def test_concurrent_streams_on_one_connection(gw: Gateway) -> None:
    c = H2Client(gw.port)
    try:
        # a slow answer does not hold up the quick ones behind it (no head-of-line blocking)
        slow = c.send_request("/slow/600")
        quick = [c.send_request(f"/echo/{i}") for i in range(20)]
        answers = c.wait(*quick)
        assert not c.answers[slow].done  # all quick ones came back before the slow one
        for i, a in enumerate(answers):
            assert a.status == 200 and json.loads(a.body)["path"] == f"/echo/{i}"
        (s,) = c.wait(slow)
        assert s.status == 200
    finally:
        c.close()


def test_large_bodies_with_small_windows(gw: Gateway, up: Upstream) -> None:
    big = os.urandom(3 * 1024 * 1024)
    c = H2Client(gw.port, window=16384)  # the client's stream window: 16 KB
    try:
        sid = c.send_request("/upload", method="POST", body=big,
                             headers=[("content-type", "application/octet-stream")])  # fmt: skip
        (a,) = c.wait(sid, timeout=30)
        assert a.status == 200
        got = json.loads(a.body)["body"].encode("latin-1")
        assert len(got) == len(big) and hashlib.sha256(got).digest() == hashlib.sha256(big).digest()
        # no content-length from the client: the upstream got it chunked, whole
        sid = c.send_request("/upload2", method="POST", body=big[:1_000_000])
        (a,) = c.wait(sid, timeout=30)
        assert hashlib.sha256(json.loads(a.body)["body"].encode("latin-1")).digest() == (
            hashlib.sha256(big[:1_000_000]).digest()
        )
        n = 5 * 1024 * 1024
        (a,) = c.wait(c.send_request(f"/big/{n}"), timeout=30)  # h2 checks our window use
        assert a.status == 200 and len(a.body) == n and a.body == b"x" * n
    finally:
        c.close()


def test_request_trailers_end_the_body(gw: Gateway) -> None:
    """A request body ended by trailers (RFC 9113 8.1: HEADERS with END_STREAM after the
    DATA) is complete there: the upstream gets it whole and the client its answer (the
    trailers are one event that ends the stream, no StreamEnded after it)."""
    c = H2Client(gw.port)
    try:
        sid = c.send_request("/upload", method="POST", body=b"part-1,part-2", end=False)
        c.conn.send_headers(sid, [(b"x-checksum", b"abc")], end_stream=True)
        c.flush()
        (a,) = c.wait(sid)
        assert a.status == 200
        assert json.loads(a.body)["body"] == "part-1,part-2"
    finally:
        c.close()


def test_response_waits_for_the_window(gw: Gateway) -> None:
    """A client that opens no window gets no more than the window; the rest follows its
    WINDOW_UPDATEs, and nothing is lost."""
    c = H2Client(gw.port, window=65535, auto_ack=False)
    try:
        n = 2 * 1024 * 1024
        sid = c.send_request(f"/big/{n}")
        c.read_once(timeout=5)
        wait_until(lambda: _read_a_bit(c) and len(c.answers[sid].body) >= 65535, timeout=5)
        assert len(c.answers[sid].body) == 65535  # exactly the window, no more
        while not c.answers[sid].done:
            c.ack_all()
            c.read_once(timeout=5)
        assert c.answers[sid].body == b"x" * n
    finally:
        c.close()


def _read_a_bit(c: H2Client) -> bool:
    try:
        c.read_once(timeout=0.2)
    except TimeoutError:
        pass
    return True


def test_plugins_on_streams_and_the_access_log(gw: Gateway) -> None:
    c = H2Client(gw.port)
    try:
        assert c.get("/auth/x").status == 401
        ok = c.get("/auth/x", headers=[("apikey", "jack-key")])
        assert ok.status == 200 and json.loads(ok.body)["path"] == "/auth/x"
        first = c.get("/limited")  # the quota headers, set in access, on an HTTP/2 head too
        assert first.header(b"x-ratelimit-limit") == b"2"
        assert first.header(b"x-ratelimit-remaining") == b"1"
        codes = [first.status] + [c.get("/limited").status for _ in range(2)]
        assert codes == [200, 200, 429]
        rw = c.get("/rewritten")
        assert rw.status == 200 and rw.body == b"rewritten\n" and rw.header(b"x-rw") == b"yes"
        assert rw.header(b"x-proto") == b"HTTP/2.0"  # $server_protocol
    finally:
        c.close()
    log = gw.root / "logs" / "access.log"
    # (the log is written in batches: the last request's line may come a flush later)
    wanted = ('"GET /auth/x HTTP/2.0" 401', '"GET /rewritten HTTP/2.0" 200')
    wait_until(lambda: log.exists() and all(w in log.read_text() for w in wanted), timeout=10)


def test_http2_disabled(tmp_path: Path, up: Upstream) -> None:
    cert, key = self_signed(tmp_path, "h2.test", "DNS:h2.test")
    ssls = f"ssls: {json.dumps([{'id': 'a', 'cert': cert, 'key': key, 'snis': ['h2.test']}])}\n"
    with Gateway(tmp_path, apisix_yaml=_yaml(up, ssls),
                 config={"apisix": {"enable_http2": False}}) as g:  # fmt: skip
        # the preface is an "HTTP/2.0" request line: 505, as nginx without http2
        out = send_raw(g.port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 505"), out
        ca = tmp_path / "ca.pem"
        ca.write_text(cert)
        out2 = curl("-i", "--http2", "--cacert", str(ca), "--resolve",
                    f"h2.test:{g.tls_port}:127.0.0.1", f"https://h2.test:{g.tls_port}/x")  # fmt: skip
        assert out2.stdout.startswith("HTTP/1.1 200"), out2  # ALPN offered only http/1.1


def test_legacy_listener_setting_starts(tmp_path: Path, up: Upstream) -> None:
    """APISIX <= 3.8's per-listener enable_http2 is accepted (older configs start)."""
    with Gateway(tmp_path, apisix_yaml=_yaml(up)) as g:
        g.config["apisix"]["node_listen"][0]["enable_http2"] = True
        g.config["apisix"]["ssl"]["listen"][0]["enable_http2"] = True
        g.write_config()
        g.stop()
        g.start()
        out = curl("-i", "--http2-prior-knowledge", g.url("/echo"))
        assert out.stdout.startswith("HTTP/2 200"), out


def test_goaway_on_graceful_stop(tmp_path: Path, up: Upstream) -> None:
    with Gateway(tmp_path, apisix_yaml=_yaml(up)) as g:
        c = H2Client(g.port)
        try:
            assert c.get("/echo").status == 200
            sid = c.send_request("/slow/1500")
            wait_until(lambda: any(r["path"] == "/slow/1500" for r in up.requests), timeout=5)
            stopper = threading.Thread(target=g.signal, args=(signal.SIGTERM,))
            stopper.start()
            stopper.join()
            (a,) = c.wait(sid, timeout=10)  # the in-flight stream completes
            assert a.status == 200
            assert c.goaway is not None and c.goaway.error_code == 0
            assert c.goaway.last_stream_id == sid
        finally:
            c.close()


def test_goaway_on_reload(tmp_path: Path, up: Upstream) -> None:
    """SIGHUP: new workers take over; the old one says GOAWAY and finishes its streams."""
    with Gateway(tmp_path, apisix_yaml=_yaml(up)) as g:
        old = g.worker_pids()
        c = H2Client(g.port)
        try:
            assert c.get("/echo").status == 200
            sid = c.send_request("/slow/1500")
            wait_until(lambda: any(r["path"] == "/slow/1500" for r in up.requests), timeout=5)
            g.signal(signal.SIGHUP)
            (a,) = c.wait(sid, timeout=15)
            assert a.status == 200
            # the GOAWAY went out when the stop began: read on until it is seen
            wait_until(lambda: c.goaway is not None or (_read_a_bit(c) and c.goaway is not None))
            assert c.goaway is not None and c.goaway.error_code == 0
        finally:
            c.close()
        wait_until(lambda: set(g.worker_pids()).isdisjoint(old) and g.worker_pids(), timeout=20)
        assert H2Client(g.port).get("/after-reload").status == 200


def test_idle_connection_closed_after_keepalive_timeout(tmp_path: Path, up: Upstream) -> None:
    conf = {"nginx_config": {"http": {"keepalive_timeout": "1s"}}}
    with Gateway(tmp_path, apisix_yaml=_yaml(up), config=conf) as g:
        c = H2Client(g.port)
        try:
            assert c.get("/echo").status == 200
            started = time.monotonic()
            assert c.read_until_closed(timeout=10)  # GOAWAY, then closed
            assert 0.8 <= time.monotonic() - started < 5
            assert c.goaway is not None and c.goaway.error_code == 0
            busy = H2Client(g.port)  # a connection with a stream in flight stays open
            sid = busy.send_request("/slow/1600")
            assert busy.wait(sid, timeout=10)[0].status == 200
            busy.close()
        finally:
            c.close()


def test_request_body_window_opens_only_as_the_upstream_takes_it(tmp_path: Path) -> None:
    """An upstream that reads nothing: the gateway stops opening the stream's window once its
    buffer (and the sockets') are full, so a client cannot make it hold an unbounded body."""
    sink = socket.socket()
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sink.bind(("127.0.0.1", 0))
    sink.listen()
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(sink.accept()[0]), daemon=True).start()
    node = f"127.0.0.1:{sink.getsockname()[1]}"
    routes = f'routes:\n  - {{id: 1, uri: /*, upstream: {{nodes: {{"{node}": 1}}}}}}\n#END\n'
    with Gateway(tmp_path, apisix_yaml=routes) as g:
        c = H2Client(g.port)
        try:
            sid = c.send_request("/upload", method="POST", body=b"", end=False)
            sent, chunk = 0, b"z" * 16384
            while sent < 64 * 1024 * 1024:
                room = min(c.conn.local_flow_control_window(sid), len(chunk))
                if room <= 0:
                    try:
                        c.read_once(timeout=1.5)
                    except TimeoutError:
                        break  # no WINDOW_UPDATE for 1.5 s: the gateway stopped taking it
                    continue
                c.conn.send_data(sid, chunk[:room])
                c.flush()
                sent += room
            assert held, "the gateway never connected upstream"
            # what the gateway took: its buffer (BODY_HIGH_WATER), the stream window and the
            # loopback socket buffers; far from the 64 MB offered
            assert 256 * 1024 < sent < 8 * 1024 * 1024, sent  # (3.2 MB seen)
        finally:
            c.close()
            for s in held:
                s.close()
            sink.close()


def test_streamed_request_body_while_the_response_flows(tmp_path: Path) -> None:
    """A request body of no length (gRPC's client streaming) goes upstream as it comes: the
    response starts before the client ends its stream."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    seen: list[bytes] = []

    def upstream() -> None:
        conn, _ = srv.accept()
        data = b""
        while b"first" not in data:
            data += conn.recv(65536)
        seen.append(data)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        while not data.endswith(b"0\r\n\r\n"):
            data += conn.recv(65536)
        seen.append(data)
        conn.sendall(b"0\r\n\r\n")
        conn.close()

    threading.Thread(target=upstream, daemon=True).start()
    node = f"127.0.0.1:{srv.getsockname()[1]}"
    routes = f'routes:\n  - {{id: 1, uri: /*, upstream: {{nodes: {{"{node}": 1}}}}}}\n#END\n'
    with Gateway(tmp_path, apisix_yaml=routes) as g:
        c = H2Client(g.port)
        try:
            sid = c.send_request("/svc.Echo/Talk", method="POST", body=b"first", end=False,
                                 headers=[("content-type", "application/grpc"),
                                          ("te", "trailers")])  # fmt: skip
            wait_until(lambda: _read_a_bit(c) and c.answers[sid].status == 200)
            assert not c.answers[sid].done  # the response started, the request goes on
            c.send_body(sid, b"second", end=True)
            (a,) = c.wait(sid)
            assert a.body == b"hello"
            head = seen[0].lower()
            assert (
                b"transfer-encoding: chunked" in head and b"content-type: application/grpc" in head
            )
            assert b"second" in seen[1]
        finally:
            c.close()
            srv.close()


def test_malformed_request_resets_only_its_stream(gw: Gateway) -> None:
    """RFC 9113 8.1.1: a malformed request is a stream error; the connection goes on."""
    c = H2Client(gw.port)
    try:
        c.conn.config.validate_outbound_headers = False  # let the client send what h2 refuses
        c.conn.config.normalize_outbound_headers = False
        bad = c.send_request("/bad", headers=[("x-split", "a\r\nx-injected: 1")])
        upper = c.send_request("/bad", headers=[("X-Upper", "1")])
        a, b = c.wait(bad, upper)
        assert a.reset == ErrorCodes.PROTOCOL_ERROR and b.reset == ErrorCodes.PROTOCOL_ERROR
        assert c.get("/echo").status == 200  # same connection, still served
    finally:
        c.close()


def test_connect_answered_405_on_its_stream(gw: Gateway) -> None:
    """RFC 9113 8.5: CONNECT (:authority only) is well-formed; the gateway is no forward proxy
    and answers 405 as on HTTP/1.1 (nginx too), on that stream alone. Without END_STREAM (a
    tunnel's first bytes would follow) the stream is also reset with NO_ERROR (8.1)."""
    c = H2Client(gw.port)
    try:
        head = [(b":method", b"CONNECT"), (b":authority", b"example.test:443")]
        ended = c.conn.get_next_available_stream_id()
        c.conn.send_headers(ended, head, end_stream=True)
        tunnel = c.conn.get_next_available_stream_id()
        c.conn.send_headers(tunnel, head)
        c.answers[ended] = Answer()
        c.answers[tunnel] = Answer()
        c.flush()
        a, b = c.wait(ended, tunnel)
        assert a.status == 405 and b"405 Not Allowed" in a.body and a.reset is None
        assert b.status == 405 and b.reset in (None, ErrorCodes.NO_ERROR)
        assert c.get("/echo").status == 200  # the connection goes on
    finally:
        c.close()
