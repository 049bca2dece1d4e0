"""The generic resource over an in-memory etcd (no sockets): status codes, timestamps,
dry run, POST ids, PATCH compare-and-swap, cascading consumer delete."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from tollway.admin.resource import AdminError, AdminResources, Target, parse_target
from tollway.config.etcd import KV, RangeResult
from tollway.config.store import Store
from tollway.plugins.registry import load_registry

T = TypeVar("T")


class MemoryEtcd:
    """The subset of EtcdClient the Admin API uses, with etcd's revision rules."""

    def __init__(self) -> None:
        self.kvs: dict[str, KV] = {}
        self.revision = 1
        self.before_txn: Callable[[], None] | None = None

    def _set(self, key: str, value: bytes, lease: int | None) -> KV | None:
        self.revision += 1
        prev = self.kvs.get(key)
        created = prev.create_revision if prev else self.revision
        version = prev.version + 1 if prev else 1
        self.kvs[key] = KV(key, value, created, self.revision, version, lease or 0)
        return prev

    async def get(self, key: str) -> KV | None:
        return self.kvs.get(key)

    async def range(self, key: str, **_: Any) -> RangeResult:
        kv = self.kvs.get(key)
        return RangeResult(self.revision, [kv] if kv else [], False, 1 if kv else 0)

    async def range_all(self, prefix: str) -> tuple[int, list[KV]]:
        return self.revision, [self.kvs[k] for k in sorted(self.kvs) if k.startswith(prefix)]

    async def put(
        self, key: str, value: bytes, *, lease: int | None = None, prev_kv: bool = False
    ) -> tuple[int, KV | None]:
        prev = self._set(key, value, lease)
        return self.revision, prev if prev_kv else None

    async def put_if(
        self, key: str, value: bytes, *, mod_revision: int, lease: int | None = None
    ) -> tuple[bool, int]:
        if self.before_txn is not None:
            self.before_txn()
        cur = self.kvs.get(key)
        if (cur.mod_revision if cur else 0) != mod_revision:
            return False, self.revision
        self._set(key, value, lease)
        return True, self.revision

    async def delete(self, key: str, *, prefix: bool = False) -> tuple[int, int]:
        gone = [k for k in self.kvs if (k.startswith(key) if prefix else k == key)]
        for k in gone:
            del self.kvs[k]
        if gone:
            self.revision += 1
        return self.revision, len(gone)

    async def lease_grant(self, ttl: int) -> int:
        return 4242


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def etcd() -> MemoryEtcd:
    return MemoryEtcd()


@pytest.fixture
def api(etcd: MemoryEtcd) -> AdminResources:
    now = iter(range(1000, 100000))
    store = Store("/apisix")
    store.revision = 10**9  # the Store is "caught up": no waiting in unit tests
    return AdminResources(
        etcd,  # type: ignore[arg-type]
        "/apisix",
        store,
        load_registry(),
        clock=lambda: next(now),
    )


def target(path: str) -> Target:
    t = parse_target(path.strip("/").split("/"))
    assert t is not None
    return t


def stored(etcd: MemoryEtcd, key: str) -> Any:
    return json.loads(etcd.kvs[key].value)


ROUTE = {"uri": "/a", "upstream": {"nodes": {"127.0.0.1:80": 1}}}


def test_put_create_then_replace_keeps_create_time(api: AdminResources, etcd: MemoryEtcd) -> None:
    r1 = run(api.put(target("routes/1"), ROUTE, {}))
    assert r1.status == 201
    r2 = run(api.put(target("routes/1"), {**ROUTE, "name": "n"}, {}))
    assert r2.status == 200
    v = stored(etcd, "/apisix/routes/1")
    assert v["create_time"] == r1.body["value"]["create_time"] < v["update_time"]
    assert v == {**ROUTE, "name": "n", "id": "1", "create_time": 1000, "update_time": 1001}


def test_dry_run_writes_nothing(api: AdminResources, etcd: MemoryEtcd) -> None:
    for coro in (
        api.put(target("routes/1"), ROUTE, {"dry_run": "true"}),
        api.post(target("routes"), ROUTE, {"dry_run": "true"}),
    ):
        reply = run(coro)
        assert reply.dry_run and reply.status == 201
    assert etcd.kvs == {} and etcd.revision == 1
    run(api.put(target("routes/1"), ROUTE, {}))
    before = dict(etcd.kvs)
    reply = run(api.patch(target("routes/1"), {"name": "x"}, {"dry_run": "true"}))
    assert reply.body["value"]["name"] == "x" and etcd.kvs == before


def test_post_id_is_the_gen_id_revision(api: AdminResources, etcd: MemoryEtcd) -> None:
    reply = run(api.post(target("upstreams"), {"nodes": {"127.0.0.1:80": 1}}, {}))
    gen = etcd.kvs["/apisix/gen_id"]
    assert gen.value == b"1"
    assert reply.body["value"]["id"] == f"{gen.mod_revision:020d}"
    assert reply.body["key"] == f"/apisix/upstreams/{gen.mod_revision:020d}"


def test_patch_is_compare_and_swap(api: AdminResources, etcd: MemoryEtcd) -> None:
    run(api.put(target("routes/1"), ROUTE, {}))

    def concurrent_write() -> None:
        etcd.before_txn = None
        etcd._set("/apisix/routes/1", json.dumps({**ROUTE, "desc": "other"}).encode(), None)

    etcd.before_txn = concurrent_write
    with pytest.raises(AdminError) as e:
        run(api.patch(target("routes/1"), {"name": "mine"}, {}))
    assert e.value.status == 503
    assert e.value.body == {"error_msg": "value changed before overwritten"}
    assert stored(etcd, "/apisix/routes/1")["desc"] == "other"


def test_rejected_patch_changes_nothing(api: AdminResources, etcd: MemoryEtcd) -> None:
    run(api.put(target("routes/1"), ROUTE, {}))
    before = etcd.kvs["/apisix/routes/1"]
    with pytest.raises(AdminError) as e:
        run(api.patch(target("routes/1"), {"uri": None}, {}))
    assert e.value.status == 400
    assert etcd.kvs["/apisix/routes/1"] is before


def test_ttl_uses_a_lease(api: AdminResources, etcd: MemoryEtcd) -> None:
    run(api.put(target("routes/1"), ROUTE, {"ttl": "5"}))
    assert etcd.kvs["/apisix/routes/1"].lease == 4242


def test_consumer_delete_takes_its_credentials(api: AdminResources, etcd: MemoryEtcd) -> None:
    run(api.put(target("consumers"), {"username": "jack"}, {}))
    run(api.put(target("consumers/jack/credentials/c1"), {"desc": "d"}, {}))
    run(api.put(target("consumers"), {"username": "jackson"}, {}))
    assert run(api.delete(target("consumers/jack"), {})).body == {
        "deleted": "1",
        "key": "/apisix/consumers/jack",
    }
    assert sorted(etcd.kvs) == ["/apisix/consumers/jackson"]


def test_list_skips_sub_keys_and_dir_markers(api: AdminResources, etcd: MemoryEtcd) -> None:
    etcd._set("/apisix/consumers/", b"init_dir", None)
    run(api.put(target("consumers"), {"username": "jack"}, {}))
    run(api.put(target("consumers/jack/credentials/c1"), {"desc": "d"}, {}))
    body = run(api.get(target("consumers"), {})).body
    assert body["total"] == 1 and body["list"][0]["key"] == "/apisix/consumers/jack"
    body = run(api.get(target("consumers/jack/credentials"), {})).body
    assert [n["value"]["id"] for n in body["list"]] == ["c1"]
