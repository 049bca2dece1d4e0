"""The loggers through the real process, each with a receiver that speaks its protocol: TCP,
UDP and syslog listeners, and HTTP servers accepting Loki's push API, Elasticsearch's ``_bulk``
and ClickHouse's HTTP insert. Checks the entries, the batching, retries after a receiver
failure, and that a dead receiver never slows or fails requests."""

from __future__ import annotations

import json
import re
import socketserver
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway, free_port, wait_until
from tests.support.upstream import Upstream


class TcpReceiver:
    """Keeps what each connection sent, once it closes."""

    def __init__(self, port: int = 0) -> None:
        self.chunks: list[bytes] = []
        rx = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data = b""
                while chunk := self.request.recv(65536):
                    data += chunk
                rx.chunks.append(data)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class UdpReceiver:
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []
        rx = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                rx.datagrams.append(self.request[0])

        self.server = socketserver.UDPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HttpReceiver:
    """Records POSTs; answers 500 to the first ``fail[path]`` POSTs on a path, then
    ``ok_status``."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.fail: dict[str, int] = {}
        rx = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                path = self.path.split("?")[0]
                if rx.fail.get(path, 0) > 0:
                    rx.fail[path] -= 1
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                rx.posts.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body.decode(),
                    }
                )
                # Loki answers 204; Elasticsearch and ClickHouse 200.
                status = 204 if path.startswith("/loki") else 200
                out = b'{"took":1,"errors":false,"items":[]}' if status == 200 else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def on(self, path: str, n: int = 1) -> list[dict[str, Any]]:
        def got() -> list[dict[str, Any]] | None:
            found = [p for p in self.posts if p["path"].split("?")[0] == path]
            return found if len(found) >= n else None

        found: list[dict[str, Any]] = wait_until(got, timeout=10)
        return found

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


CONFIG = """
routes:
  - id: tcp
    uri: /tcp
    plugins:
      tcp-logger: {host: 127.0.0.1, port: %(tcp)d, batch_max_size: 2, inactive_timeout: 1}
    upstream: {nodes: {"%(up)s": 1}}
  - id: udp
    uri: /udp
    plugins:
      udp-logger:
        host: 127.0.0.1
        port: %(udp)d
        batch_max_size: 1
        log_format: {path: "$uri", method: "$request_method"}
    upstream: {nodes: {"%(up)s": 1}}
  - id: syslog-tcp
    uri: /syslog-tcp
    plugins:
      syslog: {host: 127.0.0.1, port: %(tcp)d, batch_max_size: 1}
    upstream: {nodes: {"%(up)s": 1}}
  - id: syslog-udp
    uri: /syslog-udp
    plugins:
      syslog: {host: 127.0.0.1, port: %(udp)d, sock_type: udp, batch_max_size: 1}
    upstream: {nodes: {"%(up)s": 1}}
  - id: file
    uri: /file
    plugins:
      file-logger:
        path: "%(file)s"
        include_resp_body: true
        include_resp_body_expr: [["arg_body", "==", "yes"]]
        match: [["arg_skip", "~=", "yes"]]
    upstream: {nodes: {"%(up)s": 1}}
  - id: loki
    uri: /loki
    plugins:
      loki-logger:
        endpoint_addrs: ["%(http)s"]
        tenant_id: t1
        log_labels: {job: apisix, route: "$route_id", m: "${request_method}"}
        headers: {X-Extra: "1"}
        batch_max_size: 3
        inactive_timeout: 1
        max_retry_count: 2
        retry_delay: 0
    upstream: {nodes: {"%(up)s": 1}}
  - id: es
    uri: /es
    plugins:
      elasticsearch-logger:
        endpoint_addr: "%(http)s"
        field: {index: "gw-$route_id"}
        auth: {username: elastic, password: s3cret}
        batch_max_size: 2
        inactive_timeout: 1
        max_retry_count: 1
        retry_delay: 0
    upstream: {nodes: {"%(up)s": 1}}
  - id: clickhouse
    uri: /clickhouse
    plugins:
      clickhouse-logger:
        endpoint_addr: "%(http)s/ch?query_id=1"
        user: default
        password: pw
        database: logs
        logtable: access
        batch_max_size: 2
        inactive_timeout: 1
        max_retry_count: 1
        retry_delay: 0
        log_format: {host: "$host", status: "$status"}
    upstream: {nodes: {"%(up)s": 1}}
  - id: tcp-late
    uri: /tcp-late
    plugins:
      tcp-logger:
        {host: 127.0.0.1, port: %(late)d, batch_max_size: 1, max_retry_count: 10, retry_delay: 1}
    upstream: {nodes: {"%(up)s": 1}}
  - id: dead
    uri: /dead
    plugins:
      tcp-logger:
        {host: 127.0.0.1, port: %(dead)d, batch_max_size: 1, max_retry_count: 3, retry_delay: 1}
      loki-logger:
        {endpoint_addrs: ["http://127.0.0.1:%(dead)d"], batch_max_size: 1, max_retry_count: 3}
      clickhouse-logger:
        endpoint_addr: "http://10.255.255.1:8123"
        user: u
        password: p
        database: d
        logtable: t
        batch_max_size: 1
        timeout: 5
      udp-logger: {host: 127.0.0.1, port: %(dead)d, batch_max_size: 1}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


