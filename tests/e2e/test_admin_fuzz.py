"""Bad input never gets a 5xx from the Admin API, and etcd only ever holds objects that pass
every check (issue #6). A hand-written Hypothesis fuzz over paths, verbs and JSON bodies; odd
JSON (deep nesting, lone surrogates, huge numbers, any Unicode) that never gets a 5xx nor a
traceback and after which writes still reach the data plane (issue #18); the documented 503
when etcd is gone. ``TOLLWAY_FUZZ_EXAMPLES`` sets the example count of the fuzz tests."""

from __future__ import annotations

import base64
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support.etcd import EtcdServer
from tests.support.gateway import Gateway, wait_until
from tests.support.upstream import Upstream
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


def examples(default: int) -> int:
    return int(os.environ.get("TOLLWAY_FUZZ_EXAMPLES", str(default)))


@settings(
    max_examples=examples(300),
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
    # a write stored something (schema/validate answers 200 with no body and stores nothing)
    writes = method in ("PUT", "POST", "PATCH") and not path.startswith("/schema/")
    if writes and r.status_code in (200, 201) and "dry" not in path:
        key = r.json()["key"]
        stored = shared_etcd.get(key)
        assert stored is not None, key
        assert_valid(key, stored.encode())


# -- odd JSON (issue #18) -------------------------------------------------------------------

# any code point, lone surrogates included (Hypothesis leaves category Cs out by default)
odd_text = st.text(st.characters(exclude_categories=()), max_size=12) | st.sampled_from(
    ["\ud800", "a\udfff", "\udc00\ud800", "\x00", "\u202e", "\ufeff", "\uffff", "\U0010ffff"]
)
# any Unicode text, control characters, BOMs and private use included, but no lone surrogate
any_text = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12)
odd_numbers = (
    st.integers(-(10**400), 10**400)
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
)
odd_json = st.recursive(
    st.none() | st.booleans() | odd_numbers | odd_text,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(odd_text | KEYS, kids, max_size=3),
    max_leaves=10,
)
# number tokens Python's json would turn into values etcd's readers cannot take back
RAW_NUMBERS = [b"NaN", b"-Infinity", b"1e999", b"-1E+400", b"9" * 5000, b"-0", b"1e-400"]


@st.composite
def odd_bodies(draw: st.DrawFn) -> bytes:
    """A JSON text with odd values, in a near-valid object or alone, maybe nested deep."""
    value = draw(odd_json)
    where = draw(st.sampled_from(["alone", "field", "plugin", "free", "free"]))
    if where == "free":  # fields that take any string or number: the odd value gets stored
        value = {
            **TEMPLATES[0],
            "desc": draw(any_text),
            "name": draw(any_text),
            "priority": draw(st.integers(-(2**63), 2**63 - 1)),
            "plugins": {"proxy-rewrite": {"headers": {"set": {"X-Odd": draw(any_text)}}}},
        }
    elif where == "field":
        value = {**draw(st.sampled_from(TEMPLATES)), draw(st.sampled_from(FIELDS)): value}
    elif where == "plugin":
        conf = {draw(st.sampled_from(["uri", "headers", "body"])): value}
        value = {**TEMPLATES[0], "plugins": {"proxy-rewrite": conf}}
    # ensure_ascii: a surrogate becomes a \u escape (valid JSON text); else raw UTF-8
    # (surrogatepass: a surrogate encoded as UTF-8, which strict decoders refuse)
    if draw(st.booleans()):
        text = json.dumps(value).encode()
    else:
        text = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 4)) == 0:
        text = text.replace(b"null", draw(st.sampled_from(RAW_NUMBERS)), 1)
    if draw(st.booleans()):
        return text
    depth = draw(st.sampled_from([1, 99, 100, 101, 990, 1000, 5000, 50_000, 100_000]))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    return opener * depth + text + closer * depth


ODD_TARGETS = [
    ("PUT", "/routes/odd"), ("POST", "/routes"), ("PATCH", "/routes/odd"),
    ("PATCH", "/routes/odd/desc"), ("PUT", "/upstreams/odd"), ("PUT", "/consumers"),
    ("PUT", "/plugin_metadata/http-logger"), ("POST", "/schema/validate/routes"),
    ("POST", "/configs/validate"), ("PUT", "/routes/odd?dry_run=true"),
]  # fmt: skip
_canary = itertools.count()


@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(target=st.sampled_from(ODD_TARGETS), body=odd_bodies())
def test_odd_json_never_5xx_and_writes_still_reach_the_data_plane(
    gw: Gateway, upstream: Upstream, target: tuple[str, str], body: bytes
) -> None:
    method, path = target
    r = requests.request(
        method, gw.admin_url(path), data=body, headers={"X-API-KEY": KEY}, timeout=30
    )
    assert r.status_code < 500, (method, path, body[:200], r.status_code, r.text[:300])
    event(f"{method} {path}: {r.status_code}")  # --hypothesis-show-statistics: what got in
    logs = gw.logs()
    assert "Traceback" not in logs, (method, path, body[:200], logs[-3000:])
    # a write made afterwards reaches the data plane
    n = next(_canary)
    canary = {
        "uri": "/canary",
        "plugins": {"proxy-rewrite": {"uri": f"/canary/{n}"}},
        "upstream": {"nodes": {upstream.addr: 1}},
    }
    put = requests.put(
        gw.admin_url("/routes/canary"), json=canary, headers={"X-API-KEY": KEY}, timeout=10
    )
    assert put.status_code in (200, 201), put.text

    def served() -> bool:
        resp = requests.get(gw.url("/canary"), timeout=5)
        return resp.status_code == 200 and resp.json()["path"] == f"/canary/{n}"

    wait_until(served, timeout=10)


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


def test_no_traceback_in_the_log(gw: Gateway) -> None:
    """After the fuzz (file order): nothing the fuzz sent was logged as a failure."""
    logs = gw.logs()
    assert "Traceback" not in logs, logs[-3000:]
    assert "[ERROR]" not in logs, logs[-3000:]


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
