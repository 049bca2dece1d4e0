"""Where a worker's bytes and a load's seconds go, in one process (issue #17; run on demand).

    .venv/bin/python bench/scale_profile.py [--routes 100000] [--trace] [--changes 400]

Builds bench/router_churn.py's N routes as the supervisor has them, then runs a full load's
steps as the processes do and times each: supervisor validation (``Store`` with the item
checker), the IPC ``Load`` (rows, encode, decode), the on-disk snapshot (write, read), the
worker's lean ``Store`` and its ``Compiler`` (router included), and the heap trim. Then the
worker side's resident memory per route (RSS after minus before, over N). ``--trace``:
tracemalloc's top allocations by file:line that are still alive, per route (slow: ~10x).
``--changes K``: then K times one route changed as a worker applies it (``Store.apply`` +
``Compiler.apply``, the loaded config frozen for the collector as after a load): ms p50 / p99 /
max, the data-plane side of bench/scale.py's change latency without its processes and polling.
bench/scale.py measures the real processes; this shows what to cut.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from router_churn import PREFIX, RouteSet

from tollway.checks import ItemChecker
from tollway.config.snapshot import read_snapshot_rows, write_snapshot_rows
from tollway.config.source import KeyValue
from tollway.config.store import Store
from tollway.ipc import TO_WORKER, Load, encode
from tollway.memory import collector_off_for_load, release_free_memory
from tollway.plugins.registry import load_registry
from tollway.runtime.compiler import Compiler
from tollway.settings import default_settings


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Steps:
    def __init__(self) -> None:
        self.t = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        print(f"| {name} | {(now - self.t) * 1e3:,.0f} |")
        self.t = now


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--routes", type=int, default=100_000)
    ap.add_argument("--trace", action="store_true")
    ap.add_argument("--changes", type=int, default=0)
    args = ap.parse_args()
    n = args.routes
    routes = RouteSet(n, 9999, with_params=False)
    kvs = [
        KeyValue(routes.key(i), json.dumps(routes.value(i)).encode(), i + 10, i + 10)
        for i in range(n)
    ]
    settings = default_settings(Path("/tmp/conf"))
    registry = load_registry()
    print(f"{n:,} routes\n\n| step | ms |\n|---|---|")
    steps = Steps()
    cpu = time.process_time()
    supervisor = Store(PREFIX, ItemChecker.for_store(registry, settings))
    supervisor.load(n + 10, kvs)
    steps.done("supervisor: validate (Store.load with the item checker)")
    validate_cpu = time.process_time() - cpu
    gc.disable()  # as the supervisor does around its broadcast
    body = encode(Load.from_rows(n + 10, supervisor.snapshot_rows()))
    gc.enable()
    steps.done("supervisor: IPC Load (rows, encode)")
    snap = Path(tempfile.mkdtemp(prefix="tollway-scale-profile-")) / "snapshot.bin"
    write_snapshot_rows(snap, n + 10, supervisor.snapshot_rows())
    steps.done("supervisor: snapshot write")
    read_snapshot_rows(snap)
    steps.done("supervisor: snapshot read")
    del kvs, supervisor
    gc.collect()
    gc.freeze()  # as a worker starts (tollway.worker.main), with its thresholds
    gc.set_threshold(50_000, 50, 100)
    before = rss_kib()
    if args.trace:
        tracemalloc.start(1)
    steps = Steps()
    cpu = time.process_time()
    msg = TO_WORKER.decode(body[4:])
    del body
    assert isinstance(msg, Load)
    steps.done("worker: IPC decode")
    store = Store(PREFIX, lean=True)
    compiler = Compiler(settings, registry)
    with collector_off_for_load():  # as the worker loads
        store.load_rows(msg.rev, msg.rows())
        steps.done("worker: lean Store")
        asyncio.run(compiler.load(store, first=True))
        store.release()
        del msg
        steps.done("worker: compile (routes, upstreams, router)")
    gc.freeze()
    release_free_memory()
    steps.done("worker: gc.freeze, malloc_trim")
    print(f"| supervisor: validate, CPU time | {validate_cpu * 1e3:,.0f} |")
    worker_cpu = time.process_time() - cpu
    print(f"| worker: decode + store + compile + trim, CPU time | {worker_cpu * 1e3:,.0f} |")
    # A lower bound: the worker side reuses heap the supervisor side freed in this process
    # (bench/scale.py measures a real worker).
    grown = (rss_kib() - before) * 1024 / n
    print(f"\nworker side: RSS grew {grown:,.0f} bytes per route (a lower bound)")
    if args.trace:
        top = tracemalloc.take_snapshot().statistics("lineno")
        print(f"traced: {sum(s.size for s in top) / n:,.0f} bytes per route alive\n")
        print("| bytes/route | objects/route | where |\n|---|---|---|")
        for s in top[:20]:
            print(f"| {s.size / n:,.0f} | {s.count / n:.2f} | {s.traceback[0]} |")
        tracemalloc.stop()
    if args.changes:
        print(one_route_changes(store, compiler, routes, args.changes))


def one_route_changes(store: Store, compiler: Compiler, routes: RouteSet, count: int) -> str:
    """``count`` changes of one route each (a new uri), applied as a worker does; ms."""
    took = []
    rev = store.revision
    for j in range(count):
        rev += 1
        i = (j * 7919) % routes.count
        value = json.dumps(routes.value(i, change=j + 1)).encode()
        t = time.perf_counter()
        store.apply(rev, [KeyValue(routes.key(i), value, rev, rev)])
        compiler.apply(store, store.last_changes)
        took.append((time.perf_counter() - t) * 1e3)
    took.sort()
    p99 = took[min(len(took) - 1, int(len(took) * 0.99))]
    return (
        f"\none route changed, {count} times: ms p50 {took[len(took) // 2]:.3f}, "
        f"p99 {p99:.3f}, max {took[-1]:.3f}"
    )


if __name__ == "__main__":
    main()
