"""Start-up A/B (issue #17; run on demand, not a test): two source trees, interleaved.

    .venv/bin/python bench/startup_ab.py --a /tmp/main/src --b src [--routes 10,10000]
        [--workers 1] [--rounds 5]

For each route count: one throwaway etcd holds N routes (bench/router_churn.py's mix); then,
``--rounds`` times, Tollway is started from tree A, then from tree B (``PYTHONPATH``), each
measured as bench/scale.py does (seconds from spawning ``tollway start`` until the last route
answers, and the processes' own step timings); then etcd is stopped and the same again from
each tree's on-disk snapshot. On a shared machine one run says little: this prints every run
and the medians, A and B always side by side in time. Both trees are byte-compiled first, as an
installed package is (``bytecode`` in bench/scale.py).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import Processes, free_ports, start_nginx
from router_churn import LOAD_CPU, RouteSet, start_etcd
from scale import bytecode, progress, start


def run(
    trees: dict[str, Path], count: int, workers: int, rounds: int, root: Path
) -> dict[tuple[str, str], list[float]]:
    procs = Processes()
    out: dict[tuple[str, str], list[float]] = {}
    try:
        for sub in ("logs", "conf", "run"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        etcd = start_etcd(procs, root)
        upstream = free_ports(1)[0]
        start_nginx(procs, root, "upstream", LOAD_CPU, "upstream.conf", port=upstream)
        routes = RouteSet(count, upstream_port=upstream, with_params=False)
        etcd.put_many((routes.key(i), routes.value(i)) for i in range(count))
        for source in ("etcd", "snapshot"):
            if source == "snapshot":
                procs.stop("etcd")
            for r in range(rounds):
                for name, tree in trees.items():
                    os.environ["PYTHONPATH"] = str(tree)
                    home = root / f"tollway-{name}"
                    log = home / "logs" / "error.log"
                    offset = log.stat().st_size if log.exists() else 0
                    t0 = time.time()
                    got = start(procs, home, f"tollway-{name}", etcd.endpoint, routes, workers)
                    procs.stop(f"tollway-{name}")
                    out.setdefault((name, source), []).append(got.last_route_s)
                    progress(
                        f"  {count} routes, {workers} w, {source}, round {r + 1}, {name}: "
                        f"{got.last_route_s:.2f}s ({got.steps})\n    {timeline(log, offset, t0)}"
                    )
        return out
    finally:
        procs.stop_all()


# Log lines that mark a start-up's steps, and what to call them.
_MARKS = (
    ("tollway started", "workers spawned"),
    ("etcd: loaded", "etcd read"),
    ("SERVING THE LAST-KNOWN-GOOD SNAPSHOT", "snapshot read"),
    ("validated in", "validated+sent"),
    ("serving", "worker serving"),
)
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def timeline(log: Path, offset: int, t0: float) -> str:
    """Seconds from the spawn of ``tollway start`` to each step's log line (bench/scale.py
    starts Tollway at log level info)."""
    try:
        with log.open("rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    seen: list[str] = []
    for line in lines:
        m = _STAMP.match(line)
        if m is None:
            continue
        for needle, name in _MARKS:
            if needle in line:
                when = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() - t0
                seen.append(f"{name} +{when:.2f}s")
                break
    return ", ".join(seen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--a", required=True, help="tree A's src directory (PYTHONPATH)")
    ap.add_argument("--b", required=True, help="tree B's src directory (PYTHONPATH)")
    ap.add_argument("--routes", default="10,10000")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    trees = {"A": Path(args.a).resolve(), "B": Path(args.b).resolve()}
    root = Path(tempfile.mkdtemp(prefix="tollway-startup-ab-"))
    for tree in trees.values():
        bytecode(tree)
    print(f"A = {trees['A']}, B = {trees['B']}, {args.workers} worker(s)\n")
    print("| routes | source | A: last route s, each run | B: each run | A median | B median |")
    print("|---|---|---|---|---|---|")
    for count in [int(x) for x in args.routes.split(",")]:
        res = run(trees, count, args.workers, args.rounds, root / f"r{count}")
        for source in ("etcd", "snapshot"):
            a, b = res[("A", source)], res[("B", source)]
            print(
                f"| {count:,} | {source} | {' '.join(f'{x:.2f}' for x in a)} "
                f"| {' '.join(f'{x:.2f}' for x in b)} "
                f"| {statistics.median(a):.2f} | {statistics.median(b):.2f} |",
                flush=True,
            )
    import shutil

    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
