"""EtcdClient against a real etcd (HTTP/JSON gateway); no mocks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.support.etcd import EtcdServer, arun, etcd, free_port, shared_etcd  # noqa: F401
from tollway.config.etcd import EtcdClient, EtcdTLS, WatchResponse, prefix_range_end
from tollway.errors import EtcdCompacted, EtcdError, EtcdUnavailable


def test_prefix_range_end() -> None:
    assert prefix_range_end(b"/apisix/routes/") == b"/apisix/routes0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff\xff") == b"\x00"
    assert prefix_range_end(b"") == b"\x00"


def test_put_get_delete(shared_etcd: EtcdServer) -> None:  # noqa: F811
    async def body() -> None:
        client = EtcdClient([shared_etcd.endpoint])
        try:
            rev, prev = await client.put("/t1/a", b'{"x":1}')
            assert prev is None and rev > 0
            kv = await client.get("/t1/a")
            assert kv is not None
            assert (kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.version) == (
                "/t1/a",
                b'{"x":1}',
                rev,
                rev,
                1,
            )
            rev2, prev = await client.put("/t1/a", b"\x00\xff binary", prev_kv=True)
            assert prev is not None and prev.value == b'{"x":1}' and rev2 == rev + 1
            await client.put("/t1/empty", b"")  # proto3 omits the empty value
            empty = await client.get("/t1/empty")
            assert empty is not None and empty.value == b""
            assert await client.get("/t1/missing") is None
            empty_range = await client.range("/t1/nothing/", prefix=True)
            assert empty_range.kvs == [] and empty_range.count == 0 and not empty_range.more
            await client.put("/t1/b/1", b"1")
            await client.put("/t1/b/2", b"2")
            res = await client.range("/t1/b/", prefix=True, keys_only=True)
            assert [k.key for k in res.kvs] == ["/t1/b/1", "/t1/b/2"] and res.count == 2
            assert all(k.value == b"" for k in res.kvs)
            _, deleted = await client.delete("/t1/b/", prefix=True)
            assert deleted == 2
            _, deleted = await client.delete("/t1/a")
            assert deleted == 1
            _, deleted = await client.delete("/t1/a")
            assert deleted == 0
            version = await client.version()
            assert version["etcdserver"].startswith("3.")
        finally:
            await client.aclose()

    arun(body())


class _WriteDuringPagination(EtcdClient):
    """Real client; after the first range page it writes, so the next pages must not see it."""

    wrote_at: int = 0

    async def _call(
        self, path: str, body: dict[str, Any], *, timeout: float | None = None
    ) -> bytes:
        data = await super()._call(path, body, timeout=timeout)
        if path == "/v3/kv/range" and not self.wrote_at:
            self.wrote_at = -1
            await self.put("/t2/k0099", b"late")  # sorts after every page
            rev, _ = await self.delete("/t2/k0040")  # on a later page
            self.wrote_at = rev
        return data


def test_range_all_paginates_at_one_revision(shared_etcd: EtcdServer) -> None:  # noqa: F811
    async def body() -> None:
        client = _WriteDuringPagination([shared_etcd.endpoint])
        try:
            last = 0
            for i in range(0, 95):
                last, _ = await client.put(f"/t2/k{i:04d}", f"v{i}".encode())
            await client.put("/t20", b"outside the prefix")
            rev, kvs = await client.range_all("/t2/", page_size=10)
            assert client.wrote_at > rev
            assert rev >= last
            assert [kv.key for kv in kvs] == [f"/t2/k{i:04d}" for i in range(95)]
            assert kvs[40].value == b"v40"
            # A plain client now sees the writes.
            rev2, kvs2 = await client.range_all("/t2/", page_size=1000)
            assert rev2 == client.wrote_at and len(kvs2) == 95
            assert "/t2/k0040" not in {kv.key for kv in kvs2}
        finally:
            await client.aclose()

    arun(body())


def test_put_if_compare_and_swap(shared_etcd: EtcdServer) -> None:  # noqa: F811
    async def body() -> None:
        client = EtcdClient([shared_etcd.endpoint])
        try:
            ok, rev = await client.put_if("/t3/k", b"1", mod_revision=0)
            assert ok
            ok, rev_fail = await client.put_if("/t3/k", b"2", mod_revision=0)
            assert not ok and rev_fail == rev
            ok, rev2 = await client.put_if("/t3/k", b"3", mod_revision=rev)
            assert ok and rev2 == rev + 1
            ok, _ = await client.put_if("/t3/k", b"4", mod_revision=rev)  # stale
            assert not ok
            kv = await client.get("/t3/k")
            assert kv is not None and kv.value == b"3"
        finally:
            await client.aclose()

    arun(body())


def test_lease_expires_key(shared_etcd: EtcdServer) -> None:  # noqa: F811
    async def body() -> None:
        client = EtcdClient([shared_etcd.endpoint])
        try:
            lease = await client.lease_grant(1)  # etcd rounds up to its minimum TTL (~2 s)
            assert lease > 0
            rev, _ = await client.put("/t4/leased", b"x", lease=lease)
            kv = await client.get("/t4/leased")
            assert kv is not None and kv.lease == lease
            ok, _ = await client.put_if("/t4/cas-leased", b"y", mod_revision=0, lease=lease)
            assert ok
            watch = client.watch("/t4/", rev + 1)
            deleted: set[str] = set()
            deadline = time.monotonic() + 10
            async with watch:
                async for resp in watch:
                    deleted |= {e.kv.key for e in resp.events if e.type == "DELETE"}
                    if deleted == {"/t4/leased", "/t4/cas-leased"}:
                        break
                    assert time.monotonic() < deadline
            assert await client.get("/t4/leased") is None
        finally:
            await client.aclose()

    arun(body())


def test_watch_delivers_puts_and_deletes_in_order(shared_etcd: EtcdServer) -> None:  # noqa: F811
    async def body() -> None:
        client = EtcdClient([shared_etcd.endpoint])
        try:
            start, _ = await client.put("/t5/before", b"0")
            watch = client.watch("/t5/", start + 1)
            first = await anext(watch)
            assert first.created and first.revision >= start
            expected: list[tuple[str, str, bytes, int]] = []
            for i in range(20):
                rev, _ = await client.put(f"/t5/k{i % 3}", f"v{i}".encode())
                expected.append(("PUT", f"/t5/k{i % 3}", f"v{i}".encode(), rev))
                if i % 4 == 3:
                    rev, _ = await client.delete(f"/t5/k{i % 3}")
                    expected.append(("DELETE", f"/t5/k{i % 3}", b"", rev))
            await client.put("/t50", b"outside the prefix")
            seen: list[tuple[str, str, bytes, int]] = []
            async with watch:
                async for resp in watch:
                    for ev in resp.events:
                        seen.append((ev.type, ev.kv.key, ev.kv.value, ev.kv.mod_revision))
                    if len(seen) >= len(expected):
                        break
            assert seen == expected
            # Replaying history: a watch from the old revision sees the same events again.
            replay = client.watch("/t5/", start + 1)
            again: list[tuple[str, str, bytes, int]] = []
            async with replay:
                async for resp in replay:
                    again += [
                        (e.type, e.kv.key, e.kv.value, e.kv.mod_revision) for e in resp.events
                    ]
                    if len(again) >= len(expected):
                        break
            assert again == expected
        finally:
            await client.aclose()

    arun(body())


def test_watch_large_value_and_progress(shared_etcd: EtcdServer) -> None:  # noqa: F811
    async def body() -> None:
        client = EtcdClient([shared_etcd.endpoint])
        try:
            big = bytes(range(256)) * 4000  # 1 MB: one ~1.4 MB JSON line
            rev = (await client.range("/t6/")).revision
            watch = client.watch("/t6/", rev + 1)
            got: list[WatchResponse] = []
            async with watch:
                await anext(watch)  # created
                await client.put("/t6/big", big)
                async for resp in watch:
                    got.append(resp)
                    if not resp.events:  # a progress line (server interval 1 s)
                        break
            assert got[0].events[0].kv.value == big
            assert got[-1].revision >= got[0].events[0].kv.mod_revision
        finally:
            await client.aclose()

    arun(body())


def test_compaction_is_reported(shared_etcd: EtcdServer) -> None:  # noqa: F811
    async def body() -> None:
        client = EtcdClient([shared_etcd.endpoint])
        try:
            old, _ = await client.put("/t7/k", b"1")
            latest, _ = await client.put("/t7/k", b"2")
            await client.compact(latest)
            with pytest.raises(EtcdCompacted) as info:
                await client.range("/t7/k", revision=old)
            assert info.value.code == 11
            with pytest.raises(EtcdCompacted):
                await client.compact(old)
            watch = client.watch("/t7/", old)
            responses = [resp async for resp in watch]  # ends by itself after the cancel
            assert responses[-1].canceled and responses[-1].compact_revision == latest
            # Watching from the compact revision itself works.
            watch = client.watch("/t7/", latest)
            async with watch:
                async for resp in watch:
                    if resp.events:
                        assert resp.events[0].kv.value == b"2"
                        break
        finally:
            await client.aclose()

    arun(body())


def test_unavailable_and_failover(shared_etcd: EtcdServer) -> None:  # noqa: F811
    dead = f"http://127.0.0.1:{free_port()}"

    async def body() -> None:
        lonely = EtcdClient([dead], timeout=2)
        try:
            t0 = time.monotonic()
            with pytest.raises(EtcdUnavailable):
                await lonely.get("/x")
            with pytest.raises(EtcdUnavailable):
                await anext(lonely.watch("/x/", 1))
            assert time.monotonic() - t0 < 2
        finally:
            await lonely.aclose()

        client = EtcdClient([dead, shared_etcd.endpoint], timeout=2)
        try:
            rev, _ = await client.put("/t8/k", b"v")
            assert client.endpoint == shared_etcd.endpoint
            kv = await client.get("/t8/k")
            assert kv is not None and kv.value == b"v"
            client._current = 0  # the dead one first again: the watch fails over too
            watch = client.watch("/t8/", rev)
            async with watch:
                async for resp in watch:
                    if resp.events:
                        assert resp.events[0].kv.key == "/t8/k"
                        break
            assert watch.endpoint == shared_etcd.endpoint
        finally:
            await client.aclose()

    arun(body())


def test_watch_raises_when_etcd_dies(etcd: EtcdServer) -> None:  # noqa: F811
    async def body() -> None:
        client = EtcdClient([etcd.endpoint], timeout=2)
        try:
            watch = client.watch("/t9/", 1)
            assert (await anext(watch)).created
            etcd.kill()
            t0 = time.monotonic()
            with pytest.raises(EtcdUnavailable):
                async for _ in watch:
                    pass
            assert time.monotonic() - t0 < 2
            await watch.aclose()
            with pytest.raises(EtcdUnavailable):
                await client.get("/t9/k")
            etcd.start()  # same data dir and port: the same client works again
            await client.put("/t9/k", b"back")
            kv = await client.get("/t9/k")
            assert kv is not None and kv.value == b"back"
        finally:
            await client.aclose()

    arun(body())


def test_auth(etcd: EtcdServer) -> None:  # noqa: F811
    async def before_auth_is_enabled() -> EtcdClient:
        early = EtcdClient([etcd.endpoint], user="root", password="s3cret")
        await early.put("/ta/early", b"1")  # auth is off: no token is sent
        return early

    async def body() -> None:
        early = await before_auth_is_enabled()
        await asyncio.to_thread(
            etcd.etcdctl, "user", "add", "root", "--new-user-password", "s3cret"
        )
        await asyncio.to_thread(etcd.etcdctl, "auth", "enable")
        kv = await early.get("/ta/early")  # refused without a token: authenticates, retries
        assert kv is not None and kv.value == b"1"
        await early.aclose()
        anonymous = EtcdClient([etcd.endpoint])
        wrong = EtcdClient([etcd.endpoint], user="root", password="nope")
        client = EtcdClient([etcd.endpoint], user="root", password="s3cret")
        try:
            with pytest.raises(EtcdError) as info:
                await anonymous.get("/a")
            assert not isinstance(info.value, EtcdUnavailable)
            with pytest.raises(EtcdError, match="authentication failed"):
                await wrong.get("/a")
            rev, _ = await client.put("/ta/k", b"v")
            kv = await client.get("/ta/k")
            assert kv is not None and kv.value == b"v"
            # An expired/unknown token: the client authenticates again, for requests and watches.
            client._token = "bogus.1"
            kv = await client.get("/ta/k")
            assert kv is not None
            client._token = "bogus.2"
            watch = client.watch("/ta/", rev)
            async with watch:
                async for resp in watch:
                    assert not resp.canceled, resp.cancel_reason
                    if resp.events:
                        assert resp.events[0].kv.value == b"v"
                        break
            # Without a token, a watch is refused: reported as canceled, not hung.
            refused = [r async for r in anonymous.watch("/ta/", rev)]
            assert refused[-1].canceled and "user name is empty" in refused[-1].cancel_reason
        finally:
            await anonymous.aclose()
            await wrong.aclose()
            await client.aclose()

    arun(body())


def test_tls_with_client_certificate() -> None:
    with EtcdServer(tls=True) as server:
        pki = server.pki

        async def body() -> None:
            tls = EtcdTLS(str(pki / "client.pem"), str(pki / "client.key"), ca=str(pki / "ca.pem"))
            client = EtcdClient([server.endpoint], tls=tls, timeout=3)
            no_cert = EtcdClient([server.endpoint], tls=EtcdTLS(ca=str(pki / "ca.pem")), timeout=3)
            untrusted = EtcdClient([server.endpoint], tls=EtcdTLS(), timeout=3)
            try:
                rev, _ = await client.put("/tls/k", b"v")
                kv = await client.get("/tls/k")
                assert kv is not None and kv.value == b"v"
                watch = client.watch("/tls/", rev)
                async with watch:
                    async for resp in watch:
                        if resp.events:
                            break
                with pytest.raises(EtcdError):
                    await no_cert.get("/tls/k")  # the server wants a client certificate
                with pytest.raises(EtcdError):
                    await untrusted.get("/tls/k")  # unknown CA
            finally:
                for c in (client, no_cert, untrusted):
                    await c.aclose()

        arun(body())
