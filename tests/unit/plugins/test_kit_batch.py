"""The shared batch processor: APISIX's buffer/timer decisions, retries, partial failures,
the bounded backlog and the flush at close."""

from __future__ import annotations

import asyncio
from typing import Any

from tollway.plugins.kit_batch import (
    BatchBuffer,
    BatchManager,
    BatchSettings,
    PartialFailure,
    Sender,
)


def test_batch_buffer_max_size_and_timer_decisions() -> None:
    buf: BatchBuffer[dict[str, int]] = BatchBuffer(3, 5, 60)
    assert buf.push({"i": 1}, 0.0) is None
    assert buf.push({"i": 2}, 1.0) is None
    assert buf.push({"i": 3}, 2.0) == [{"i": 1}, {"i": 2}, {"i": 3}]
    assert buf.entries == []
    buf.push({"i": 4}, 10.0)
    assert not buf.due(14.9)  # active: check again later
    assert buf.due(15.0)  # inactive for inactive_timeout
    # a steady trickle is flushed once the first entry is buffer_duration old
    buf = BatchBuffer(1000, 5, 60)
    for t in range(0, 61, 2):
        buf.push({"t": t}, float(t))
        assert not buf.due(float(t)) or t >= 60
    assert buf.due(60.0)
    one: BatchBuffer[dict[str, int]] = BatchBuffer(1, 5, 60)
    assert one.push({"x": 1}, 0.0) == [{"x": 1}] and one.entries == []


class Receiver:
    """Records batches; fails the first ``fail`` sends, or accepts only ``partial`` entries."""

    def __init__(self, fail: int = 0, partial: int | None = None) -> None:
        self.sent: list[list[Any]] = []
        self.calls = 0
        self.fail = fail
        self.partial = partial

    def start(self, settings: BatchSettings) -> Any:
        def make(key: Any) -> tuple[BatchSettings, Sender, None]:
            return settings, self.send, None

        return make

    async def send(self, batch: list[Any]) -> None:
        self.calls += 1
        if self.fail:
            self.fail -= 1
            raise ConnectionError("down")
        if self.partial is not None and len(batch) > self.partial:
            self.sent.append(batch[: self.partial])
            n, self.partial = self.partial, None
            raise PartialFailure(n, "the rest was refused")
        self.sent.append(batch)


def test_full_batches_then_flush_on_close() -> None:
    async def scenario() -> tuple[BatchManager, Receiver]:
        mgr, rx, key = BatchManager("t"), Receiver(), object()
        start = rx.start(BatchSettings("t", batch_max_size=2, inactive_timeout=600))
        for i in range(5):
            mgr.push(key, i, start)
        await asyncio.sleep(0)
        assert rx.sent == [[0, 1], [2, 3]]
        assert next(iter(mgr.processors.values())).timer is not None  # 4 waits for the timer
        await mgr.aclose(1.0)
        return mgr, rx

    mgr, rx = asyncio.run(scenario())
    assert rx.sent == [[0, 1], [2, 3], [4]]
    assert (mgr.pending, mgr.sent, mgr.dropped, mgr.processors) == (0, 5, 0, {})


def test_inactive_timeout_flushes_and_forgets_the_processor() -> None:
    async def scenario() -> tuple[BatchManager, Receiver]:
        mgr, rx, key = BatchManager("t"), Receiver(), object()
        start = rx.start(BatchSettings("t", batch_max_size=100, inactive_timeout=0.05))
        mgr.push(key, "a", start)
        mgr.push(key, "b", start)
        for _ in range(200):
            if rx.sent and not mgr.processors:
                break
            await asyncio.sleep(0.01)
        return mgr, rx

    mgr, rx = asyncio.run(scenario())
    assert rx.sent == [["a", "b"]] and mgr.processors == {} and mgr.pending == 0


def test_retries_then_drops() -> None:
    async def scenario(fail: int, retries: int) -> tuple[BatchManager, Receiver]:
        mgr, rx = BatchManager("t"), Receiver(fail=fail)
        start = rx.start(BatchSettings("t", 1, max_retry_count=retries, retry_delay=0))
        mgr.push(object(), {"x": 1}, start)
        await asyncio.gather(*(t for p in mgr.processors.values() for t in p.tasks))
        return mgr, rx

    mgr, ok = asyncio.run(scenario(fail=2, retries=2))
    assert ok.sent == [[{"x": 1}]] and ok.calls == 3 and (mgr.dropped, mgr.pending) == (0, 0)
    mgr, lost = asyncio.run(scenario(fail=3, retries=2))
    assert lost.sent == [] and lost.calls == 3 and (mgr.dropped, mgr.pending) == (1, 0)


def test_partial_failure_retries_only_the_rest() -> None:
    async def scenario() -> tuple[BatchManager, Receiver]:
        mgr, rx, key = BatchManager("t"), Receiver(partial=2), object()
        start = rx.start(BatchSettings("t", 4, max_retry_count=1, retry_delay=0))
        for i in range(4):
            mgr.push(key, i, start)
        await asyncio.gather(*(t for p in mgr.processors.values() for t in p.tasks))
        return mgr, rx

    mgr, rx = asyncio.run(scenario())
    assert rx.sent == [[0, 1], [2, 3]]
    assert (mgr.sent, mgr.dropped, mgr.pending) == (4, 0, 0)


def test_backlog_is_bounded_and_counted() -> None:
    mgr = BatchManager("t")
    mgr.max_pending = 3
    mgr.pending = 3
    assert mgr.full() and mgr.full()
    assert mgr.dropped == 2
    mgr.pending = 2
    assert not mgr.full() and mgr.dropped == 2


def test_a_new_conf_object_gets_its_own_processor() -> None:
    async def scenario() -> list[list[Any]]:
        mgr, rx = BatchManager("t"), Receiver()
        start = rx.start(BatchSettings("t", 2, inactive_timeout=600))
        old, new = {"v": 1}, {"v": 2}
        mgr.push(old, "old", start)
        mgr.push(new, "new", start)
        assert len(mgr.processors) == 2
        await mgr.aclose(1.0)
        return rx.sent

    assert sorted(asyncio.run(scenario())) == [["new"], ["old"]]
