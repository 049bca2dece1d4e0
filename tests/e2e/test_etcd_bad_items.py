"""One bad key or value in etcd is one rejected item, never a wedged config pipeline (issue #18).

Every case writes straight into a real etcd (etcdctl with raw bytes, or the v3 JSON gateway with
base64 keys), against the real process: the item is logged once and counted, a write made
afterwards reaches the data plane, the Admin API's list/get and the control API answer without a
5xx, and nothing in the log is a traceback.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.etcd import EtcdServer
from tests.support.gateway import Gateway, wait_until
from tests.support.upstream import Upstream
from tollway.config.snapshot import read_snapshot

# Collections the store watches (tollway.model.KINDS), with the sub-directories that hold items.
DIRS = [
    "routes", "services", "upstreams", "consumers", "ssls", "global_rules", "plugin_configs",
    "consumer_groups", "plugin_metadata", "protos", "secrets", "stream_routes",
    "consumers/jack/credentials", "secrets/vault",
]  # fmt: skip
ADMIN_LISTS = [d for d in DIRS if "/" not in d] + ["consumers/jack/credentials"]
CONTROL = ["/v1/routes", "/v1/services", "/v1/upstreams", "/v1/plugin_metadatas", "/v1/healthcheck"]
DEEP = b'{"uri":"/deep","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def raw_put(etcd: EtcdServer, key: bytes, value: bytes) -> int:
    """A put through etcd's v3 JSON gateway: any bytes as key and value (base64 on the wire)."""
    body = {"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()}
    r = requests.post(etcd.endpoint + "/v3/kv/put", json=body, timeout=5)
    r.raise_for_status()
    return int(r.json()["header"]["revision"])


def etcdctl_put(etcd: EtcdServer, key: bytes, value: bytes) -> None:
    """A put with etcdctl: the key's raw bytes on the command line, the value on stdin."""
    etcd.etcdctl("put", key.decode("utf-8", "surrogateescape"), input=value)


def route(up: Upstream, uri: str) -> bytes:
    return json.dumps({"uri": uri, "upstream": {"nodes": {up.addr: 1}}}).encode()


def rejected(g: Gateway) -> int:
    return int(g.status("/status/config").json()["rejected"])


def serves(g: Gateway, uri: str) -> bool:
    return requests.get(g.url(uri), timeout=5).status_code == 200


def assert_apis_answer(g: Gateway, ids: tuple[str, ...] = ("good",)) -> None:
    """No 5xx from the Admin API's lists and gets nor from the control API."""
    head = {"X-API-KEY": g.admin_key}
    for d in ADMIN_LISTS:
        r = requests.get(g.admin_url(f"/{d}"), headers=head, timeout=5)
        assert r.status_code < 500, (d, r.status_code, r.text[:300])
    for path in [quote(i, safe="") for i in ids] + ["%FF", "%ED%A0%80", "k%FF%FE"]:
        r = requests.get(g.admin_url(f"/routes/{path}"), headers=head, timeout=5)
        assert r.status_code < 500, (path, r.status_code, r.text[:300])
    base = f"http://127.0.0.1:{g.control_port}"
    for path in [*CONTROL, "/v1/route/good"]:
        r = requests.get(base + path, timeout=5)
        assert r.status_code < 500, (path, r.status_code, r.text[:300])


def gateway(root: Path, etcd: EtcdServer, workers: int = 1) -> Gateway:
    return Gateway(root, mode="etcd", etcd=etcd.endpoint, workers=workers)


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, shared_etcd: EtcdServer, upstream: Upstream
) -> Iterator[Gateway]:
    shared_etcd.put("/apisix/routes/good", route(upstream, "/good"))
    with gateway(tmp_path_factory.mktemp("bad-items"), shared_etcd, workers=2) as g:
        yield g
        assert "Traceback" not in g.logs()


# -- each case of the issue ------------------------------------------------------------------

