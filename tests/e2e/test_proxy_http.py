"""The data plane through the real process: proxying, framing, limits, errors (issue #2)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
import requests

from tests.support.gateway import Gateway, free_port, send_raw, wait_until
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: 1
    uri: /echo*
    upstream: {nodes: {"%(up)s": 1}}
  - id: refused
    uri: /refused
    upstream: {nodes: {"127.0.0.1:%(dead)d": 1}}
  - id: hang
    uri: /hang
    timeout: {connect: 1, send: 1, read: 0.5}
    upstream: {nodes: {"%(up)s": 1}}
  - id: empty
    uri: /empty
    upstream: {nodes: {}}
  - id: noup
    uri: /noupstream
    upstream_id: missing
  - id: nosvc
    uri: /noservice
    service_id: missing
  - id: status
    uri: /status/*
    upstream: {nodes: {"%(up)s": 1}}
  - id: slow
    uri: /slow/*
    upstream: {nodes: {"%(up)s": 1}}
  - id: node
    uri: /passnode
    upstream: {nodes: {"%(up)s": 1}, pass_host: node}
  - id: rewrite
    uri: /passrewrite
    upstream: {nodes: {"%(up)s": 1}, pass_host: rewrite, upstream_host: rewritten.example}
  - id: chunked
    uri: /chunked
    upstream: {nodes: {"%(up)s": 1}}
  - id: big
    uri: /big/*
    upstream: {nodes: {"%(up)s": 1}}
  - id: pr
    uri: /pr
    plugins:
      proxy-rewrite:
        uri: /echo/rewritten
        headers: {set: {X-Set: "v-$arg_a"}, add: {X-Add: a2}, remove: [X-Drop]}
      response-rewrite:
        status_code: 201
        headers: {set: {X-Resp: "yes"}}
    upstream: {nodes: {"%(up)s": 1}}
  - id: rrbody
    uri: /rrbody
    plugins:
      response-rewrite: {body: "replaced\\n"}
    upstream: {nodes: {"%(up)s": 1}}
  - id: host-only
    uri: /byhost
    hosts: [foo.example]
    plugins:
      response-rewrite: {body: "host route\\n"}
    upstream: {nodes: {"%(up)s": 1}}
  - id: hostless
    uri: /byhost
    plugins:
      response-rewrite: {body: "hostless route\\n"}
    upstream: {nodes: {"%(up)s": 1}}
  - id: toggled-a
    uri: /toggled
    plugins:
      response-rewrite: {body: "a\\n"}
    upstream: {nodes: {"%(up)s": 1}}
  - id: toggled-b
    uri: /toggled
    plugins:
      response-rewrite: {body: "b\\n"}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Gateway]:
    root: Path = tmp_path_factory.mktemp("gw")
    g = Gateway(
        root,
        apisix_yaml=CONFIG % {"up": upstream.addr, "dead": free_port()},
        config={"nginx_config": {"http": {"client_max_body_size": "1m"}}},
    )
    with g:
        yield g


def raw(gw: Gateway, data: bytes, *, read_until_close: bool = True, timeout: float = 5) -> bytes:
    return send_raw(gw.port, data, read_until_close=read_until_close, timeout=timeout)


def test_get_is_proxied_with_forwarded_headers(gw: Gateway) -> None:
    r = requests.get(gw.url("/echo/a?x=1"), headers={"X-Forwarded-For": "10.0.0.9"})
    assert r.status_code == 200
    body = r.json()
    assert body["path"] == "/echo/a?x=1"
    h = body["headers"]
    assert h["x-forwarded-for"] == "10.0.0.9, 127.0.0.1"
    assert h["x-real-ip"] == "127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-host"] == "127.0.0.1"
    assert h["x-forwarded-port"] == str(gw.port)
    assert h["host"] == f"127.0.0.1:{gw.port}"  # pass_host: pass
    assert r.headers["Server"].startswith("Tollway/")
    assert r.headers["X-Upstream"] == "up1"


def test_hop_by_hop_headers_are_not_forwarded(gw: Gateway) -> None:
    r = requests.get(
        gw.url("/echo"),
        headers={
            "Connection": "keep-alive, X-Secret",
            "X-Secret": "1",
            "Keep-Alive": "5",
            "TE": "x",
        },
    )
    h = r.json()["headers"]
    assert "x-secret" not in h and "keep-alive" not in h and "te" not in h


def test_post_body_content_length_and_chunked(gw: Gateway) -> None:
    r = requests.post(gw.url("/echo"), data=b"hello world")
    assert r.json()["body"] == "hello world"
    r = requests.post(gw.url("/echo"), data=iter([b"ab", b"cd", b"ef"]))  # chunked upload
    assert r.json()["body"] == "abcdef"


def test_large_bodies_stream_both_ways(gw: Gateway) -> None:
    r = requests.get(gw.url("/big/5000000"))
    assert r.status_code == 200 and len(r.content) == 5_000_000
    payload = b"y" * 900_000
    r = requests.post(gw.url("/echo"), data=payload)
    assert len(r.json()["body"]) == 900_000


def test_chunked_response_is_rechunked(gw: Gateway) -> None:
    r = requests.get(gw.url("/chunked"))
    assert r.text == "part0;part1;part2;"
    assert r.headers.get("Transfer-Encoding") == "chunked"


def test_route_not_found(gw: Gateway) -> None:
    r = requests.get(gw.url("/nothing-here"))
    assert r.status_code == 404
    assert r.content == b'{"error_msg":"404 Route Not Found"}\n'
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"  # nginx's default_type
    assert r.headers["Server"].startswith("Tollway/")
    # like every answer nginx makes (RFC 9110 6.6.1)
    assert parsedate_to_datetime(r.headers["Date"]).tzinfo is not None


def test_upstream_errors_map_to_apisix_statuses(gw: Gateway) -> None:
    r = requests.get(gw.url("/refused"))
    assert r.status_code == 502 and "502 Bad Gateway" in r.text
    r = requests.get(gw.url("/hang"))
    assert r.status_code == 504
    assert requests.get(gw.url("/empty")).status_code == 503
    assert requests.get(gw.url("/noupstream")).status_code == 502
    r = requests.get(gw.url("/noservice"))
    assert r.status_code == 404 and "404 Route Not Found" not in r.text


def test_upstream_5xx_is_passed_with_status_header(gw: Gateway) -> None:
    r = requests.get(gw.url("/status/503"))
    assert r.status_code == 503
    assert r.headers["X-APISIX-Upstream-Status"] == "503"
    r = requests.get(gw.url("/status/201"))
    assert r.status_code == 201 and "X-APISIX-Upstream-Status" not in r.headers


def test_head_204_304(gw: Gateway) -> None:
    r = requests.head(gw.url("/big/1000"))
    assert r.status_code == 200 and r.content == b""
    assert r.headers["Content-Length"] == "1000"
    assert requests.get(gw.url("/status/204")).status_code == 204
    assert requests.get(gw.url("/status/304")).status_code == 304
    # The connection stays usable after HEAD (the parser must not wait for a body).
    out = raw(
        gw,
        b"HEAD /big/10 HTTP/1.1\r\nHost: a\r\n\r\nGET /echo/2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    assert out.count(b"HTTP/1.1 200") == 2 and b'"/echo/2"' in out


def test_pass_host_node_and_rewrite(gw: Gateway, upstream: Upstream) -> None:
    assert requests.get(gw.url("/passnode")).json()["headers"]["host"] == upstream.addr
    r = requests.get(gw.url("/passrewrite"))
    assert r.json()["headers"]["host"] == "rewritten.example"


def test_keepalive_and_pipelining_in_order(gw: Gateway) -> None:
    reqs = (
        b"".join(b"GET /echo/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
        + b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    out = raw(gw, reqs)
    positions = [out.find(b'"/echo/%d"' % i) for i in range(5)]
    assert all(p > 0 for p in positions) and positions == sorted(positions)
    assert out.count(b"HTTP/1.1 200 OK") == 5 and b"404 Route Not Found" in out


def read_response(s: socket.socket) -> tuple[bytes, bytes]:
    """One Content-Length response from a keep-alive connection: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(v for k, _, v in (line.partition(b": ") for line in head.split(b"\r\n"))
                      if k.lower() == b"content-length"))  # fmt: skip
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk
        body += chunk
    return head, body


