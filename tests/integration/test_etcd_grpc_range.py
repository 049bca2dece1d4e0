"""A large full read goes over etcd's gRPC API (issue #17), with the gateway's exact answer.

Real etcd each time: the same keys, values and revisions as a read over the JSON gateway alone;
at one revision (a write after the first page does not leak in); with auth and with TLS; and
where gRPC cannot be used (TLS without verification, a failing gRPC read), the gateway finishes
the read instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.etcd import EtcdServer, arun, etcd, shared_etcd  # noqa: F401
from tollway.config import etcd_grpc
from tollway.config.etcd import KV, EtcdClient, EtcdTLS, MakeItem

COUNT = 60
BULK = 20  # keys after the first page from which the rest is read over gRPC


class _Spy(EtcdClient):
    """Real client that records what its gRPC read returned (None: it fell back), and can
    write after the first gateway page, before the rest is read."""

    write_key: str | None = None
    wrote_at = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grpc_results: list[list[Any] | None] = []

    async def _range_grpc(
        self, start: bytes, end: bytes, revision: int, make: MakeItem[Any]
    ) -> list[Any] | None:
        if self.write_key is not None:
            self.wrote_at, _ = await self.put(self.write_key, b"late")
            self.write_key = None
        got = await super()._range_grpc(start, end, revision, make)
        self.grpc_results.append(got)
        return got


async def _fill(client: EtcdClient, prefix: str) -> int:
    rev = 0
    for i in range(COUNT):
        rev, _ = await client.put(f"{prefix}k{i:04d}", f"value {i}".encode())
    return rev


def _same_read(grpc_read: tuple[int, list[KV]], gateway_read: tuple[int, list[KV]]) -> None:
    assert grpc_read[0] == gateway_read[0]
    assert grpc_read[1] == gateway_read[1]  # keys, values, create/mod revisions, versions


def test_bulk_read_over_grpc_equals_the_gateway_read(shared_etcd: EtcdServer) -> None:  # noqa: F811
    async def body() -> None:
        client = _Spy([shared_etcd.endpoint])
        try:
            last = await _fill(client, "/g1/")
            await client.put("/g10", b"outside the prefix")
            await client.put("/g1/k0007", b"a second version")
            client.write_key = "/g1/k9999"  # sorts last: on the gRPC part of the read
            rev, kvs = await client.range_all("/g1/", page_size=10, bulk_min=BULK)
            assert len(client.grpc_results) == 1 and client.grpc_results[0] is not None
            assert len(client.grpc_results[0]) == COUNT - 10
            assert rev > last and client.wrote_at > rev  # read at the first page's revision
            assert [kv.key for kv in kvs] == [f"/g1/k{i:04d}" for i in range(COUNT)]
            assert kvs[7].value == b"a second version" and kvs[7].version == 2
            assert kvs[59].value == b"value 59" and kvs[59].mod_revision == last
            # The same read at the same revision, over the gateway only.
            gateway = EtcdClient([shared_etcd.endpoint])
            try:
                plain = await gateway.range_all("/g1/", page_size=10, bulk_min=10**9)
                assert plain[0] == client.wrote_at  # now it sees the late write...
                at_rev = [kv for kv in plain[1] if kv.mod_revision <= rev]
                _same_read((rev, kvs), (rev, at_rev))  # ...and nothing else differs
                # What a config load takes: the same, as (key, value, mod, create) rows.
                rows = await client.range_rows("/g1/", page_size=10, bulk_min=BULK)
                assert client.grpc_results[-1] is not None
                assert rows[1] == [
                    (kv.key, kv.value, kv.mod_revision, kv.create_revision) for kv in plain[1]
                ]
            finally:
                await gateway.aclose()
        finally:
            await client.aclose()

    arun(body())


def test_small_read_stays_on_the_gateway(shared_etcd: EtcdServer) -> None:  # noqa: F811
    async def body() -> None:
        client = _Spy([shared_etcd.endpoint])
        try:
            await _fill(client, "/g2/")
            _, kvs = await client.range_all("/g2/", page_size=10, bulk_min=COUNT)
            assert len(kvs) == COUNT and client.grpc_results == []  # 50 left < 60: no gRPC
        finally:
            await client.aclose()

    arun(body())


def test_failing_grpc_read_is_finished_over_the_gateway(
    shared_etcd: EtcdServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any) -> list[Any]:
        raise OSError("gRPC is not there")

    async def body() -> None:
        client = _Spy([shared_etcd.endpoint])
        try:
            await _fill(client, "/g3/")
            expected = await client.range_all("/g3/", page_size=10, bulk_min=10**9)
            monkeypatch.setattr(etcd_grpc, "range_rest", broken)
            got = await client.range_all("/g3/", page_size=10, bulk_min=BULK)
            assert client.grpc_results == [None]
            _same_read(got, expected)
        finally:
            await client.aclose()

    arun(body())


def test_bulk_read_with_auth(etcd: EtcdServer) -> None:  # noqa: F811
    async def body() -> None:
        await asyncio.to_thread(
            etcd.etcdctl, "user", "add", "root", "--new-user-password", "s3cret"
        )
        await asyncio.to_thread(etcd.etcdctl, "auth", "enable")
        client = _Spy([etcd.endpoint], user="root", password="s3cret")
        try:
            await _fill(client, "/g4/")
            _, kvs = await client.range_all("/g4/", page_size=10, bulk_min=BULK)
            # The gateway's token authorises the gRPC read too (etcd's "token" metadata).
            assert client.grpc_results[0] is not None
            assert [kv.value for kv in kvs] == [f"value {i}".encode() for i in range(COUNT)]
        finally:
            await client.aclose()

    arun(body())


def test_bulk_read_over_tls() -> None:
    with EtcdServer(tls=True) as server:
        pki = server.pki

        async def body() -> None:
            verified = EtcdTLS(
                str(pki / "client.pem"), str(pki / "client.key"), ca=str(pki / "ca.pem")
            )
            client = _Spy([server.endpoint], tls=verified, timeout=5)
            unverified = EtcdTLS(str(pki / "client.pem"), str(pki / "client.key"), verify=False)
            lax = _Spy([server.endpoint], tls=unverified, timeout=5)
            try:
                await _fill(client, "/g5/")
                got = await client.range_all("/g5/", page_size=10, bulk_min=BULK)
                assert client.grpc_results[0] is not None
                # gRPC cannot skip verification: that client reads over the gateway only.
                lax_got = await lax.range_all("/g5/", page_size=10, bulk_min=BULK)
                assert lax.grpc_results == [None]
                _same_read(got, lax_got)
            finally:
                await client.aclose()
                await lax.aclose()

        arun(body())
