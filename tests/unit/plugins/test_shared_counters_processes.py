"""The shared tables across real processes: counting stays exact under contention (every count
is handed out once), and a process killed while it holds a table's lock does not stall the
others (``flock`` is released by the kernel when its holder dies)."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import time
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path

from tollway.plugins.shared_counters import SharedTable

_SPAWN = multiprocessing.get_context("spawn")
PROCS = 4
EACH = 3000


def _count(path: str, start: Barrier, out: multiprocessing.Queue[list[float]]) -> None:
    t = SharedTable(path, slots=256)
    start.wait(60)  # every process is up: they count at the same time
    out.put([t.incr("k", 1.0, 3600)[0] for _ in range(EACH)])
    t.close()


def test_incr_hands_out_every_count_once_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "t.shm")
    first = SharedTable(path, slots=256)
    start = _SPAWN.Barrier(PROCS + 1)
    out: multiprocessing.Queue[list[float]] = _SPAWN.Queue()
    procs = [_SPAWN.Process(target=_count, args=(path, start, out)) for _ in range(PROCS)]
    for p in procs:
        p.start()
    start.wait(60)
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
    fcntl.flock(t._fd, fcntl.LOCK_EX)  # the table's lock, never given back: killed holding it
    held.set()
    time.sleep(120)


def _incr_once(path: str, out: multiprocessing.Queue[float]) -> None:
    t = SharedTable(path, slots=256)
    out.put(t.incr("k", 1.0, 3600)[0])


def test_a_process_killed_holding_the_lock_stalls_no_one(tmp_path: Path) -> None:
    path = str(tmp_path / "t.shm")
    SharedTable(path, slots=256).close()
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
