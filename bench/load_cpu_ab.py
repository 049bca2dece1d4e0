"""A/B of a full load's CPU time at scale, in-process, interleaved (issue #17; run on demand).

    .venv/bin/python bench/load_cpu_ab.py --a /tmp/main/src --b src [--routes 100000] [--rounds 5]

Each round runs one child per tree (A then B, alternately first): bench/router_churn.py's N
routes validated as the supervisor does (``Store`` with the item checker), sent as the IPC
``Load``, then loaded as a worker does (lean ``Store``, ``Compiler``), with the worker's GC
settings and, when the tree has it, its ``collector_off_for_load``. Prints each child's CPU time
(``time.process_time``: on a shared, loaded machine far steadier than wall time) per step, then
the medians. bench/scale_profile.py shows one tree's steps; bench/scale.py the real processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent

CHILD = r"""
import asyncio, contextlib, gc, json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from router_churn import PREFIX, RouteSet
from tollway.checks import ItemChecker
from tollway.config.source import KeyValue
from tollway.config.store import Store
from tollway.ipc import TO_WORKER, Load, encode
from tollway.plugins.registry import load_registry
from tollway.runtime.compiler import Compiler
from tollway.settings import default_settings
import tollway.memory as memory

n = int(sys.argv[1])
routes = RouteSet(n, 9999, with_params=False)
kvs = [KeyValue(routes.key(i), json.dumps(routes.value(i)).encode(), i + 10, i + 10)
       for i in range(n)]
settings = default_settings(Path("/tmp/conf"))
registry = load_registry()
out = {}
t = time.process_time()
sup = Store(PREFIX, ItemChecker.for_store(registry, settings))
sup.load(n + 10, kvs)
out["validate"] = time.process_time() - t
t = time.process_time()
gc.disable()
body = encode(Load.from_rows(n + 10, sup.snapshot_rows()))
gc.enable()
out["ipc_encode"] = time.process_time() - t
del kvs, sup
gc.collect()
gc.freeze()
gc.set_threshold(50_000, 50, 100)
off = getattr(memory, "collector_off_for_load", contextlib.nullcontext)
t = time.process_time()
msg = TO_WORKER.decode(body[4:])
store = Store(PREFIX, lean=True)
compiler = Compiler(settings, registry)
with off():
    store.load_rows(msg.rev, msg.rows())
    out["worker_store"] = time.process_time() - t
    t2 = time.process_time()
    asyncio.run(compiler.load(store, first=True))
    store.release()
    out["compile"] = time.process_time() - t2
out["worker_total"] = time.process_time() - t
assert len(compiler.routes) == n
print(json.dumps(out))
"""

STEPS = ("validate", "ipc_encode", "worker_store", "compile", "worker_total")


def run(tree: str, routes: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(routes), str(BENCH)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--a", required=True, help="tree A's src (e.g. a git archive of main)")
    ap.add_argument("--b", required=True, help="tree B's src")
    ap.add_argument("--routes", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    got: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    for r in range(args.rounds):
        order = ("A", "B") if r % 2 == 0 else ("B", "A")
        for name in order:
            res = run(args.a if name == "A" else args.b, args.routes)
            got[name].append(res)
            shown = " ".join(f"{k} {res[k] * 1e3:,.0f}" for k in STEPS)
            print(f"round {r + 1} {name}: {shown} (ms CPU)", flush=True)
    print(f"\n{args.routes:,} routes, CPU ms, medians of {args.rounds}\n")
    print("| step | A | B | B/A |\n|---|---|---|---|")
    for k in STEPS:
        a = statistics.median(x[k] for x in got["A"]) * 1e3
        b = statistics.median(x[k] for x in got["B"]) * 1e3
        print(f"| {k} | {a:,.0f} | {b:,.0f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
