"""Admin API resource types beyond routes/services/upstreams (issue #6), plus the schema,
plugin and OpenAPI endpoints, through the real process and a real etcd."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.etcd import EtcdServer
from tests.support.gateway import Gateway
from tests.support.upstream import Upstream
from tollway.crypto import KeyCipher

KEY = "test-admin-key-0123456789"
RING = ["qeddd145sfvddff3", "edd1c9f0985e76a2"]


class Admin:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.s = requests.Session()
        self.s.headers["X-API-KEY"] = KEY

    def __call__(self, method: str, path: str, body: Any = None, **kw: Any) -> requests.Response:
        if body is not None:
            kw["data"] = body if isinstance(body, str | bytes) else json.dumps(body)
        return self.s.request(method, self.gw.admin_url(path), timeout=10, **kw)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, shared_etcd: EtcdServer) -> Iterator[Gateway]:
    root: Path = tmp_path_factory.mktemp("admin-res")
    g = Gateway(
        root,
        mode="etcd",
        etcd=shared_etcd.endpoint,
        prefix="/res",
        admin_key=KEY,
        config={"apisix": {"data_encryption": {"keyring": RING}}},
    )
    with g:
        yield g


@pytest.fixture
def admin(gw: Gateway) -> Admin:
    return Admin(gw)


def err(r: requests.Response) -> str:
    return str(r.json()["error_msg"])


def ups(up: Upstream) -> dict[str, Any]:
    return {"nodes": {up.addr: 1}}


# -- 405 per type ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("POST", "/consumers", "consumer"),
        ("PATCH", "/consumers/jack", "consumer"),
        ("POST", "/consumers/jack/credentials", "credential"),
        ("PATCH", "/consumers/jack/credentials/c1", "credential"),
        ("POST", "/global_rules", "global rule"),
        ("POST", "/plugin_configs", "plugin config"),
        ("POST", "/consumer_groups", "consumer group"),
        ("POST", "/secrets/vault", "secret"),
        ("PATCH", "/protos/1", "proto"),
        ("POST", "/plugin_metadata", "plugin_metadata"),
        ("PATCH", "/plugin_metadata/proxy-rewrite", "plugin_metadata"),
    ],
)
def test_unsupported_methods(admin: Admin, method: str, path: str, kind: str) -> None:
    r = admin(method, path, {})
    assert r.status_code == 405
    assert r.json() == {"error_msg": f"not supported `{method}` method for {kind}"}


def test_stream_routes_disabled(admin: Admin) -> None:
    r = admin("PUT", "/stream_routes/1", {"server_port": 9100})
    assert r.status_code == 400
    assert r.json() == {"error_msg": "stream mode is disabled, can not add stream routes"}


# -- consumers and credentials --------------------------------------------------------------


def test_consumers_keyed_by_username(admin: Admin, shared_etcd: EtcdServer) -> None:
    r = admin("PUT", "/consumers", {"username": "jack", "desc": "j"})
    assert r.status_code == 201
    assert r.json()["key"] == "/res/consumers/jack"
    assert "id" not in r.json()["value"]
    r = admin("PUT", "/consumers/jack", {"username": "jack", "desc": "j2"})
    assert r.status_code == 200
    r = admin("PUT", "/consumers/rose", {"username": "jack"})
    assert r.status_code == 400 and err(r) == "wrong username"
    r = admin("PUT", "/consumers", {"username": "jack", "plugins": {"nope": {}}})
    assert r.status_code == 400
    assert err(r) == "invalid plugins configuration: unknown plugin [nope]"
    r = admin("PUT", "/consumers", {"username": "j", "group_id": "missing"})
    assert r.status_code == 400
    assert err(r) == (
        "failed to fetch consumer group info by consumer group id [missing], response code: 404"
    )
    # Credentials are sub-resources, left out of the consumer list.
    r = admin("PUT", "/consumers/jack/credentials/c1", {"desc": "cred"})
    assert r.status_code == 201, r.text
    assert r.json()["key"] == "/res/consumers/jack/credentials/c1"
    assert r.json()["value"]["id"] == "c1"
    r = admin("PUT", "/consumers/jack/credentials", {"desc": "cred"})
    assert r.status_code == 400 and err(r) == "missing credential id"
    # ... or from the body (APISIX credentials.t TEST 15)
    r = admin("PUT", "/consumers/jack/credentials", {"id": "c2", "desc": "body id"})
    assert r.status_code == 201 and r.json()["key"] == "/res/consumers/jack/credentials/c2"
    assert admin("DELETE", "/consumers/jack/credentials/c2").status_code == 200
    two = {"plugins": {"key-auth": {"key": "k"}, "basic-auth": {"username": "u", "password": "p"}}}
    r = admin("PUT", "/consumers/jack/credentials/c3", two)
    assert r.status_code == 400 and err(r) == (
        'invalid configuration: property "plugins" validation failed: '
        "expect object to have at most 1 properties"
    )
    r = admin("PUT", "/consumers/nobody/credentials/c1", {"desc": "cred"})
    assert r.status_code == 404
    lst = admin("GET", "/consumers").json()
    assert [n["key"] for n in lst["list"]] == ["/res/consumers/jack"]
    creds = admin("GET", "/consumers/jack/credentials").json()
    assert creds["total"] == 1 and creds["list"][0]["value"]["desc"] == "cred"
    assert admin("GET", "/consumers/jack/credentials/c1").status_code == 200
    # Deleting the consumer deletes its credentials.
    assert admin("DELETE", "/consumers/jack").json() == {
        "deleted": "1",
        "key": "/res/consumers/jack",
    }
    assert shared_etcd.get("/res/consumers/jack/credentials/c1") is None
    r = admin("GET", "/consumers/jack/credentials")
    assert r.status_code == 404 and r.json() == {"message": "Key not found"}


def test_auth_keys_are_unique(admin: Admin) -> None:
    r = admin("PUT", "/consumers", {"username": "ka1", "plugins": {"key-auth": {"key": "k-1"}}})
    assert r.status_code == 201, r.text
    r = admin("PUT", "/consumers", {"username": "ka2", "plugins": {"key-auth": {"key": "k-1"}}})
    assert r.status_code == 400
    assert err(r) == "duplicate key of plugin key-auth found with consumer: ka1"
    assert admin("PUT", "/consumers", {"username": "ka2"}).status_code == 201
    r = admin("PUT", "/consumers/ka2/credentials/c", {"plugins": {"key-auth": {"key": "k-1"}}})
    assert r.status_code == 400 and err(r) == "duplicate key found with consumer: ka1"
    r = admin("PUT", "/consumers/ka2/credentials/c", {"plugins": {"key-auth": {"key": "k-2"}}})
    assert r.status_code == 201
    r = admin("PUT", "/consumers/ka2/credentials/c", {"plugins": {"key-auth": {"key": "k-2"}}})
    assert r.status_code == 200  # its own key
    r = admin("PUT", "/consumers/ka2/credentials/d", {"plugins": {"proxy-rewrite": {"uri": "/"}}})
    assert r.status_code == 400
    assert err(r) == "only supports auth type plugins in consumer credential"
    admin("DELETE", "/consumers/ka1")
    admin("DELETE", "/consumers/ka2")


def test_consumer_group_protection(admin: Admin) -> None:
    assert admin("PUT", "/consumer_groups/cg", {"plugins": {}}).status_code == 201
    assert admin("PUT", "/consumers", {"username": "tom", "group_id": "cg"}).status_code == 201
    r = admin("DELETE", "/consumer_groups/cg")
    assert r.status_code == 400
    assert err(r) == "can not delete this consumer group, consumer [tom] is still using it now"
    admin("DELETE", "/consumers/tom")
    assert admin("DELETE", "/consumer_groups/cg").status_code == 200


# -- plugin holders -------------------------------------------------------------------------


def test_global_rules_one_plugin_per_rule(admin: Admin) -> None:
    conf = {"plugins": {"response-rewrite": {"headers": {"set": {"X-G": "1"}}}}}
    assert admin("PUT", "/global_rules/g1", conf).status_code == 201
    r = admin("PUT", "/global_rules/g2", conf)
    assert r.status_code == 400
    assert err(r) == "plugin 'response-rewrite' already exists in global rule with id 'g1'"
    assert admin("PUT", "/global_rules/g1", conf).status_code == 200  # itself is fine
    r = admin("PUT", "/global_rules/g3", {"plugins": {"proxy-rewrite": {"uri": 3}}})
    assert r.status_code == 400
    assert err(r).startswith("failed to check the configuration of plugin proxy-rewrite err: ")
    admin("DELETE", "/global_rules/g1")


def test_plugin_configs(admin: Admin, upstream: Upstream) -> None:
    r = admin("PUT", "/plugin_configs/pc", {"plugins": {"proxy-rewrite": {"uri": "/x"}}})
    assert r.status_code == 201
    r = admin("PUT", "/routes/pc", {"uri": "/pc", "plugin_config_id": "pc", "upstream": ups(upstream)})  # fmt: skip
    assert r.status_code == 201
    r = admin("DELETE", "/plugin_configs/pc")
    assert r.status_code == 400
    assert err(r) == "can not delete this plugin config, route [pc] is still using it now"
    r = admin("PATCH", "/plugin_configs/pc", {"desc": "patched"})
    assert r.status_code == 200 and r.json()["value"]["desc"] == "patched"
    admin("DELETE", "/routes/pc")
    assert admin("DELETE", "/plugin_configs/pc").status_code == 200


def test_plugin_metadata(admin: Admin) -> None:
    r = admin("PUT", "/plugin_metadata/proxy-rewrite", {})
    assert r.status_code == 201
    assert r.json() == {
        "key": "/res/plugin_metadata/proxy-rewrite",
        "value": r.json()["value"],
    }
    assert r.json()["value"] == {"id": "proxy-rewrite"}  # no timestamps, as APISIX
    r = admin("PUT", "/plugin_metadata/proxy-rewrite", {"nope": 1})
    assert r.status_code == 400 and err(r).startswith("invalid configuration: ")
    r = admin("PUT", "/plugin_metadata/not-a-plugin", {})
    assert r.status_code == 400 and err(r) == "invalid plugin name"
    assert admin("DELETE", "/plugin_metadata/proxy-rewrite").status_code == 200


def test_protos_and_secrets(admin: Admin) -> None:
    proto = 'syntax = "proto3"; package hello; message A { string n = 1; }'
    r = admin("PUT", "/protos/p1", {"content": proto})
    assert r.status_code == 201 and r.json()["value"]["content"] == proto
    r = admin("PUT", "/protos/p2", {"content": ""})
    assert r.status_code == 400
    assert admin("DELETE", "/protos/p1").status_code == 200

    vault = {"uri": "http://127.0.0.1:8200", "prefix": "kv/apisix", "token": "t"}
    r = admin("PUT", "/secrets/vault/1", vault)
    assert r.status_code == 201
    assert r.json()["key"] == "/res/secrets/vault/1" and r.json()["value"]["id"] == "vault/1"
    assert admin("GET", "/secrets/vault/1").json()["value"]["token"] == "t"
    assert admin("GET", "/secrets").json()["total"] == 1
    r = admin("PATCH", "/secrets/vault/1", {"token": "t2"})
    assert r.status_code == 200 and r.json()["value"]["token"] == "t2"
    r = admin("PUT", "/secrets/vault/2", {"uri": "http://x"})
    assert r.status_code == 400 and err(r).startswith("invalid configuration: ")
    r = admin("PUT", "/secrets/nope/1", vault)
    assert r.status_code == 400 and err(r) == "invalid secret manager: nope"
    assert admin("DELETE", "/secrets/vault/1").status_code == 200


# -- ssl ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("pki")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", "k.pem", "-out", "c.pem", "-subj", "/CN=test.com", "-days", "2"],
        cwd=d, check=True, capture_output=True,
    )  # fmt: skip
    return (d / "c.pem").read_text(), (d / "k.pem").read_text()


def test_ssl_key_is_encrypted_and_never_returned(
    admin: Admin, shared_etcd: EtcdServer, cert_pair: tuple[str, str]
) -> None:
    cert, key = cert_pair
    r = admin("PUT", "/ssls/s1", {"cert": cert, "key": key, "snis": ["test.com"]})
    assert r.status_code == 201, r.text
    assert "key" not in r.json()["value"] and r.json()["value"]["cert"] == cert
    got = admin("GET", "/ssls/s1").json()
    assert "key" not in got["value"] and got["value"]["snis"] == ["test.com"]
    assert all("key" not in n["value"] for n in admin("GET", "/ssls").json()["list"])
    raw = shared_etcd.get("/res/ssls/s1")
    assert raw is not None
    stored = json.loads(raw)["key"]
    assert stored != key and KeyCipher(RING).decrypt(stored) == key
    r = admin("PATCH", "/ssls/s1", {"snis": ["a.test.com"]})
    assert r.status_code == 200
    raw = shared_etcd.get("/res/ssls/s1")
    assert raw is not None and KeyCipher(RING).decrypt(json.loads(raw)["key"]) == key
    assert admin("DELETE", "/ssls/s1").status_code == 200
    # ssl2.t TEST 6-9: OpenSSL's words, and which pair of certs/keys failed
    r = admin("PUT", "/ssls/s2", {"cert": "x" * 200, "key": key, "snis": ["t.com"]})
    assert r.status_code == 400
    assert err(r) == "failed to parse cert: PEM_read_bio_X509_AUX() failed"
    r = admin("PUT", "/ssls/s2", {"cert": cert, "key": "y" * 200, "snis": ["t.com"]})
    assert r.status_code == 400
    assert err(r) == "failed to parse key: PEM_read_bio_PrivateKey() failed"
    pair = {"cert": cert, "key": key, "snis": ["t.com"], "certs": ["x" * 200], "keys": [key]}
    r = admin("PUT", "/ssls/s2", pair)
    assert r.status_code == 400 and err(r) == (
        "failed to handle cert-key pair[1]: failed to parse cert: PEM_read_bio_X509_AUX() failed"
    )


# -- schema, plugins, openapi ---------------------------------------------------------------


def test_schema_endpoints(admin: Admin) -> None:
    # APISIX serves its schemas with the object at the top; tools read "properties" there.
    r = admin("GET", "/schema/route")
    assert r.status_code == 200
    route = r.json()
    assert route["type"] == "object" and "$ref" not in route
    assert route["properties"]["uri"] == {"type": "string", "maxLength": 4096, "minLength": 1}
    assert route["properties"]["upstream"] == {"$ref": "#/$defs/Upstream"}
    assert "Upstream" in route["$defs"]
    r = admin("GET", "/schema/nothing")
    assert r.status_code == 400 and r.json() == {"error_msg": "not found schema: nothing"}
    r = admin("PUT", "/schema/route", {})
    assert r.status_code == 404 and r.json() == {"error_msg": "not found"}
    r = admin("GET", "/schema/plugins/proxy-rewrite")
    assert r.status_code == 200 and "uri" in json.dumps(r.json())
    key_auth = admin("GET", "/schema/plugins/key-auth").json()
    assert key_auth["properties"]["header"] == {"type": "string", "default": "apikey"}
    assert "null" not in json.dumps(key_auth)
    r = admin("GET", "/plugins/proxy-rewrite")
    assert r.status_code == 200
    r = admin("GET", "/schema/plugins/nope")
    assert r.status_code == 404
    assert r.json() == {"error_msg": "plugin not found in subsystem http"}
    assert admin("GET", "/schema/plugins/proxy-rewrite?schema_type=consumer").status_code == 200


def test_validate_endpoint(admin: Admin, upstream: Upstream) -> None:
    r = admin("POST", "/schema/validate/routes", {"uri": "/v", "upstream": ups(upstream)})
    assert r.status_code == 200 and r.text == ""
    r = admin("POST", "/schema/validate/routes", {"uri": "/v"})
    assert r.status_code == 400 and err(r).startswith("object matches none of the required")
    assert admin("GET", "/routes/v").status_code == 404
    # The bare validator message (APISIX t/admin/schema-validate.t TEST 2).
    r = admin("POST", "/schema/validate/routes", {"uri": 666, "upstream": ups(upstream)})
    assert r.status_code == 400
    assert err(r) == 'property "uri" validation failed: wrong type: expected string, got number'
    # The schema only: references and plugin confs are a write's checks (dry_run runs those).
    r = admin("POST", "/schema/validate/routes", {"uri": "/v", "upstream_id": "missing"})
    assert r.status_code == 200
    r = admin("POST", "/schema/validate/upstreams", {"nodes": {"127.0.0.1:80": -1}})
    assert r.status_code == 400
    assert err(r) == 'property "nodes" validation failed: object matches none of the required'
    # POST /configs/validate checks a whole standalone document with etcd too, storing nothing
    doc = {"routes": [{"id": "cv", "uri": "/cv", "upstream": ups(upstream)}]}
    assert admin("POST", "/configs/validate", doc).status_code == 200
    r = admin("POST", "/configs/validate", {"routes": [{"id": "cv", "uri": 7}]})
    assert r.status_code == 400 and r.json()["errors"][0]["resource_type"] == "routes"
    assert admin("GET", "/routes/cv").status_code == 404
    for name in ("route", "nothing"):  # the URL names, plural
        r = admin("POST", f"/schema/validate/{name}", {"uri": "/v"})
        assert r.status_code == 404 and err(r) == f"Unsupported resource type: {name}"


def test_plugins_list_and_reload(admin: Admin, shared_etcd: EtcdServer) -> None:
    r = admin("GET", "/plugins/list")
    assert r.status_code == 200
    names = r.json()
    assert "proxy-rewrite" in names and "response-rewrite" in names
    assert names.index("proxy-rewrite") < names.index("response-rewrite")  # 1008 before 899
    r = admin("GET", "/plugins/list?subsystem=foo")
    assert r.status_code == 400 and r.text.strip() == "invalid subsystem passed"
    r = admin("PUT", "/plugins/reload")
    assert r.status_code == 200 and r.text.strip() == "done"
    raw = shared_etcd.get("/res/plugins")
    assert raw is not None and {"name": "proxy-rewrite"} in json.loads(raw)
    r = admin("GET", "/plugins/reload")
    assert r.status_code == 405
    assert err(r) == "please use PUT method to reload the plugins, GET method is not allowed."
    r = admin("GET", "/plugins?all=true")
    assert r.status_code == 200 and r.json()["proxy-rewrite"]["priority"] == 1008


def test_openapi_description(admin: Admin) -> None:
    r = admin("GET", "/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    assert "/apisix/admin/routes/{id}" in doc["paths"]
    assert "post" not in doc["paths"]["/apisix/admin/consumers"]
    assert "Route" in doc["components"]["schemas"]


def test_stream_routes_when_stream_mode_is_on(
    tmp_path: Path, shared_etcd: EtcdServer, upstream: Upstream
) -> None:
    g = Gateway(
        tmp_path,
        mode="etcd",
        etcd=shared_etcd.endpoint,
        prefix="/stream",
        admin_key=KEY,
        config={"apisix": {"proxy_mode": "http&stream"}},
    )
    with g:
        admin = Admin(g)
        r = admin("PUT", "/stream_routes/1", {"server_port": 9100, "upstream": ups(upstream)})
        assert r.status_code == 201, r.text
        r = admin("PATCH", "/stream_routes/1", {"server_port": 9101})
        assert r.status_code == 405
        assert r.json() == {"error_msg": "not supported `PATCH` method for stream route"}
        r = admin("PUT", "/stream_routes/2", {"server_port": 9100, "upstream_id": "nope"})
        assert r.status_code == 400
        assert err(r) == "failed to fetch upstream info by upstream id [nope], response code: 404"
        assert admin("DELETE", "/stream_routes/1").status_code == 200
