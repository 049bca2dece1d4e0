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
