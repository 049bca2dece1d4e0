"""HTTPS on apisix.ssl.listen with certificates from the ssls objects, chosen by SNI."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.gateway import Gateway, wait_until
from tests.support.upstream import Upstream


def self_signed(d: Path, cn: str, san: str) -> tuple[str, str]:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={cn}", "-addext", f"subjectAltName={san}",
         "-keyout", str(d / f"{cn}.key"), "-out", str(d / f"{cn}.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    return (d / f"{cn}.crt").read_text(), (d / f"{cn}.key").read_text()


def https_get(port: int, server_name: str, ca: str, path: str) -> bytes:
    ctx = ssl.create_default_context(cadata=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as s:
            s.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    return data


def test_sni_picks_the_certificate(tmp_path: Path, upstream: Upstream) -> None:
    cert_a, key_a = self_signed(tmp_path, "test.com", "DNS:test.com")
    cert_w, key_w = self_signed(tmp_path, "wild.example.org", "DNS:*.example.org")
    ssls = [
        {"id": "a", "cert": cert_a, "key": key_a, "snis": ["test.com"]},
        {"id": "w", "cert": cert_w, "key": key_w, "sni": "*.example.org"},
    ]
    text = (
        f"ssls: {json.dumps(ssls)}\n"
        f'routes:\n  - {{id: 1, uri: /*, upstream: {{nodes: {{"{upstream.addr}": 1}}}}}}\n#END\n'
    )
    with Gateway(tmp_path, apisix_yaml=text) as g:
        out = https_get(g.tls_port, "test.com", cert_a, "/via-tls")
        head, _, body = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        seen = json.loads(body)
        assert seen["path"] == "/via-tls" and seen["headers"]["x-forwarded-proto"] == "https"
        assert https_get(g.tls_port, "api.example.org", cert_w, "/w").startswith(b"HTTP/1.1 200")
        with pytest.raises(ssl.SSLError):
            https_get(g.tls_port, "unknown.net", cert_a, "/")


def test_key_encrypted_at_rest_through_the_admin_api(
    tmp_path: Path, etcd: Any, upstream: Upstream
) -> None:
    cert, key = self_signed(tmp_path, "secure.test", "DNS:secure.test")
    keyring = {"apisix": {"data_encryption": {"keyring": ["qeddd145sfvddff3"]}}}
    with Gateway(tmp_path, mode="etcd", etcd=etcd.endpoint, config=keyring) as g:
        h = {"X-API-KEY": g.admin_key}
        r = requests.put(
            g.admin_url("/ssls/1"),
            json={"cert": cert, "key": key, "snis": ["secure.test"]},
            headers=h,
            timeout=5,
        )
        assert r.status_code == 201, r.text
        stored = json.loads(etcd.get("/apisix/ssls/1") or "{}")
        assert "BEGIN" not in stored["key"]  # encrypted at rest
        r = requests.put(
            g.admin_url("/routes/1"),
            json={"uri": "/*", "upstream": {"nodes": {upstream.addr: 1}}},
            headers=h,
            timeout=5,
        )
        assert r.status_code == 201, r.text
        wait_until(
            lambda: https_get(g.tls_port, "secure.test", cert, "/x").startswith(b"HTTP/1.1 200")
        )


def client_cert(d: Path, ca_cert: str, ca_key: str, cn: str) -> tuple[Path, Path]:
    """A client certificate signed by the CA whose PEMs are ``ca_cert``/``ca_key``."""
    (d / "ca.crt").write_text(ca_cert)
    (d / "ca.key").write_text(ca_key)
    key, csr, crt = d / f"{cn}.key", d / f"{cn}.csr", d / f"{cn}.crt"
    subprocess.run(
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
         "-keyout", str(key), "-out", str(csr)],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(d / "ca.crt"),
         "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "1", "-out", str(crt)],
        check=True, capture_output=True,
    )  # fmt: skip
    return crt, key


def https_status(port: int, name: str, ca: str, path: str, cert: tuple[Path, Path] | None) -> int:
    ctx = ssl.create_default_context(cadata=ca)
    if cert is not None:
        ctx.load_cert_chain(*cert)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            head = b""
            while b"\r\n" not in head and (chunk := s.recv(65536)):
                head += chunk
    return int(head.split(b" ", 2)[1]) if head else 0  # 0: closed without an answer


def test_client_certificates_are_required_with_ssl_client(
    tmp_path: Path, upstream: Upstream
) -> None:
    # APISIX ssls.client (mTLS): a request without a certificate signed by client.ca is 400,
    # except on paths matching skip_mtls_uri_regex.
    server_cert, server_key = self_signed(tmp_path, "mtls.test", "DNS:mtls.test")
    ca_cert, ca_key = self_signed(tmp_path, "client-ca", "DNS:client-ca")
    good = client_cert(tmp_path, ca_cert, ca_key, "alice")
    open_cert, open_key = self_signed(tmp_path, "open.test", "DNS:open.test")
    ssls = [
        {"id": "o", "cert": open_cert, "key": open_key, "snis": ["open.test"]},
        {
            "id": "m",
            "cert": server_cert,
            "key": server_key,
            "snis": ["mtls.test"],
            "client": {"ca": ca_cert, "skip_mtls_uri_regex": ["^/public/"]},
        },
    ]
    text = (
        f"ssls: {json.dumps(ssls)}\n"
        f'routes:\n  - {{id: 1, uri: /*, upstream: {{nodes: {{"{upstream.addr}": 1}}}}}}\n#END\n'
    )
    with Gateway(tmp_path, apisix_yaml=text) as g:
        assert https_status(g.tls_port, "mtls.test", server_cert, "/private", good) == 200
        assert https_status(g.tls_port, "mtls.test", server_cert, "/private", None) == 400
        assert https_status(g.tls_port, "mtls.test", server_cert, "/public/x", None) == 200
        # another name on the same listener asks for nothing
        assert https_status(g.tls_port, "open.test", open_cert, "/private", None) == 200
        other_ca, other_key = self_signed(tmp_path, "other-ca", "DNS:other-ca")
        stranger = client_cert(tmp_path / "..", other_ca, other_key, "mallory")
        # A certificate from another CA fails the handshake: an alert or, in TLS 1.3 where the
        # client finishes first, a connection closed without an answer.
        try:
            status = https_status(g.tls_port, "mtls.test", server_cert, "/private", stranger)
        except (ssl.SSLError, ConnectionError):
            status = 0
        assert status == 0