LATE_PORT = free_port()


@pytest.fixture(scope="module")
def tcp() -> Iterator[TcpReceiver]:
    rx = TcpReceiver()
    yield rx
    rx.stop()


@pytest.fixture(scope="module")
def udp() -> Iterator[UdpReceiver]:
    rx = UdpReceiver()
    yield rx
    rx.stop()


@pytest.fixture(scope="module")
def http() -> Iterator[HttpReceiver]:
    rx = HttpReceiver()
    yield rx
    rx.stop()


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("files") / "access.jsonl"


@pytest.fixture(scope="module")
def gw(
    standalone_gateway: StartGateway,
    upstream: Upstream,
    tcp: TcpReceiver,
    udp: UdpReceiver,
    http: HttpReceiver,
    log_file: Path,
) -> Gateway:
    text = CONFIG % {
        "up": upstream.addr,
        "tcp": tcp.port,
        "udp": udp.port,
        "http": http.addr,
        "file": log_file,
        "dead": free_port(),
        "late": LATE_PORT,
    }
    return standalone_gateway(text)


def get(gw: Gateway, path: str, **kw: Any) -> requests.Response:
    r = requests.get(gw.url(path), timeout=5, **kw)
    assert r.status_code == 200
    return r


def test_tcp_logger_batches(gw: Gateway, tcp: TcpReceiver) -> None:
    for i in range(3):
        get(gw, f"/tcp?i={i}")

    def batches() -> list[Any] | None:
        found = [json.loads(c) for c in tcp.chunks if c.startswith(b"[")]
        found = [b for b in found if b[0].get("route_id") == "tcp"]
        return found if sum(len(b) for b in found) >= 3 else None

    got = wait_until(batches, timeout=10)
    assert [len(b) for b in got] == [2, 1]  # a full batch, then the rest after 1 s idle
    assert [e["request"]["querystring"]["i"] for b in got for e in b] == ["0", "1", "2"]
    assert got[0][0]["response"]["status"] == 200 and got[0][0]["upstream"]


def test_tcp_logger_retries_until_the_receiver_is_up(gw: Gateway) -> None:
    get(gw, "/tcp-late")
    wait_until(lambda: f"port[{LATE_PORT}] err" in gw.logs())  # the first send failed
    late = TcpReceiver(LATE_PORT)  # the receiver comes up: a retry delivers the entry
    try:
        got = wait_until(lambda: [json.loads(c) for c in late.chunks if c], timeout=15)
        assert [e["route_id"] for e in got] == ["tcp-late"]
    finally:
        late.stop()


def test_udp_logger_with_log_format(gw: Gateway, udp: UdpReceiver) -> None:
    get(gw, "/udp")

    def entry() -> dict[str, Any] | None:
        for d in udp.datagrams:
            if d.startswith(b"{") and b'"/udp"' in d:
                e: dict[str, Any] = json.loads(d)
                return e
        return None

    assert wait_until(entry) == {"path": "/udp", "method": "GET", "route_id": "udp"}


RFC5424 = re.compile(rb"^<46>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z 127\.0\.0\.1 apisix \d+ - - ")


def test_syslog_over_tcp_and_udp(gw: Gateway, tcp: TcpReceiver, udp: UdpReceiver) -> None:
    get(gw, "/syslog-tcp")
    get(gw, "/syslog-udp")

    def message(source: list[bytes], route: str) -> dict[str, Any] | None:
        for m in source:
            head = RFC5424.match(m)
            if head and m.endswith(b"\n"):
                e: dict[str, Any] = json.loads(m[head.end() :])
                if e["route_id"] == route:
                    return e
        return None

    over_tcp = wait_until(lambda: message(tcp.chunks, "syslog-tcp"))
    assert over_tcp["request"]["uri"] == "/syslog-tcp"
    assert wait_until(lambda: message(udp.datagrams, "syslog-udp"))


