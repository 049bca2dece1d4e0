"""Cost of one limit-count update in the instance-wide shared table, against a plain dict.

Run: .venv/bin/python bench/shared_counters.py
Reports ns per update for: a dict (per-process baseline), the table without the file lock
(anonymous mapping), the table on tmpfs with flock, and the same with 2 and 4 processes
hammering the same table at once (lock contention).
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time

from tollway.plugins.builtin.limit_count import count_step
from tollway.plugins.shared_counters import SharedTable

N = 200_000
KEYS = [f"/apisix/routes/1:5.0.0:10.0.0.{i % 250}" for i in range(1000)]


def bench_dict() -> float:
    d: dict[str, int] = {}
    t0 = time.perf_counter()
    for i in range(N):
        k = KEYS[i % 1000]
        d[k] = d.get(k, 0) + 1
    return (time.perf_counter() - t0) / N * 1e9


def bench_table(path: str | None, n: int = N) -> float:
    t = SharedTable(path)
    t0 = time.perf_counter()
    for i in range(n):
        t.update(KEYS[i % 1000], count_step, 1_000_000_000, 60)
    dt = (time.perf_counter() - t0) / n * 1e9
    t.close()
    return dt


def _worker(path: str, q: multiprocessing.Queue[float]) -> None:
    q.put(bench_table(path, N // 2))


def bench_parallel(path: str, procs: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    q: multiprocessing.Queue[float] = ctx.Queue()
    ps = [ctx.Process(target=_worker, args=(path, q)) for _ in range(procs)]
    for p in ps:
        p.start()
    res = [q.get() for _ in ps]
    for p in ps:
        p.join()
    return sum(res) / len(res)


def main() -> None:
    d = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    path = os.path.join(d, f"tollway-bench-{os.getpid()}.shm")
    try:
        base = bench_dict()
        anon = bench_table(None)
        shm = bench_table(path)
        par2 = bench_parallel(path, 2)
        par4 = bench_parallel(path, 4)
    finally:
        os.unlink(path)
    print(f"dict baseline            {base:8.0f} ns/update")
    print(f"table, no lock           {anon:8.0f} ns/update  ({anon / base:.1f}x)")
    print(f"table, flock, 1 process  {shm:8.0f} ns/update  ({shm / base:.1f}x)")
    print(f"table, flock, 2 procs    {par2:8.0f} ns/update  ({par2 / base:.1f}x)")
    print(f"table, flock, 4 procs    {par4:8.0f} ns/update  ({par4 / base:.1f}x)")


if __name__ == "__main__":
    main()