def test_each_request_on_a_connection_sends_its_own_headers(gw: Gateway) -> None:
    # The upstream head after the request line is cached per connection: a change of any client
    # header, or of Host, must reach the upstream.
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        seen = []
        for host, extra in [
            (b"a.example", b"X-A: 1\r\n"),
            (b"a.example", b"X-A: 1\r\n"),
            (b"a.example", b"X-A: 2\r\n"),
            (b"b.example:8080", b"X-A: 2\r\n"),
            (b"b.example:8080", b""),
        ]:
            s.sendall(b"GET /echo/h HTTP/1.1\r\nHost: " + host + b"\r\n" + extra + b"\r\n")
            head, body = read_response(s)
            assert head.startswith(b"HTTP/1.1 200"), head
            h = json.loads(body)["headers"]
            seen.append((h["host"], h.get("x-a"), h["x-forwarded-host"]))
    assert seen == [
        ("a.example", "1", "a.example"),
        ("a.example", "1", "a.example"),
        ("a.example", "2", "a.example"),
        ("b.example:8080", "2", "b.example"),
        ("b.example:8080", None, "b.example"),
    ]


def test_http10_keep_alive_is_kept(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        for i in range(2):
            s.sendall(b"GET /echo/k%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % i)
            head, body = read_response(s)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert b"\r\nConnection: keep-alive" in head
            assert b"/echo/k%d" % i in body


def test_concurrent_pipelined_connections_get_their_answers_in_order(gw: Gateway) -> None:
    # 24 connections at once, each pipelining three requests (the upstream answers the first
    # after 20 ms, so many requests are in flight together and the worker batches its writes:
    # ServerState.send), the last one asking to close: every connection gets its three answers,
    # in order, before the close.
    def one(i: int) -> bytes:
        reqs = (
            b"GET /slow/20?c=%d&n=0 HTTP/1.1\r\nHost: x\r\n\r\n" % i
            + b"GET /echo/c%d/n1 HTTP/1.1\r\nHost: x\r\n\r\n" % i
            + b"GET /echo/c%d/n2 HTTP/1.0\r\nHost: x\r\n\r\n" % i
        )
        return raw(gw, reqs, timeout=10)

    with ThreadPoolExecutor(24) as pool:
        outs = list(pool.map(one, range(24)))
    for i, out in enumerate(outs):
        assert out.count(b"HTTP/1.1 200 OK") == 3, out[:300]
        p0 = out.find(b"c=%d&n=0" % i)
        p1 = out.find(b"/echo/c%d/n1" % i)
        p2 = out.find(b"/echo/c%d/n2" % i)
        assert 0 < p0 < p1 < p2, (i, p0, p1, p2)
        assert out.endswith(b"}"), out[-100:]  # the last answer is whole


def test_http10_and_expect_continue(gw: Gateway) -> None:
    out = raw(gw, b"GET /echo/old HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and b'"/echo/old"' in out
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(b"hello")
        data = b""
        while b'"body": "hello"' not in data:
            chunk = s.recv(65536)
            assert chunk
            data += chunk


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n", 413),
        (b"GARBAGE\r\n\r\n", 400),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\ncontent-length: 3\r\nCONTENT-LENGTH: 4\r\n\r\nabcd",
            400,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\ncOnTeNt-LeNgTh: 3\r\n"
            b"transfer-ENCODING: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            400,
        ),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n", 400),
        (b"GET /echo HTTP/1.1\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\nHost: a..example\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
        (b"GET /echo/../.. HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\nHost:\r\n\r\n", 400),
    ],
    ids=[
        "431-headers",
        "413-body",
        "400-garbage",
        "400-cl-te",
        "400-dup-cl",
        "400-dup-cl-any-case",
        "400-cl-te-any-case",
        "400-bad-cl",
        "400-chunk",
        "400-http11-without-host",
        "400-host-with-empty-label",
        "400-host-with-slash",
        "400-dot-dot-above-root",
        "400-http11-empty-host",
    ],
)
def test_bad_requests_get_their_status(gw: Gateway, request_bytes: bytes, status: int) -> None:
    out = raw(gw, request_bytes)
    assert out.startswith(b"HTTP/1.1 %d" % status), out[:200]
    assert b"\r\nDate: " in out.partition(b"\r\n\r\n")[0]
    # The worker is still fine.
    assert requests.get(gw.url("/echo")).status_code == 200


def test_chunked_body_over_limit_is_413(gw: Gateway) -> None:
    def gen() -> Iterator[bytes]:
        for _ in range(40):
            yield b"z" * 65536

    r = requests.post(gw.url("/echo"), data=gen())
    assert r.status_code == 413


def test_proxy_rewrite_and_response_rewrite(gw: Gateway) -> None:
    sent = {
        "X-Drop": "1",
        "X-Set": "client",
        "X-Add": "a1",
        "X-Keep": "k",
        "X-Forwarded-For": "9.9.9.9",
    }
    r = requests.get(gw.url("/pr?a=7"), headers=sent)
    assert r.status_code == 201
    assert r.headers["X-Resp"] == "yes"
    body = r.json()
    assert body["path"] == "/echo/rewritten?a=7"
    h = body["headers"]
    assert h["x-set"] == "v-7"  # replaced, not appended
    assert h["x-add"] == "a1, a2"
    assert "x-drop" not in h
    assert h["x-keep"] == "k"  # headers no plugin touched pass as sent
    assert h["x-forwarded-for"] == "9.9.9.9, 127.0.0.1"
    r = requests.get(gw.url("/rrbody"))
    assert r.text == "replaced\n"


def test_host_is_read_as_nginx_does(gw: Gateway) -> None:
    # a trailing dot is dropped (nginx ngx_http_validate_host): the host route still applies
    out = raw(gw, b"GET /byhost HTTP/1.1\r\nHost: FOO.example.:8080\r\nConnection: close\r\n\r\n")
    assert b"host route\n" in out and b"hostless" not in out, out[-80:]
    # absolute-form: the request line's host wins over the Host header
    out = raw(
        gw,
        b"GET http://foo.example/byhost HTTP/1.1\r\nHost: other.example\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert b"host route\n" in out and b"hostless" not in out, out[-80:]


def test_a_route_disabled_and_enabled_again_keeps_its_place(gw: Gateway) -> None:
    # APISIX keeps a status-0 route among its values: enabled again, it wins the tie again.
    def body() -> bytes:
        return requests.get(gw.url("/toggled"), timeout=5).content

    assert body() == b"a\n"
    text = (gw.conf_dir / "apisix.yaml").read_text()
    gw.write_yaml(text.replace("  - id: toggled-a\n", "  - id: toggled-a\n    status: 0\n"))
    wait_until(lambda: body() == b"b\n")
    gw.write_yaml(text)
    wait_until(lambda: body() == b"a\n")
    # the file's order decides ties: b written before a wins (a reload is followed in order)
    start, end = text.index("  - id: toggled-a\n"), text.index("#END")
    a_block, b_block = text[start:end].split("  - id: toggled-b\n")
    gw.write_yaml(text[:start] + "  - id: toggled-b\n" + b_block + a_block + text[end:])
    wait_until(lambda: body() == b"b\n")
    gw.write_yaml(text)
    wait_until(lambda: body() == b"a\n")


def test_path_is_normalised_before_matching(gw: Gateway) -> None:
    r = requests.get(gw.url("/x/../echo/n"))  # requests keeps dot segments as given
    assert r.status_code == 200 and r.json()["path"].startswith("/echo/n")
    out = raw(gw, b"GET /%65cho/enc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200")


def test_access_log_is_written(gw: Gateway) -> None:
    requests.get(gw.url("/echo/logged-line"))
    log_file = gw.root / "logs" / "access.log"
    wait_until(lambda: log_file.exists() and b"/echo/logged-line" in log_file.read_bytes())
    line = next(x for x in log_file.read_text().splitlines() if "/echo/logged-line" in x)
    assert '"GET /echo/logged-line HTTP/1.1" 200' in line
