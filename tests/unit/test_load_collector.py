"""A full config load in the supervisor runs with the cyclic GC paused from the read to the
freeze of what it keeps (issue #17): on again any earlier, the next allocation started a young
collection that walked every object the load had made (100k routes: ~0.2 s of start-up)."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import pytest

from tollway.config.etcd_source import EtcdSource
from tollway.config.snapshot import write_snapshot_rows
from tollway.supervisor import Supervisor


def rows(n: int) -> list[tuple[str, bytes | None, int, int]]:
    route = {"uri": "/r", "upstream": {"nodes": {"127.0.0.1:1980": 1}, "type": "roundrobin"}}
    return [
        (f"/apisix/routes/{i}", json.dumps({**route, "uri": f"/r/{i}"}).encode(), i + 1, i + 1)
        for i in range(n)
    ]


@pytest.fixture
def collections() -> Any:
    walked: list[int] = []  # the objects each collection of the young generations walked

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] < 2:
            walked.append(sum(len(gc.get_objects(g)) for g in range(info["generation"] + 1)))

    gc.collect()
    gc.callbacks.append(note)
    try:
        yield walked
    finally:
        gc.callbacks.remove(note)
        gc.unfreeze()  # the rest of the test session collects as usual


def test_a_full_load_runs_no_collection_and_freezes_what_it_keeps(
    sup: Supervisor, collections: list[int]
) -> None:
    frozen = gc.get_freeze_count()

    async def load() -> None:  # ~10 tracked objects per route, 30k in all
        sup.agent.load_rows(7, rows(3_000))

    asyncio.run(load())
    assert max(collections, default=0) < 3_000  # none walked the load's objects
    assert gc.isenabled()
    assert gc.get_freeze_count() > frozen + 3_000  # the validated items, out of its sight
    assert len(sup.store["routes"]) == 3_000


def test_the_snapshot_is_read_and_loaded_with_the_collector_paused(
    sup: Supervisor, collections: list[int]
) -> None:
    write_snapshot_rows(sup.snapshot_path, 5, rows(2))
    got: list[tuple[int, int, bool]] = []

    def load(revision: int, kvs: list[Any]) -> None:
        got.append((revision, len(kvs), gc.isenabled()))

    sup.agent.load_snapshot = load  # type: ignore[method-assign]
    sup._serve_snapshot()
    assert got == [(5, 2, False)]
    assert gc.isenabled()


class ReadingClient:
    """Answers the full read; says whether the collector was on while reading."""

    fail_timeout = 0.0

    def __init__(self) -> None:
        self.enabled_during_read: list[bool] = []

    async def range_rows(self, prefix: str) -> tuple[int, list[Any]]:
        self.enabled_during_read.append(gc.isenabled())
        await asyncio.sleep(0)  # the loop turns meanwhile, as over the network
        return 9, rows(3)


class Sink:
    def __init__(self) -> None:
        self.enabled_during_load: list[bool] = []

    def load_rows(self, revision: int, kvs: list[Any]) -> None:
        self.enabled_during_load.append(gc.isenabled())

    def load(self, revision: int, kvs: list[Any]) -> None:
        raise AssertionError("rows expected")

    def apply(self, revision: int, changes: list[Any]) -> None:
        raise AssertionError("no change expected")


def test_etcd_reads_and_validates_with_the_collector_paused() -> None:
    client = ReadingClient()
    source = EtcdSource(client, "/apisix")  # type: ignore[arg-type]
    sink = Sink()
    asyncio.run(source._full_load(sink))
    assert client.enabled_during_read == [False]
    assert sink.enabled_during_load == [False]
    assert gc.isenabled()
    assert source.loaded and source.revision == 9
