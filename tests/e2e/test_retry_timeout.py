"""retry_timeout bounds the whole request, the retry on a fresh connection after a kept-alive
one failed included (issue #12: before, that fresh try started after the limit had passed)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from tests.support.gateway import Gateway

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"


class LateCloser:
    """Serves keep-alive requests; the ``close_at``-th request it reads is answered by closing
    the connection after ``delay`` seconds, without a byte (a kept-alive connection the upstream
    drops: the gateway sees no response and tries a fresh connection)."""

    def __init__(self, close_at: int, delay: float) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.close_at, self.delay = close_at, delay
        self.requests = 0
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    self.requests += 1
                    if self.requests == self.close_at:
                        time.sleep(self.delay)  # the upstream's behaviour, not a test wait
                        return
                    conn.sendall(OK)

    def close(self) -> None:
        self.sock.close()


def test_fresh_connection_after_a_dropped_one_respects_retry_timeout(tmp_path: Path) -> None:
    up = LateCloser(close_at=2, delay=0.6)
    routes = (
        "routes:\n"
        "  - id: 1\n"
        "    uri: /x\n"
        f'    upstream: {{retry_timeout: 0.3, nodes: {{"127.0.0.1:{up.port}": 1}}}}\n'
        "#END\n"
    )
    try:
        with (
            Gateway(tmp_path, apisix_yaml=routes) as g,
            socket.create_connection(("127.0.0.1", g.port), timeout=10) as c,
        ):
            c.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            assert c.recv(65536).startswith(b"HTTP/1.1 200")  # the upstream connection is pooled
            c.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")  # reuses it: dropped after 0.6 s
            answer = c.recv(65536)
            # past retry_timeout: no fresh try, 502 as APISIX's "proxy retry timeout"
            assert answer.startswith(b"HTTP/1.1 502"), answer[:100]
            assert up.requests == 2 and up.connections == 1
    finally:
        up.close()


def test_fresh_connection_after_a_dropped_one_within_retry_timeout(tmp_path: Path) -> None:
    up = LateCloser(close_at=2, delay=0.0)
    routes = (
        "routes:\n"
        "  - id: 1\n"
        "    uri: /x\n"
        f'    upstream: {{retry_timeout: 30, nodes: {{"127.0.0.1:{up.port}": 1}}}}\n'
        "#END\n"
    )
    try:
        with (
            Gateway(tmp_path, apisix_yaml=routes) as g,
            socket.create_connection(("127.0.0.1", g.port), timeout=10) as c,
        ):
            c.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            assert c.recv(65536).startswith(b"HTTP/1.1 200")
            c.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            # the dropped kept-alive connection is retried on a fresh one, which answers
            assert c.recv(65536).startswith(b"HTTP/1.1 200")
            assert up.requests == 3 and up.connections == 2
    finally:
        up.close()