CASES = [
    # (name, key tail, value, log reason, written with)
    ("nonutf8-key", b"k\xff\xfe", b"{ROUTE}", "key is not valid UTF-8", "etcdctl"),
    ("nonutf8-key-gw", b"g\xc3\x28", b"{ROUTE}", "key is not valid UTF-8", "gateway"),
    ("deep", b"deep", DEEP, "invalid JSON: nested deeper than 64 levels", "gateway"),
    ("empty", b"empty", b"", "empty value", "gateway"),
    ("nonutf8-value", b"badval", b'{"uri":"/x\xff"}', "invalid JSON", "etcdctl"),
    ("surrogate", b"surr", b'{"uri":"/\\ud800"}', "invalid JSON", "gateway"),
]


@pytest.mark.parametrize(
    ("name", "tail", "value", "reason", "how"), CASES, ids=[c[0] for c in CASES]
)
def test_a_bad_item_is_skipped_logged_once_and_counted(
    gw: Gateway,
    shared_etcd: EtcdServer,
    upstream: Upstream,
    name: str,
    tail: bytes,
    value: bytes,
    reason: str,
    how: str,
) -> None:
    before = rejected(gw)
    key = b"/apisix/routes/" + tail
    value = value.replace(b"{ROUTE}", route(upstream, f"/{name}"))
    if how == "etcdctl":
        etcdctl_put(shared_etcd, key, value)
    else:
        raw_put(shared_etcd, key, value)
    # A later write reaches the data plane: the source is not stuck on the bad item.
    shared_etcd.put(f"/apisix/routes/after-{name}", route(upstream, f"/after-{name}"))
    wait_until(lambda: serves(gw, f"/after-{name}"), timeout=10)
    assert serves(gw, "/good")
    assert not serves(gw, f"/{name}")
    assert rejected(gw) == before + 1
    shown = key.decode("utf-8", "surrogateescape").encode("utf-8", "surrogateescape")
    line = f"rejected config item {shown.decode('utf-8', 'backslashreplace')}: {reason}"
    assert gw.logs().count(line) == 1
    assert_apis_answer(gw, ids=("good", tail.decode("utf-8", "replace")))
    assert "Traceback" not in gw.logs()
    assert "full reload follows" not in gw.logs()


def test_the_admin_list_shows_a_bad_key_and_value_as_text(
    gw: Gateway, shared_etcd: EtcdServer
) -> None:
    raw_put(shared_etcd, b"/apisix/upstreams/u\xff", b'{"nodes":{"a":1},"x":"\\udc80"}')
    r = requests.get(gw.admin_url("/upstreams"), headers={"X-API-KEY": gw.admin_key}, timeout=5)
    assert r.status_code == 200
    nodes = {n["key"]: n["value"] for n in r.json()["list"]}
    assert nodes["/apisix/upstreams/u\\xff"] == '{"nodes":{"a":1},"x":"\\udc80"}'


# -- restart, stop, worker deaths --------------------------------------------------------------


def put_twenty_bad_items(etcd: EtcdServer, up: Upstream) -> None:
    for i in range(5):
        raw_put(etcd, b"/apisix/routes/k\xff%d" % i, route(up, f"/k{i}"))
        raw_put(etcd, b"/apisix/routes/deep%d" % i, DEEP)
        raw_put(etcd, b"/apisix/routes/empty%d" % i, b"")
        raw_put(etcd, b"/apisix/upstreams/u%d" % i, b'{"nodes":{"a\xff":1}}')


def test_restart_with_bad_items_in_etcd_becomes_ready_and_serves(
    tmp_path: Path, etcd: EtcdServer, upstream: Upstream
) -> None:
    for i in range(3):
        etcd.put(f"/apisix/routes/ok{i}", route(upstream, f"/ok{i}"))
    put_twenty_bad_items(etcd, upstream)
    # APISIX's default graceful timeout: a stop that waits for it would take over 30 s.
    g = Gateway(tmp_path, mode="etcd", etcd=etcd.endpoint, workers=2,
                config={"tollway": {"graceful_timeout": 30}})  # fmt: skip
    with g:  # start() waits for /status/ready
        assert all(serves(g, f"/ok{i}") for i in range(3))
        assert rejected(g) == 20
        assert_apis_answer(g, ids=("ok0",))
        etcd.put("/apisix/routes/later", route(upstream, "/later"))
        wait_until(lambda: serves(g, "/later"), timeout=10)
        t0 = time.monotonic()
        assert g.stop() == 0
        assert time.monotonic() - t0 < 10
    assert "Traceback" not in g.logs()


