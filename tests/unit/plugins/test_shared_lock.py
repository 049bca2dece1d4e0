"""The shared tables' lock across real processes: counting stays exact under contention, and a
process killed while it holds the lock does not stall the others (both lock kinds: the robust
mutex and the ``flock`` fallback)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from tollway.plugins.shared_counters import SharedTable
from tollway.plugins.shared_lock import mutex_available

_SPAWN = multiprocessing.get_context("spawn")
PROCS = 4
EACH = 400


def _count(path: str, start: Event, out: multiprocessing.Queue[list[float]]) -> None:
    t = SharedTable(path, slots=256)
    start.wait(30)
    out.put([t.incr("k", 1.0, 3600)[0] for _ in range(EACH)])
    t.close()


@pytest.mark.parametrize("mutex", [True, False])
def test_incr_hands_out_every_count_once_across_processes(tmp_path: Path, mutex: bool) -> None:
    path = str(tmp_path / "t.shm")
    first = SharedTable(path, slots=256, mutex=mutex)  # creates the file: its lock kind
    assert first.lock_kind == ("mutex" if mutex else "flock")
    start = _SPAWN.Event()
    out: multiprocessing.Queue[list[float]] = _SPAWN.Queue()
    procs = [_SPAWN.Process(target=_count, args=(path, start, out)) for _ in range(PROCS)]
    for p in procs:
        p.start()
    start.set()  # all at once: they contend for the lock
    seen = sorted(v for _ in procs for v in out.get(timeout=60))
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    # A lost update would hand one count to two requests and skip one at the end: with a
    # limit of N, more than N requests would pass.
    assert seen == [float(i) for i in range(1, PROCS * EACH + 1)]
    limit = 1000
    assert sum(1 for v in seen if v <= limit) == limit
    assert first.incr("k", 1.0, 3600)[0] == PROCS * EACH + 1
    first.close()


def _hold(path: str, held: Event) -> None:
    t = SharedTable(path, slots=256)
    t.incr("k", 1.0, 3600)
    t._acquire()  # and never give it back: killed while holding it
    held.set()
    time.sleep(120)


def _incr_once(path: str, out: multiprocessing.Queue[float]) -> None:
    t = SharedTable(path, slots=256)
    out.put(t.incr("k", 1.0, 3600)[0])


@pytest.mark.parametrize("mutex", [True, False])
def test_a_process_killed_holding_the_lock_stalls_no_one(tmp_path: Path, mutex: bool) -> None:
    path = str(tmp_path / "t.shm")
    SharedTable(path, slots=256, mutex=mutex).close()
    held = _SPAWN.Event()
    holder = _SPAWN.Process(target=_hold, args=(path, held))
    holder.start()
    assert held.wait(30)
    out: multiprocessing.Queue[float] = _SPAWN.Queue()
    waiter = _SPAWN.Process(target=_incr_once, args=(path, out))
    waiter.start()  # it blocks on the held lock (or reaches it after the kill)
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    t0 = time.monotonic()
    assert out.get(timeout=10) == 2.0  # the holder's count stays; the waiter's follows it
    waiter.join(10)
    assert waiter.exitcode == 0
    # released by the kernel at the holder's death, not after a timeout
    assert time.monotonic() - t0 < 2.0
    t = SharedTable(path, slots=256)
    assert [t.incr("k", 1.0, 3600)[0] for _ in range(3)] == [3.0, 4.0, 5.0]  # still works
    t.close()


def test_the_host_has_the_robust_mutex() -> None:
    # The gateway's hosts (Linux, glibc or musl, cffi): the tables lock without a system call.
    assert mutex_available()


def test_a_table_takes_the_lock_its_file_records(tmp_path: Path) -> None:
    path = str(tmp_path / "t.shm")
    a = SharedTable(path, slots=64, mutex=False)
    b = SharedTable(path, slots=64)  # would pick the mutex for a new file: the file says flock
    assert (a.lock_kind, b.lock_kind) == ("flock", "flock")
    assert [a.incr("k", 1.0, 60)[0], b.incr("k", 1.0, 60)[0]] == [1.0, 2.0]
    a.close()
    b.close()
    assert SharedTable(None, slots=64).lock_kind == "none"