def test_file_logger_lines_match_and_bodies(gw: Gateway, log_file: Path) -> None:
    get(gw, "/file?body=yes")
    get(gw, "/file?skip=yes")  # match: not logged
    get(gw, "/file?body=no")

    def lines() -> list[dict[str, Any]] | None:
        if not log_file.exists():
            return None
        found = [json.loads(line) for line in log_file.read_text().splitlines()]
        return found if len(found) >= 2 else None

    got = wait_until(lines)
    assert [e["request"]["querystring"] for e in got] == [{"body": "yes"}, {"body": "no"}]
    assert json.loads(got[0]["response"]["body"])["path"] == "/file?body=yes"
    assert "body" not in got[1]["response"]


def test_loki_push_api_with_labels_and_a_retry(gw: Gateway, http: HttpReceiver) -> None:
    http.fail["/loki/api/v1/push"] = 1  # the first push fails: the batch is retried
    for _ in range(2):
        get(gw, "/loki")
    requests.post(gw.url("/loki"), data=b"x", timeout=5)
    post = http.on("/loki/api/v1/push")[0]
    assert post["headers"]["x-scope-orgid"] == "t1" and post["headers"]["x-extra"] == "1"
    assert post["headers"]["content-type"] == "application/json"
    streams = json.loads(post["body"])["streams"]
    by_method = {s["stream"]["m"]: s for s in streams}
    assert by_method["GET"]["stream"] == {"job": "apisix", "route": "loki", "m": "GET"}
    assert len(by_method["GET"]["values"]) == 2 and len(by_method["POST"]["values"]) == 1
    ts, line = by_method["POST"]["values"][0]
    assert ts.isdigit() and len(ts) == 19 and ts.endswith("000000")
    assert json.loads(line)["request"]["method"] == "POST"
    assert http.fail["/loki/api/v1/push"] == 0 and len(http.on("/loki/api/v1/push")) == 1


def test_elasticsearch_bulk(gw: Gateway, http: HttpReceiver) -> None:
    http.fail["/_bulk"] = 1
    get(gw, "/es?n=1")
    get(gw, "/es?n=2")
    post = http.on("/_bulk")[0]
    assert post["headers"]["content-type"] == "application/x-ndjson"
    assert post["headers"]["authorization"] == "Basic ZWxhc3RpYzpzM2NyZXQ="
    lines = post["body"].split("\n")
    assert lines[-1] == "" and len(lines) == 5  # action + source per entry, newline-ended
    assert json.loads(lines[0]) == {"index": {"_index": "gw-es"}}
    assert json.loads(lines[1])["request"]["querystring"] == {"n": "1"}
    assert json.loads(lines[3])["request"]["querystring"] == {"n": "2"}


def test_clickhouse_insert(gw: Gateway, http: HttpReceiver) -> None:
    http.fail["/ch"] = 1  # a 500 first: the insert is retried
    get(gw, "/clickhouse")
    get(gw, "/clickhouse")
    post = http.on("/ch")[0]
    assert post["path"] == "/ch?query_id=1"
    h = post["headers"]
    assert (h["x-clickhouse-user"], h["x-clickhouse-key"], h["x-clickhouse-database"]) == (
        "default",
        "pw",
        "logs",
    )
    prefix = "INSERT INTO access FORMAT JSONEachRow "
    assert post["body"].startswith(prefix)
    rows = post["body"][len(prefix) :].split(" ")
    row = {"host": "127.0.0.1", "status": "200", "route_id": "clickhouse"}
    assert [json.loads(r) for r in rows] == [row, row]
    assert http.fail["/ch"] == 0 and len(http.on("/ch")) == 1


def test_dead_receivers_never_slow_or_fail_requests(gw: Gateway) -> None:
    # a refused TCP port, a refused HTTP port and a blackholed address, with retries
    get(gw, "/dead")  # warm
    times = []
    for _ in range(20):
        t0 = time.monotonic()
        get(gw, "/dead")
        times.append(time.monotonic() - t0)
    assert max(times) < 0.5, times
    # the sends were tried, failed and were retried meanwhile
    wait_until(lambda: "Batch Processor[tcp logger] failed to process entries" in gw.logs())
    wait_until(lambda: "Batch Processor[loki logger] failed to process entries" in gw.logs())


def test_flush_at_graceful_stop(tmp_path: Path, upstream: Upstream, tcp: TcpReceiver) -> None:
    text = f"""
routes:
  - id: stop-flush
    uri: /s
    plugins:
      tcp-logger: {{host: 127.0.0.1, port: {tcp.port}, inactive_timeout: 600}}
    upstream: {{nodes: {{"{upstream.addr}": 1}}}}
#END
"""
    g = Gateway(tmp_path, apisix_yaml=text).start()
    try:
        for _ in range(2):
            assert requests.get(g.url("/s"), timeout=5).status_code == 200
    finally:
        assert g.stop() == 0
    batch = json.loads(wait_until(lambda: [c for c in tcp.chunks if b"stop-flush" in c])[0])
    assert [e["route_id"] for e in batch] == ["stop-flush"] * 2
