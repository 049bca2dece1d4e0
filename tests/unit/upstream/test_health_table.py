"""The worker side: HealthTable predicates and PassiveReporter batching."""

from __future__ import annotations

import asyncio

from tests.support.wait import until

from tollway.balancer import Server
from tollway.ipc import Passive
from tollway.upstream import HealthTable, PassiveReporter


def test_predicate_reads_the_table_live() -> None:
    table = HealthTable()
    is_healthy = table.predicate("k")
    s = Server("10.0.0.1", 80, 1)
    assert is_healthy(s)
    table.update("k", ["10.0.0.1:80"])
    assert not is_healthy(s)
    assert table.predicate("other")(s)
    table.update("k", [])
    assert is_healthy(s) and table.get("k") == frozenset()


def test_reporter_batches_and_caps() -> None:
    async def body() -> None:
        sent: list[Passive] = []
        r = PassiveReporter(sent.append, interval=0.02, urgent_interval=0.02, max_pending=3)
        for i in range(5):
            r.report("k", f"10.0.0.{i}:80", "http", 200)
        assert sent == []
        await until(lambda: len(sent) == 1)
        assert isinstance(sent[0], Passive)
        assert sent[0].reports == [("k", f"10.0.0.{i}:80", "http", 200) for i in range(3)]
        r.report("k", "10.0.0.9:80", "tcp", 0)
        await until(lambda: len(sent) == 2)
        assert sent[1].reports == [("k", "10.0.0.9:80", "tcp", 0)]

    asyncio.run(body())


def test_failures_are_sent_sooner() -> None:
    async def body() -> None:
        sent: list[Passive] = []
        r = PassiveReporter(sent.append, interval=10.0, urgent_interval=0.01)
        r.report("k", "10.0.0.1:80", "http", 200)
        await asyncio.sleep(0.03)
        assert sent == []  # successes wait for the slow flush
        r.report("k", "10.0.0.1:80", "http", 500)
        r.report("k", "10.0.0.2:80", "tcp", 0)
        await until(lambda: bool(sent))
        assert [len(m.reports) for m in sent] == [3]

    asyncio.run(body())
