"""EtcdSource against a real etcd that gets compacted, killed, frozen, wiped; no mocks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

import pytest

from tests.support.etcd import EtcdServer, arun, etcd, free_port  # noqa: F401
from tests.support.wait import until
from tollway.config.etcd import EtcdClient
from tollway.config.etcd_source import EtcdSource, backoff_delay
from tollway.config.source import KeyValue

PREFIX = "/apisix"


class RecordingSink:
    """Keeps the state the source described and checks the ConfigSink contract as it goes."""

    def __init__(self) -> None:
        self.loads: list[tuple[int, list[KeyValue]]] = []
        self.applies: list[tuple[int, list[KeyValue]]] = []
        self.state: dict[str, bytes] = {}
        self.revision = 0
        self.on_apply: Callable[[int, list[KeyValue]], None] | None = None
        self.on_load: Callable[[int, list[KeyValue]], None] | None = None

    def load(self, revision: int, kvs: list[KeyValue]) -> None:
        assert [kv.key for kv in kvs] == sorted(kv.key for kv in kvs)
        assert all(kv.key.startswith(PREFIX + "/") and kv.value is not None for kv in kvs)
        self.loads.append((revision, kvs))
        self.state = {kv.key: kv.value for kv in kvs if kv.value is not None}
        self.revision = revision
        if self.on_load is not None:
            hook, self.on_load = self.on_load, None
            hook(revision, kvs)

    def apply(self, revision: int, changes: list[KeyValue]) -> None:
        assert changes
        revs = [kv.mod_revision for kv in changes]
        assert revs == sorted(revs) and revs[0] > self.revision and revs[-1] <= revision, (
            self.revision,
            revision,
            revs,
        )
        self.applies.append((revision, changes))
        for kv in changes:
            assert kv.key.startswith(PREFIX + "/")
            if kv.value is None:
                self.state.pop(kv.key, None)
            else:
                self.state[kv.key] = kv.value
        self.revision = revision
        if self.on_apply is not None:
            hook, self.on_apply = self.on_apply, None
            hook(revision, changes)


def etcd_state(server: EtcdServer) -> dict[str, bytes]:
    out = server.etcdctl("get", PREFIX + "/", "--prefix", "-w", "json")
    kvs = json.loads(out).get("kvs", [])
    return {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")) for kv in kvs
    }


def fast_source(client: EtcdClient, **kw: object) -> EtcdSource:
    settings: dict[str, object] = {
        "resync_delay": 0.2,
        "health_check_interval": 0.3,
        "probe_timeout": 0.5,
        **kw,
    }
    src = EtcdSource(client, PREFIX, **settings)  # type: ignore[arg-type]
    src.backoff_initial = 0.05
    src.backoff_max = 0.3
    return src


@contextlib.asynccontextmanager
async def running(source: EtcdSource, sink: RecordingSink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(source.run(sink))
    try:
        yield task
    finally:
        assert not task.done(), task  # run() never returns or raises on its own
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await source.client.aclose()


def test_backoff_is_capped_and_jittered() -> None:
    delays = [backoff_delay(n, 0.2, 2, 8, lambda: 1.0) for n in range(10)]
    assert delays[:3] == [0.2, 0.4, 0.8] and max(delays) == 8
    assert backoff_delay(3, 0.2, 2, 8, lambda: 0.0) == pytest.approx(0.8)


def test_full_load_then_changes(etcd: EtcdServer) -> None:  # noqa: F811
    for i in range(30):
        etcd.put(f"{PREFIX}/routes/{i}", f'{{"uri":"/{i}"}}')
    etcd.put(PREFIX + "0/outside", "x")
    etcd.put("/apisix", "the bare prefix key is not under the dir")

    async def body() -> None:
        client = EtcdClient([etcd.endpoint], timeout=2)
        sink = RecordingSink()
        source = fast_source(client)
        async with running(source, sink):
            await until(lambda: source.connected and len(sink.loads) == 1)
            assert len(sink.state) == 30 and sink.loads[0][0] == source.revision
            rev, _ = await client.put(f"{PREFIX}/routes/new", b'{"uri":"/new"}')
            await until(lambda: source.revision >= rev)
            await client.delete(f"{PREFIX}/routes/3")
            async with asyncio.TaskGroup() as tg:  # concurrent writers
                for i in range(40):
                    tg.create_task(client.put(f"{PREFIX}/upstreams/{i % 7}", str(i).encode()))
            await client.delete(f"{PREFIX}/upstreams/", prefix=True)
            last, _ = await client.put(f"{PREFIX}/upstreams/9", b"{}")
            await until(lambda: source.revision >= last)
            assert sink.state == etcd_state(etcd)
            assert len(sink.loads) == 1 and source.reloads == 0
            assert source.etcd_revision >= source.revision

    arun(body())


def test_compaction_during_outage_loses_no_update(etcd: EtcdServer) -> None:  # noqa: F811
    """The watch breaks; while the source is away etcd gets writes and is compacted, so the
    re-watch from revision+1 is refused as compacted: full reload, then later writes flow."""
    etcd.put(f"{PREFIX}/routes/1", "{}")

    def while_away(revision: int, changes: list[KeyValue]) -> None:
        # Runs inside sink.apply, so the source cannot read the stream meanwhile.
        etcd.kill()
        etcd.start()
        etcd.put(f"{PREFIX}/routes/2", '{"b":1}')
        etcd.delete(f"{PREFIX}/routes/1")
        etcd.compact()

    async def body() -> None:
        client = EtcdClient([etcd.endpoint], timeout=2)
        sink = RecordingSink()
        source = fast_source(client)
        async with running(source, sink):
            await until(lambda: source.connected)
            sink.on_apply = while_away
            await client.put(f"{PREFIX}/routes/0", b"{}")
            await until(lambda: source.reloads == 1 and source.connected, timeout=15)
            assert len(sink.loads) == 2
            assert {kv.key for kv in sink.loads[1][1]} == {
                f"{PREFIX}/routes/0",
                f"{PREFIX}/routes/2",
            }
            last = 0
            for i in range(5):
                last, _ = await client.put(f"{PREFIX}/routes/x{i}", b"{}")
            await until(lambda: source.revision >= last)
            assert sink.state == etcd_state(etcd)

    arun(body())


def test_compaction_racing_the_first_load(etcd: EtcdServer) -> None:  # noqa: F811
    etcd.put(f"{PREFIX}/routes/1", "{}")

    def compact_now(revision: int, kvs: list[KeyValue]) -> None:
        etcd.put(f"{PREFIX}/routes/2", "{}")
        etcd.put(f"{PREFIX}/routes/2", '{"v":2}')  # a watch from revision+1 is now compacted
        etcd.compact()

    async def body() -> None:
        client = EtcdClient([etcd.endpoint], timeout=2)
        sink = RecordingSink()
        sink.on_load = compact_now
        source = fast_source(client)
        async with running(source, sink):
            await until(lambda: source.reloads == 1 and source.connected)
            assert set(sink.state) == {f"{PREFIX}/routes/1", f"{PREFIX}/routes/2"}
            assert sink.state[f"{PREFIX}/routes/2"] == b'{"v":2}'
            rev, _ = await client.put(f"{PREFIX}/routes/3", b"{}")
            await until(lambda: source.revision >= rev)
            assert sink.state == etcd_state(etcd)

    arun(body())


def test_etcd_killed_then_restarted(etcd: EtcdServer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    caplog.set_level(logging.INFO, logger="tollway.config")

    async def body() -> None:
        client = EtcdClient([etcd.endpoint], timeout=2)
        sink = RecordingSink()
        source = fast_source(client)
        async with running(source, sink):
            rev, _ = await client.put(f"{PREFIX}/routes/1", b"{}")
            await until(lambda: source.revision >= rev)
            etcd.kill()
            await until(lambda: not source.connected, timeout=3)
            assert source.last_error and sink.state == {f"{PREFIX}/routes/1": b"{}"}
            await asyncio.to_thread(etcd.start)
            rev, _ = await client.put(f"{PREFIX}/routes/2", b"{}")
            await until(lambda: source.revision >= rev and source.connected, timeout=10)
            assert sink.state == etcd_state(etcd)
            assert len(sink.loads) == 1  # same data: no reload needed

    arun(body())
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings, "the outage was logged"
    assert len(warnings) == len(set(warnings)), "the same message is logged once per 30 s"


def test_frozen_etcd_is_detected_and_recovers(etcd: EtcdServer) -> None:  # noqa: F811
    async def body() -> None:
        client = EtcdClient([etcd.endpoint], timeout=1)
        sink = RecordingSink()
        source = fast_source(client)
        async with running(source, sink):
            await until(lambda: source.connected)
            etcd.pause()
            t0 = time.monotonic()
            try:
                await until(lambda: not source.connected, timeout=5)
                detected = time.monotonic() - t0
            finally:
                etcd.resume()
            await until(lambda: source.connected, timeout=10)
            rev, _ = await client.put(f"{PREFIX}/routes/after", b"{}")
            await until(lambda: source.revision >= rev)
            assert sink.state == etcd_state(etcd)
        print(f"SIGSTOP detected after {detected:.2f} s")
        assert detected < 3

    arun(body())


def test_wiped_etcd_triggers_full_reload(etcd: EtcdServer) -> None:  # noqa: F811
    async def body() -> None:
        client = EtcdClient([etcd.endpoint], timeout=2)
        sink = RecordingSink()
        source = fast_source(client)
        async with running(source, sink):
            for i in range(20):
                await client.put(f"{PREFIX}/routes/{i}", b"{}")
            await until(lambda: len(sink.state) == 20)
            old = source.revision
            await asyncio.to_thread(etcd.wipe_and_restart)
            rev, _ = await client.put(f"{PREFIX}/routes/fresh", b'{"new":true}')
            assert rev < old
            await until(lambda: sink.state == {f"{PREFIX}/routes/fresh": b'{"new":true}'})
            assert len(sink.loads) >= 2 and source.reloads >= 1
            assert source.revision == rev
            rev, _ = await client.put(f"{PREFIX}/routes/later", b"{}")
            await until(lambda: source.revision >= rev)
            assert sink.state == etcd_state(etcd)

    arun(body())


def test_startup_with_etcd_down() -> None:
    server = EtcdServer()  # ports reserved, not started yet
    calls: list[float] = []

    async def body() -> None:
        client = EtcdClient([server.endpoint], timeout=1)
        sink = RecordingSink()
        source = fast_source(client, startup_retry=2, on_startup_failure=lambda: calls.append(1))
        async with running(source, sink):
            await until(lambda: calls, timeout=5)
            assert not sink.loads and not source.connected and source.last_error
            await asyncio.to_thread(server.start)
            rev = server.put(f"{PREFIX}/routes/1", '{"uri":"/"}')
            await until(lambda: source.loaded and source.connected, timeout=10)
            await until(lambda: source.revision >= rev)
            assert sink.state == {f"{PREFIX}/routes/1": b'{"uri":"/"}'}
            assert len(sink.loads) == 1 and source.reloads == 0
        assert calls == [1]

    try:
        arun(body())
    finally:
        server.close()


def test_async_startup_callback_and_failover(etcd: EtcdServer) -> None:  # noqa: F811
    dead = f"http://127.0.0.1:{free_port()}"
    etcd.put(f"{PREFIX}/routes/1", "{}")

    async def body() -> None:
        client = EtcdClient([dead, etcd.endpoint], timeout=1)
        sink = RecordingSink()
        called = asyncio.Event()

        async def on_failure() -> None:
            called.set()

        source = fast_source(client, on_startup_failure=on_failure)
        async with running(source, sink):
            await until(lambda: source.connected and sink.state)
            assert not called.is_set()  # the second endpoint answered: no startup failure
            assert client.endpoint == etcd.endpoint

    arun(body())


def test_idle_watch_is_reopened_quietly(
    etcd: EtcdServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """watch_timeout shorter than the server's progress interval (1 s): the watch ends while idle
    and is re-opened from the same revision, as APISIX does; nothing is lost or logged."""
    caplog.set_level(logging.WARNING, logger="tollway.config")

    async def body() -> None:
        client = EtcdClient([etcd.endpoint], timeout=2)
        sink = RecordingSink()
        source = fast_source(client, watch_timeout=0.2, health_check_interval=None)
        async with running(source, sink):
            for i in range(3):
                await until(lambda: source.connected)
                rev, _ = await client.put(f"{PREFIX}/routes/{i}", b"{}")
                await until(lambda rev=rev: source.revision >= rev)  # type: ignore[misc]
                await asyncio.sleep(0.5)  # idle on purpose: longer than watch_timeout
            assert sink.state == etcd_state(etcd) and len(sink.loads) == 1
            assert source.last_error is None and source.watches >= 4

    arun(body())
    assert not caplog.records
