"""Balancers, retries and TLS through the real process, with real upstream servers (issue #5)."""

from __future__ import annotations

import collections
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.gateway import Gateway, free_port
from tests.support.upstream import Upstream


class Resetter:
    """Accepts, reads a request, then closes without answering (bytes reached the upstream)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self._t = threading.Thread(target=self._serve, daemon=True)
        self._t.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if conn.recv(65536):
                    self.requests += 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def ups() -> Iterator[list[Upstream]]:
    made = [Upstream(f"n{i}").start() for i in range(3)]
    yield made
    for u in made:
        u.stop()


def gw_with(tmp_path: Path, routes: str, **kw: object) -> Gateway:
    return Gateway(tmp_path, apisix_yaml=f"routes:\n{routes}\n#END\n", **kw)  # type: ignore[arg-type]


def names(g: Gateway, path: str, n: int, **kw: object) -> collections.Counter[str]:
    s = requests.Session()
    return collections.Counter(
        s.get(g.url(path), timeout=5, **kw).headers.get("X-Upstream", "?")  # type: ignore[arg-type]
        for _ in range(n)
    )


def test_weighted_roundrobin_is_exact_per_cycle(tmp_path: Path, ups: list[Upstream]) -> None:
    nodes = ", ".join(f'"{u.addr}": {w}' for u, w in zip(ups, (1, 2, 3), strict=True))
    with gw_with(tmp_path, f"  - {{id: 1, uri: /*, upstream: {{nodes: {{{nodes}}}}}}}") as g:
        assert names(g, "/x", 60) == {"n0": 10, "n1": 20, "n2": 30}


def test_chash_is_sticky_by_header(tmp_path: Path, ups: list[Upstream]) -> None:
    nodes = ", ".join(f'"{u.addr}": 1' for u in ups)
    route = f"  - {{id: 1, uri: /*, upstream: {{type: chash, hash_on: header, key: X-User, nodes: {{{nodes}}}}}}}"
    with gw_with(tmp_path, route) as g:
        seen = {}
        for user in (f"user{i}" for i in range(30)):
            got = names(g, "/x", 4, headers={"X-User": user})
            assert len(got) == 1  # always the same node for one user
            seen[user] = next(iter(got))
        assert len(set(seen.values())) == 3  # users spread over every node


def test_retry_skips_refused_node_and_reports_statuses(tmp_path: Path, ups: list[Upstream]) -> None:
    dead = free_port()
    routes = f"""
  - {{id: 1, uri: /ok, upstream: {{nodes: {{"127.0.0.1:{dead}": 1, "{ups[0].addr}": 1}}}}}}
  - {{id: 2, uri: /all-dead, upstream: {{nodes: {{"127.0.0.1:{dead}": 1, "127.0.0.1:{free_port()}": 1}}}}}}
  - {{id: 3, uri: /no-retry, upstream: {{retries: 0, nodes: {{"127.0.0.1:{dead}": 1}}}}}}
  - {{id: 4, uri: /prio, upstream: {{nodes: [{{host: 127.0.0.1, port: {dead}, weight: 1, priority: 1}}, {{host: 127.0.0.1, port: {ups[1].port}, weight: 1, priority: 0}}]}}}}
  - {{id: 5, uri: /status/*, upstream: {{nodes: {{"{ups[2].addr}": 1, "{ups[0].addr}": 1}}}}}}
  - {{id: 6, uri: /single, upstream: {{retries: 2, nodes: {{"127.0.0.1:{dead}": 1}}}}}}
  - {{id: 7, uri: /status/*, host: history.test, upstream: {{nodes: [{{host: 127.0.0.1, port: {dead}, weight: 1, priority: 1}}, {{host: 127.0.0.1, port: {ups[1].port}, weight: 1, priority: 0}}]}}}}
"""
    with gw_with(tmp_path, routes) as g:
        assert all(requests.get(g.url("/ok"), timeout=5).status_code == 200 for _ in range(10))
        r = requests.get(g.url("/all-dead"), timeout=5)
        assert r.status_code == 502
        assert r.headers["X-APISIX-Upstream-Status"] == "502, 502"
        assert requests.get(g.url("/no-retry"), timeout=5).status_code == 502
        assert names(g, "/prio", 5) == {"n1": 5}
        # A 5xx answer is an answer: passed through, not retried (nginx/APISIX default).
        before = ups[0].hits + ups[2].hits
        r = requests.get(g.url("/status/500"), timeout=5)
        assert r.status_code == 500 and r.headers["X-APISIX-Upstream-Status"] == "500"
        assert ups[0].hits + ups[2].hits == before + 1
        # A single node with retries is tried again (APISIX hands out the one node it has).
        r = requests.get(g.url("/single"), timeout=5)
        assert r.headers["X-APISIX-Upstream-Status"] == "502, 502, 502"
        # The header is nginx's $upstream_status: every try, when the last one is a 5xx.
        history = {"Host": "history.test"}
        r = requests.get(g.url("/status/503"), headers=history, timeout=5)
        assert r.status_code == 503 and r.headers["X-APISIX-Upstream-Status"] == "502, 503"
        r = requests.get(g.url("/status/200"), headers=history, timeout=5)
        assert r.status_code == 200 and "X-APISIX-Upstream-Status" not in r.headers


def test_timeout_is_504_and_idempotent_requests_move_on(
    tmp_path: Path, ups: list[Upstream]
) -> None:
    routes = f"""
  - id: 1
    uri: /hang
    timeout: {{connect: 1, send: 1, read: 0.5}}
    upstream: {{retries: 0, nodes: {{"{ups[0].addr}": 1}}}}
  - id: 2
    uri: /hang
    host: deadline.test
    timeout: {{connect: 1, send: 1, read: 0.5}}
    upstream: {{retry_timeout: 0.2, nodes: {{"{ups[0].addr}": 1, "{ups[1].addr}": 1}}}}
"""
    with gw_with(tmp_path, routes) as g:
        r = requests.get(g.url("/hang"), timeout=10)
        assert r.status_code == 504 and "504 Gateway Time-out" in r.text
        assert r.raw.version == 11 and r.reason == "Gateway Time-out"  # nginx's status line
        # Past retry_timeout APISIX stops retrying with 502 ("proxy retry timeout").
        r = requests.get(g.url("/hang"), headers={"Host": "deadline.test"}, timeout=10)
        assert r.status_code == 502 and r.headers["X-APISIX-Upstream-Status"] == "504"


def test_non_idempotent_request_is_not_resent(tmp_path: Path, ups: list[Upstream]) -> None:
    resetter = Resetter()
    try:
        routes = f'  - {{id: 1, uri: /*, upstream: {{nodes: {{"127.0.0.1:{resetter.port}": 1, "{ups[0].addr}": 1}}}}}}'
        with gw_with(tmp_path, routes) as g:
            # GET: the failed node is skipped and the request is retried on the other one.
            assert all(requests.get(g.url("/x"), timeout=5).status_code == 200 for _ in range(6))
            # POST: once its bytes reached an upstream that failed, it is never re-sent.
            before = ups[0].hits
            codes = [
                requests.post(g.url("/x"), data=b"pay", timeout=5).status_code for _ in range(6)
            ]
            reached_reset = resetter.requests
            assert 502 in codes and 200 in codes
            assert ups[0].hits - before == codes.count(200)
            assert reached_reset >= codes.count(502)
    finally:
        resetter.close()


def _self_signed(d: Path, name: str, cn: str) -> tuple[Path, Path]:
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _tls_server(d: Path, client_ca: Path | None) -> tuple[int, socket.socket]:
    """An HTTPS upstream answering {"tls": true, "host": ..., "client": CN or null}; with
    ``client_ca`` it requires a client certificate signed by it (mTLS)."""
    cert, key = _self_signed(d, "server", "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    port = free_port()
    srv = socket.socket()
    srv.bind(("127.0.0.1", port))
    srv.listen(16)

    def serve() -> None:
        while True:
            try:
                raw, _ = srv.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(raw, server_side=True) as conn:
                    data = conn.recv(65536)
                    host = next(
                        (
                            ln.split(b":", 1)[1].strip()
                            for ln in data.split(b"\r\n")
                            if ln.lower().startswith(b"host:")
                        ),
                        b"",
                    )
                    peer = conn.getpeercert()
                    client = dict(x[0] for x in peer["subject"])["commonName"] if peer else None
                    body = json.dumps({"tls": True, "host": host.decode(), "client": client})
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                        % (len(body), body.encode())
                    )
            except (ssl.SSLError, OSError):
                continue

    threading.Thread(target=serve, daemon=True).start()
    return port, srv


@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    d = tmp_path_factory.mktemp("tls")
    port, srv = _tls_server(d, None)
    yield port, d
    srv.close()


def test_https_upstream_and_verify(tmp_path: Path, tls_upstream: tuple[int, Path]) -> None:
    port, _ = tls_upstream
    routes = f"""
  - {{id: 1, uri: /tls, upstream: {{scheme: https, pass_host: node, nodes: {{"localhost:{port}": 1}}}}}}
  - {{id: 2, uri: /tls-verify, upstream: {{scheme: https, tls: {{verify: true}}, nodes: {{"localhost:{port}": 1}}}}}}
"""
    with gw_with(tmp_path, routes) as g:
        r = requests.get(g.url("/tls"), timeout=5)
        assert r.status_code == 200
        assert r.json() == {"tls": True, "host": f"localhost:{port}", "client": None}
        # Self-signed: with verification on, the handshake fails -> 502.
        assert requests.get(g.url("/tls-verify"), timeout=5).status_code == 502


def test_client_certificate_to_an_mtls_upstream(tmp_path: Path) -> None:
    client_cert, client_key = _self_signed(tmp_path, "client", "tollway-client")
    port, srv = _tls_server(tmp_path, client_ca=client_cert)
    try:
        tls = {"client_cert": client_cert.read_text(), "client_key": client_key.read_text()}
        routes = f"""
  - {{id: 1, uri: /mtls, upstream: {{scheme: https, tls: {json.dumps(tls)}, nodes: {{"localhost:{port}": 1}}}}}}
  - {{id: 2, uri: /no-cert, upstream: {{scheme: https, nodes: {{"localhost:{port}": 1}}}}}}
"""
        with gw_with(tmp_path, routes) as g:
            r = requests.get(g.url("/mtls"), timeout=5)
            assert r.status_code == 200 and r.json()["client"] == "tollway-client"
            assert requests.get(g.url("/no-cert"), timeout=5).status_code == 502
    finally:
        srv.close()
