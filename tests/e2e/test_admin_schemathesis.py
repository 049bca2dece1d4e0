"""A bounded Schemathesis run against the Admin API's own OpenAPI description (issue #6):
no 5xx for anything the description allows, etcd afterwards holds only valid objects, and the
gateway's log holds no traceback (issue #18)."""

from __future__ import annotations

import base64
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, settings

from tests.support.etcd import EtcdServer
from tests.support.gateway import Gateway
from tollway.admin.openapi import openapi_document
from tollway.checks import ItemChecker
from tollway.model import decode_item, kind_of_key
from tollway.plugins.registry import load_registry

schemathesis = pytest.importorskip("schemathesis")

KEY = "test-admin-key-0123456789"
PREFIX = "/st"
schema = schemathesis.openapi.from_dict(openapi_document())
CALLS: Counter[str] = Counter()  # answers by status class, over the whole run


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, shared_etcd: EtcdServer) -> Iterator[Gateway]:
    root: Path = tmp_path_factory.mktemp("admin-st")
    with Gateway(root, mode="etcd", etcd=shared_etcd.endpoint, prefix=PREFIX, admin_key=KEY) as g:
        yield g


@schema.parametrize()
# Bounded in `make test`; a longer run: TOLLWAY_FUZZ_EXAMPLES=500 pytest tests/e2e/test_admin_schemathesis.py
# `make test` replays a fixed set of examples (derandomized) so CI is reproducible; a longer
# run explores new ones.
@settings(
    max_examples=int(os.environ.get("TOLLWAY_FUZZ_EXAMPLES", "10")),
    derandomize="TOLLWAY_FUZZ_EXAMPLES" not in os.environ,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case: Any, gw: Gateway) -> None:
    resp = case.call(
        base_url=f"http://127.0.0.1:{gw.admin_port}", headers={"X-API-KEY": KEY}, timeout=10
    )
    CALLS[f"{resp.status_code // 100}xx"] += 1
    assert resp.status_code < 500, (case.method, case.formatted_path, case.body, resp.text)


def test_etcd_holds_only_valid_objects(gw: Gateway, shared_etcd: EtcdServer) -> None:
    checker = ItemChecker(load_registry(), strict=True)
    out = shared_etcd.etcdctl("get", PREFIX + "/", "--prefix", "-w", "json")
    for kv in json.loads(out).get("kvs", []):
        where = kind_of_key(base64.b64decode(kv["key"]).decode(), PREFIX)
        if where is None or where[0] in ("secrets", "plugin_metadata"):
            continue
        kind, item_id = where
        obj = decode_item(kind, msgspec.json.decode(base64.b64decode(kv["value"])))
        checker(kind, item_id, obj, None)


def test_no_traceback_in_the_log(gw: Gateway) -> None:
    """After the run (file order): nothing Schemathesis sent was logged as a failure."""
    print(f"\nschemathesis: {sum(CALLS.values())} requests, {dict(sorted(CALLS.items()))}")
    logs = gw.logs()
    assert "Traceback" not in logs, logs[-3000:]
    assert "[ERROR]" not in logs, logs[-3000:]
