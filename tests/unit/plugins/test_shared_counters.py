from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.clock import Clock
from tollway.plugins import shared_counters
from tollway.plugins.shared_counters import PROBE, Record, SharedTable


@pytest.fixture
def table_path(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "locked.shm")
    yield path
    shared_counters.remove_table(path)  # the file and its named semaphore
    assert not os.path.exists("/dev/shm/sem." + shared_counters.semaphore_name(path)[1:])


def step(rec: Record | None, now: float, ttl: float, _: float) -> tuple[Record, float]:
    value = 1.0 if rec is None else rec[1] + 1
    expire = now + ttl if rec is None else rec[0]
    return (expire, value, 0.0), value


def remove(rec: Record | None, now: float, p: float, q: float) -> tuple[None, None]:
    return None, None


def test_counts_and_expires() -> None:
    clock = Clock()
    t = SharedTable(None, slots=64, clock=clock)
    assert [t.update("a", step, 10) for _ in range(3)] == [1, 2, 3]
    assert t.update("b", step, 10) == 1
    clock.now += 10
    assert t.update("a", step, 10) == 1  # expired: starts over


def test_step_returning_none_removes() -> None:
    t = SharedTable(None, slots=64, clock=Clock())
    t.update("a", step, 60)
    t.update("a", remove)
    assert t.update("a", step, 60) == 1


def test_full_window_evicts_the_record_expiring_first() -> None:
    clock = Clock()
    t = SharedTable(None, slots=PROBE, clock=clock)  # every key shares one probe window
    for i in range(PROBE):
        t.update(f"k{i}", step, 100 + i)
    assert t.update("new", step, 60) == 1  # evicts k0 (expires first)
    assert t.update("k1", step, 60) == 2
    assert t.update("k0", step, 60) == 1


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from([f"key{i}" for i in range(40)]), max_size=300))
def test_matches_a_dict_while_nothing_is_evicted(keys: list[str]) -> None:
    t = SharedTable(None, slots=1024, clock=Clock())
    model: dict[str, int] = {}
    for k in keys:
        model[k] = model.get(k, 0) + 1
        assert t.update(k, step, 60) == model[k]


def _hammer(path: str, n: int) -> None:
    t = SharedTable(path, slots=256)
    for _ in range(n):
        t.update("shared", step, 3600)
    t.close()


def test_updates_are_atomic_across_processes(table_path: str) -> None:
    path = table_path
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(path, 500)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    t = SharedTable(path, slots=256)
    assert t.update("shared", step, 3600) == 2001


def test_layout_mismatch_is_refused(table_path: str) -> None:
    path = table_path
    SharedTable(path, slots=64).close()
    with pytest.raises(OSError, match="not a shared table"):
        SharedTable(path, slots=32).close()


def test_instance_files_are_named_by_supervisor_and_stale_ones_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOLLWAY_SHARED_DIR", str(tmp_path))
    monkeypatch.setattr(shared_counters, "_TABLES", {})
    dead = tmp_path / f"tollway-{os.getuid()}-999999999-1-plugin-x.shm"
    dead.write_bytes(b"")
    t = shared_counters.table("plugin-x")
    assert t.path is not None and str(os.getppid()) in os.path.basename(t.path)
    assert not dead.exists()
    assert shared_counters.table("plugin-x") is t
    t.close()
    shared_counters.remove_instance_files(os.getppid())


def test_supervisor_removes_its_instance_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOLLWAY_SHARED_DIR", str(tmp_path))
    monkeypatch.setattr(shared_counters, "_TABLES", {})
    t = shared_counters.table("plugin-y")
    other = tmp_path / "unrelated.shm"
    other.write_bytes(b"")
    assert t.path is not None
    lock = "/dev/shm/sem." + shared_counters.semaphore_name(t.path)[1:]
    assert os.path.exists(lock)
    t.close()
    shared_counters.remove_instance_files(os.getppid())
    assert not os.path.exists(t.path)
    assert not os.path.exists(lock)  # its named semaphore goes with it
    assert other.exists()


def test_incr_counts_like_a_step_and_restarts_when_expired() -> None:
    clock = Clock()
    t = SharedTable(None, slots=64, clock=clock)
    assert t.incr("k", 1.0, 10) == (1.0, 10.0)
    clock.now += 4
    assert t.incr("k", 1.0, 10) == (2.0, 6.0)  # the window started at the first use
    assert t.update("k", step, 10) == 3  # the same record as update() sees it
    clock.now += 6
    assert t.incr("k", 1.0, 10) == (1.0, 10.0)


def test_incr_away_from_the_home_slot() -> None:
    t = SharedTable(None, slots=64, clock=Clock())
    # two keys with the same home slot: the second lives in the next one (the probe path)
    t._digests["a"] = (b"a" * 16, 7)
    t._digests["b"] = (b"b" * 16, 7)
    assert [t.incr("a", 1.0, 10)[0], t.incr("b", 1.0, 10)[0], t.incr("b", 1.0, 10)[0]] == [
        1.0,
        1.0,
        2.0,
    ]
    assert t.incr("a", 1.0, 10)[0] == 2.0


def _hold_lock_and_die(path: str, ready: Any) -> None:
    t = SharedTable(path, slots=64)
    assert t._sem is not None
    t._sem.acquire()
    shared_counters._OWNER.pack_into(t._mm, shared_counters._OWNER_AT, os.getpid())
    ready.send(True)
    time.sleep(60)  # killed while holding the lock


def test_a_lock_whose_holder_died_is_taken_over(table_path: str) -> None:
    """The instance-wide lock is a named semaphore (no system call when free); a worker killed
    while holding it must not stop the others' counting for more than the stale wait."""
    t = SharedTable(table_path, slots=64)
    assert t._sem is not None, "named semaphores are available on Linux"
    assert t.incr("k", 1.0, 60)[0] == 1.0
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    holder = ctx.Process(target=_hold_lock_and_die, args=(table_path, theirs))
    holder.start()
    assert mine.poll(30) and mine.recv()
    os.kill(holder.pid or 0, signal.SIGKILL)
    holder.join(10)
    started = time.monotonic()
    assert t.incr("k", 1.0, 60)[0] == 2.0
    assert time.monotonic() - started < 10 * shared_counters._STALE_WAIT
    assert t.incr("k", 1.0, 60)[0] == 3.0  # given back: the next update does not wait
    t.close()


def test_the_lock_is_shared_by_every_opener_of_a_table(table_path: str) -> None:
    a, b = SharedTable(table_path, slots=64), SharedTable(table_path, slots=64)
    assert a._sem is not None and b._sem is not None
    assert a._sem.acquire(False)
    assert not b._sem.acquire(False)  # one lock, not one per opener
    a._sem.release()
    a.close()
    b.close()
