"""The supervisor's side of a worker survives anything the worker does (issue #18): garbage on
the IPC pipe, malformed messages, restarts that fail. No process is started here: the worker is
a stub and the pipe an in-memory StreamReader."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from tollway.ipc import Ready, encode
from tollway.supervisor import Supervisor, WorkerHandle


class StubProc:
    pid = 4242

    def __init__(self) -> None:
        self.killed = False
        self.exited = asyncio.Event()

    def kill(self) -> None:
        self.killed = True

    async def wait(self) -> int:
        await self.exited.wait()
        return -9


class StubWriter:
    def close(self) -> None:
        pass


def handle(proc: StubProc) -> WorkerHandle:
    return WorkerHandle(0, proc, StubWriter())  # type: ignore[arg-type]


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def test_garbage_on_the_pipe_stops_that_worker_and_nothing_else(sup: Supervisor) -> None:
    async def go() -> StubProc:
        proc = StubProc()
        reader = asyncio.StreamReader()
        reader.feed_data(frame(b"\xc1\xc1"))
        reader.feed_data(encode(Ready(3)))  # never read: the stream is untrusted
        await sup._read_worker(handle(proc), reader)
        return proc

    assert asyncio.run(go()).killed


def test_a_malformed_message_is_skipped_and_reading_goes_on(sup: Supervisor) -> None:
    async def go() -> WorkerHandle:
        h = handle(StubProc())
        reader = asyncio.StreamReader()
        reader.feed_data(frame(msgspec.msgpack.encode({"t": "ack", "rev": "not a number"})))
        reader.feed_data(frame(msgspec.msgpack.encode({"t": "passive", "reports": 5})))
        reader.feed_data(frame(msgspec.msgpack.encode({"t": "no such kind"})))
        reader.feed_data(frame(msgspec.msgpack.encode({"t": "ready", "rev": 7})))
        reader.feed_eof()
        await sup._read_worker(h, reader)
        return h

    h = asyncio.run(go())
    assert h.ready and h.revision == 7


def test_a_failed_restart_is_retried_until_a_worker_runs(
    sup: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    async def spawn(generation: int) -> Any:
        calls.append(generation)
        if len(calls) < 3:
            raise OSError(24, "Too many open files")
        return None

    monkeypatch.setattr(sup, "spawn_worker", spawn)
    monkeypatch.setattr("tollway.supervisor.RESPAWN_MAX_DELAY", 0.05)

    async def go() -> None:
        proc = StubProc()
        h = handle(proc)
        sup.workers.append(h)
        watch = asyncio.create_task(sup._watch_worker(h))
        proc.exited.set()
        await asyncio.wait_for(watch, 10)
        assert h not in sup.workers

    asyncio.run(go())
    assert calls == [0, 0, 0]


def test_no_restart_once_stopping(sup: Supervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    async def spawn(generation: int) -> Any:
        calls.append(generation)

    monkeypatch.setattr(sup, "spawn_worker", spawn)

    async def go() -> None:
        proc = StubProc()
        sup.stopping = True
        watch = asyncio.create_task(sup._watch_worker(handle(proc)))
        proc.exited.set()
        await asyncio.wait_for(watch, 10)

    asyncio.run(go())
    assert calls == []