def test_sigterm_with_a_bad_key_in_etcd_exits_cleanly_with_a_snapshot(
    tmp_path: Path, etcd: EtcdServer, upstream: Upstream
) -> None:
    raw_put(etcd, b"/apisix/routes/\xff", route(upstream, "/bad"))
    g = gateway(tmp_path, etcd)
    with g:
        etcd.put("/apisix/routes/1", route(upstream, "/one"))
        wait_until(lambda: serves(g, "/one"), timeout=10)
        g.signal(signal.SIGTERM)  # within the snapshot interval: written on the way out
        assert g.proc is not None and g.proc.wait(15) == 0
    assert "Traceback" not in g.logs()
    snap = read_snapshot(tmp_path / "run" / "config-snapshot.bin")
    assert snap is not None
    assert [kv.key for kv in snap[1]] == ["/apisix/routes/1"]


def test_a_worker_that_dies_again_and_again_is_always_restarted(
    tmp_path: Path, etcd: EtcdServer, upstream: Upstream
) -> None:
    raw_put(etcd, b"/apisix/routes/\xff", route(upstream, "/bad"))
    etcd.put("/apisix/routes/1", route(upstream, "/one"))
    g = gateway(tmp_path, etcd, workers=1)
    with g:
        for _ in range(3):
            (pid,) = g.worker_pids()
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda p=pid: g.worker_pids() not in ([], [p]), timeout=10)
            wait_until(lambda: g.status().status_code == 200, timeout=10)
            assert serves(g, "/one")
        etcd.put("/apisix/routes/2", route(upstream, "/two"))
        wait_until(lambda: serves(g, "/two"), timeout=10)
    assert "Traceback" not in g.logs()


# -- property: any bytes under any collection ----------------------------------------------------

etcd_bytes = st.binary(max_size=24) | st.sampled_from(
    [b"\xff", b"\xed\xa0\x80", b"\x00", b"/", b"init_dir", b'"\\udc80"', b"{}", b"[]", b"null"]
)
examples = iter(range(10**9))


@settings(
    max_examples=50,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.sampled_from(DIRS),
    etcd_bytes,
    etcd_bytes | st.integers(60, 3000).map(lambda n: b"{" + b'"a":{' * n + b"}" * n + b"}"),
    st.booleans(),
)
def test_any_bytes_under_any_collection_never_wedge_anything(
    gw: Gateway,
    shared_etcd: EtcdServer,
    upstream: Upstream,
    directory: str,
    tail: bytes,
    value: bytes,
    with_etcdctl: bool,
) -> None:
    key = f"/apisix/{directory}/".encode() + tail
    if with_etcdctl and value and b"\x00" not in key:
        etcdctl_put(shared_etcd, key, value)
    else:
        raw_put(shared_etcd, key, value)
    n = next(examples)
    shared_etcd.put(f"/apisix/routes/p{n}", route(upstream, f"/p{n}"))
    wait_until(lambda: serves(gw, f"/p{n}"), timeout=10)
    assert_apis_answer(gw, ids=("good", tail.decode("utf-8", "replace")))
    assert "Traceback" not in gw.logs()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            b'{"uri":"/d","plugins":{"nope":' + b"[" * 80 + b"]" * 80 + b"}}",
            "nested deeper than 64 levels",
        ),
        (b'{"uri":"/\\ud800","upstream":{"nodes":{"a:1":1}}}', "lone UTF-16 surrogate"),
    ],
)
def test_the_admin_api_refuses_what_the_store_would_reject(
    gw: Gateway, shared_etcd: EtcdServer, body: bytes, reason: str
) -> None:
    head = {"X-API-KEY": gw.admin_key, "Content-Type": "application/json"}
    r = requests.put(gw.admin_url("/routes/refused"), data=body, headers=head, timeout=5)
    assert r.status_code == 400, r.text
    assert reason in r.json()["error_msg"]
    assert shared_etcd.get("/apisix/routes/refused") is None
