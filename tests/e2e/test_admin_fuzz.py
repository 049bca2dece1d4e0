"""Bad input never gets a 5xx from the Admin API, and etcd only ever holds objects that pass
every check (issue #6). A hand-written Hypothesis fuzz over paths, verbs and JSON bodies, plus
the documented 503 when etcd is gone."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.etcd import EtcdServer
from tests.support.gateway import Gateway
from tollway.checks import ItemChecker
from tollway.model import decode_item, kind_of_key
from tollway.plugins.registry import load_registry

KEY = "test-admin-key-0123456789"
PREFIX = "/fuzz"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, shared_etcd: EtcdServer) -> Iterator[Gateway]:
    root: Path = tmp_path_factory.mktemp("admin-fuzz")
    with Gateway(root, mode="etcd", etcd=shared_etcd.endpoint, prefix=PREFIX, admin_key=KEY) as g:
        yield g


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 70000)
    | st.sampled_from(
        ["", "/", "/a", "a b", "roundrobin", "chash", "127.0.0.1:1980", "GET", "x" * 70]
    )
)
KEYS = st.sampled_from(["a", "key", "nodes", "uri", "id", "127.0.0.1:1"])
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(KEYS, kids, max_size=3),
    max_leaves=8,
)
FIELDS = [
    "id", "uri", "uris", "host", "hosts", "methods", "upstream", "upstream_id", "service_id",
    "plugins", "plugin_config_id", "vars", "priority", "status", "name", "labels", "nodes",
    "type", "key", "hash_on", "username", "group_id", "cert", "snis", "content", "uri",
    "prefix", "token", "remote_addr", "remote_addrs", "timeout", "retries", "desc",
]  # fmt: skip
plugin_confs = st.dictionaries(
    st.sampled_from(["proxy-rewrite", "response-rewrite", "nope"]),
    st.dictionaries(
        st.sampled_from(["uri", "headers", "status_code", "body"]), json_values, max_size=2
    ),
    max_size=2,
)
NODES = {"127.0.0.1:1980": 1}
TEMPLATES = [
    {"uri": "/a", "upstream": {"nodes": NODES}},
    {"uri": "/b", "plugins": {"proxy-rewrite": {"uri": "/c"}}, "upstream_id": "u1"},
    {"nodes": NODES, "type": "roundrobin"},
    {"upstream": {"nodes": NODES}},
    {"username": "jack"},
    {"plugins": {}},
    {"content": "syntax"},
    {"uri": "http://127.0.0.1:8200", "prefix": "kv", "token": "t"},
]
mutations = st.dictionaries(st.sampled_from(FIELDS), json_values | plugin_confs, max_size=2)


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    body = dict(draw(st.sampled_from(TEMPLATES)))
    if draw(st.booleans()):
        body.pop(draw(st.sampled_from(sorted(body))), None)
    if draw(st.booleans()):
        body.update(draw(mutations))
    return body


bodies = (
    near_valid()
    | st.sampled_from(TEMPLATES)
    | st.dictionaries(st.sampled_from(FIELDS), json_values | plugin_confs, max_size=6)
    | json_values
)
PATHS = [
    "/routes", "/routes/r1", "/routes/r1/upstream/nodes", "/services/s1", "/upstreams",
    "/upstreams/u1", "/consumers", "/consumers/jack", "/consumers/jack/credentials/c1",
    "/ssls/x", "/global_rules/g", "/plugin_configs/p", "/consumer_groups/cg",
    "/plugin_metadata/proxy-rewrite", "/protos/1", "/secrets/vault/1", "/stream_routes/1",
    "/schema/validate/routes", "/nothing/1", "/routes/a%20b", "/routes?ttl=x",
    "/routes/r1?force=true", "/routes?page=1&page_size=3",
]  # fmt: skip


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(["GET", "PUT", "PUT", "PUT", "POST", "PATCH", "PATCH", "DELETE"]),
    path=st.sampled_from(PATHS),
    body=bodies,
    raw=st.sampled_from([False, False, False, True]),
)
def test_no_5xx_on_any_input(
    gw: Gateway, shared_etcd: EtcdServer, method: str, path: str, body: Any, raw: bool
) -> None:
    data = json.dumps(body)
    if raw:
        data = data[: max(1, len(data) // 2)]  # truncated JSON
    r = requests.request(
        method, gw.admin_url(path), data=data, headers={"X-API-KEY": KEY}, timeout=10
    )
    assert r.status_code < 500, (method, path, data, r.status_code, r.text)
    if method in ("PUT", "POST", "PATCH") and r.status_code in (200, 201) and "dry" not in path:
        key = r.json()["key"]
        stored = shared_etcd.get(key)
        assert stored is not None, key
        assert_valid(key, stored.encode())


CHECKER = ItemChecker(load_registry(), strict=True)


def assert_valid(key: str, raw: bytes) -> int:
    where = kind_of_key(key, PREFIX)
    if where is None:
        return 0
    kind, item_id = where
    if kind in ("secrets", "plugin_metadata"):
        return 0  # per-manager / per-plugin schemas, checked by the API itself
    obj = decode_item(kind, msgspec.json.decode(raw))
    CHECKER(kind, item_id, obj, None)
    return 1


def test_etcd_holds_only_valid_objects(gw: Gateway, shared_etcd: EtcdServer) -> None:
    """Runs after the fuzz (file order): every item the API wrote passes every check."""
    out = shared_etcd.etcdctl("get", PREFIX + "/", "--prefix", "-w", "json")
    for kv in json.loads(out).get("kvs", []):
        assert_valid(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv["value"]))


def test_etcd_down_gives_503(tmp_path: Path, etcd: EtcdServer) -> None:
    with Gateway(tmp_path, mode="etcd", etcd=etcd.endpoint, admin_key=KEY) as g:
        etcd.kill()
        r = requests.get(g.admin_url("/routes/1"), headers={"X-API-KEY": KEY}, timeout=60)
        assert r.status_code == 503
        assert r.json()["error_msg"]
        r = requests.put(
            g.admin_url("/routes/1"),
            data=json.dumps({"uri": "/x", "plugins": {}}),
            headers={"X-API-KEY": KEY},
            timeout=60,
        )
        assert r.status_code == 503
