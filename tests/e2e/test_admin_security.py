"""Admin API secure defaults (issue #6): no exposed listener without a real key, a generated
key kept in the run dir, allow_admin, HTTPS."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import requests

from tests.support.etcd import EtcdServer
from tests.support.gateway import Gateway, wait_until


def admin_conf(**admin: object) -> dict[str, object]:
    return {"deployment": {"admin": admin}}


@pytest.mark.parametrize("key", ["", "edd1c9f034335f136f87ad84b625c8f1"])
def test_refuses_exposed_listener_with_weak_key(
    tmp_path: Path, shared_etcd: EtcdServer, key: str
) -> None:
    g = Gateway(tmp_path, mode="etcd", etcd=shared_etcd.endpoint, admin_key=key)
    g.config["deployment"]["admin"]["admin_listen"]["ip"] = "0.0.0.0"
    g.write_config()
    g.start(wait_ready=False)
    try:
        assert g.proc is not None
        wait_until(lambda: g.proc is not None and g.proc.poll() is not None, timeout=20)
        assert g.proc.returncode != 0
        assert "not a loopback address" in g.logs()
    finally:
        g.stop()


def test_generates_and_keeps_a_key(tmp_path: Path, shared_etcd: EtcdServer) -> None:
    g = Gateway(tmp_path, mode="etcd", etcd=shared_etcd.endpoint, config=admin_conf(admin_key=[]))
    with g:
        path = tmp_path / "run" / "admin_key"
        key = path.read_text().strip()
        assert len(key) == 32 and (path.stat().st_mode & 0o777) == 0o600
        assert str(path) in g.logs()
        url = g.admin_url("/routes")
        assert requests.get(url, headers={"X-API-KEY": key}, timeout=5).status_code == 200
        assert requests.get(url, timeout=5).status_code == 401
    g.start()  # a restart keeps the same key
    try:
        assert path.read_text().strip() == key
        assert requests.get(url, headers={"X-API-KEY": key}, timeout=5).status_code == 200
    finally:
        g.stop()


def test_allow_admin_rejects_other_clients(tmp_path: Path, shared_etcd: EtcdServer) -> None:
    g = Gateway(
        tmp_path,
        mode="etcd",
        etcd=shared_etcd.endpoint,
        config=admin_conf(allow_admin=["10.0.0.0/8"]),
    )
    with g:
        r = requests.get(g.admin_url("/routes"), headers={"X-API-KEY": g.admin_key}, timeout=5)
        assert r.status_code == 403


def test_https_admin(tmp_path: Path, shared_etcd: EtcdServer) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", "k.pem", "-out", "c.pem", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-days", "2"],
        cwd=pki, check=True, capture_output=True,
    )  # fmt: skip
    mtls = {"admin_ssl_cert": str(pki / "c.pem"), "admin_ssl_cert_key": str(pki / "k.pem")}
    g = Gateway(
        tmp_path,
        mode="etcd",
        etcd=shared_etcd.endpoint,
        config=admin_conf(https_admin=True, admin_api_mtls=mtls),
    )
    with g:
        url = g.admin_url("/routes").replace("http://", "https://")
        r = requests.get(url, headers={"X-API-KEY": g.admin_key}, verify=str(pki / "c.pem"), timeout=5)  # fmt: skip
        assert r.status_code == 200 and r.json() == {"total": 0, "list": []}
