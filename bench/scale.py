"""Scale benchmark (run on demand, not a test): memory per route and start-up time at 10k-100k
routes (issue #17).

    .venv/bin/python bench/scale.py [--routes 10000,100000] [--workers 1,4] [--keep]

For each route count N (plus a 10-route baseline): a throwaway etcd holds N routes (bench/
router_churn.py's mix: static, prefix, prefix with hosts, parameter paths), written in
transactions of 128; Tollway in etcd mode starts with W workers. Measured from outside:

- seconds from spawning ``tollway start`` until /status/ready, and until the last route written
  answers (a route whose upstream is down answers 502, a missing one 404: no upstream needed);
- the same after a restart with etcd stopped (start from the on-disk snapshot);
- resident memory (VmRSS) of the supervisor and of each worker once every route answers; bytes
  per route per worker = (worker RSS at N - worker RSS at 10 routes) / N.

Markdown on stdout, progress on stderr; every process it starts is stopped on exit.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import BenchError, Processes, free_ports, pinned, process_tree, wait_ready
from router_churn import PREFIX, Client, EtcdHttp, RouteSet, start_etcd

CONFIG = """\
apisix:
  node_listen: [{{ip: 127.0.0.1, port: {port}}}]
  ssl: {{enable: false}}
  status: {{ip: 127.0.0.1, port: {status_port}}}
  enable_admin: false
  enable_control: false
deployment:
  role: traditional
  role_traditional: {{config_provider: etcd}}
  etcd: {{host: ["{etcd}"], prefix: {prefix}, startup_retry: 1, timeout: 2}}
nginx_config:
  worker_processes: {workers}
  http: {{enable_access_log: false}}
tollway: {{run_dir: {home}/run, graceful_timeout: 1}}
"""


@dataclass
class Start:
    ready_s: float
    last_route_s: float
    supervisor_kib: int
    worker_kib: list[int]


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def answers(client: Client, routes: RouteSet, i: int) -> bool:
    path, host = routes.request(i)
    status, _ = client.get(path, host)
    return status not in (0, 404)


def start(
    procs: Processes, home: Path, name: str, etcd: str, routes: RouteSet, workers: int
) -> Start:
    port, status_port = free_ports(2)
    config = home / "conf" / "config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        CONFIG.format(
            port=port,
            status_port=status_port,
            etcd=etcd,
            prefix=PREFIX,
            workers=workers,
            home=home,
        )
    )
    exe = Path(sys.executable).with_name("tollway")
    log = home / f"{name}.out"
    t0 = time.monotonic()
    proc = procs.start(name, pinned("0-1", str(exe), "start", "-c", str(config)), log)
    wait_ready(f"http://127.0.0.1:{status_port}/status/ready", proc, log, timeout=300)
    ready = time.monotonic() - t0
    client = Client(port)
    deadline = t0 + 300
    while not answers(client, routes, routes.count - 1):
        if time.monotonic() > deadline:
            raise BenchError(f"route {routes.count - 1} never answered ({log})")
        time.sleep(0.01)
    last = time.monotonic() - t0
    client.close()
    pids = process_tree(proc.pid)
    workers_kib = [rss_kib(p) for p in pids if p != proc.pid]
    return Start(ready, last, rss_kib(proc.pid), sorted(workers_kib))


def measure(count: int, workers: int, workdir: Path) -> tuple[Start, Start]:
    """(from etcd, from the snapshot with etcd stopped)."""
    procs = Processes()
    try:
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        etcd: EtcdHttp = start_etcd(procs, workdir)
        routes = RouteSet(count, upstream_port=free_ports(1)[0], with_params=False)
        t0 = time.monotonic()
        etcd.put_many((routes.key(i), routes.value(i)) for i in range(count))
        progress(f"  {count} routes written to etcd in {time.monotonic() - t0:.1f}s")
        home = workdir / "tollway"
        first = start(procs, home, "tollway", etcd.endpoint, routes, workers)
        progress(f"  from etcd: ready {first.ready_s:.2f}s, last route {first.last_route_s:.2f}s")
        procs.stop("tollway")
        procs.stop("etcd")
        again = start(procs, home, "tollway-snapshot", etcd.endpoint, routes, workers)
        progress(f"  from the snapshot: last route {again.last_route_s:.2f}s")
        return first, again
    finally:
        procs.stop_all()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--routes", default="10000,100000")
    ap.add_argument("--workers", default="1,4")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    counts = [int(x) for x in args.routes.split(",")]
    worker_counts = [int(x) for x in args.workers.split(",")]
    root = Path(tempfile.mkdtemp(prefix="tollway-scale-"))
    results: dict[tuple[int, int], tuple[Start, Start]] = {}
    for workers in worker_counts:
        for count in [10, *counts]:
            if workers != 1 and count != max(counts):
                continue  # several workers: only at the largest count
            progress(f"{count} routes, {workers} worker(s)")
            results[count, workers] = measure(count, workers, root / f"r{count}-w{workers}")
    base = results[10, 1][0].worker_kib[0]
    print(
        "| routes | workers | ready s (etcd) | last route s (etcd) | last route s (snapshot) "
        "| supervisor MiB | worker MiB | bytes/route/worker | instance MiB |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    for (count, workers), (first, snap) in sorted(results.items(), key=lambda kv: kv[0][::-1]):
        per_route = (sum(first.worker_kib) / len(first.worker_kib) - base) * 1024 / count
        instance = (first.supervisor_kib + sum(first.worker_kib)) / 1024
        print(
            f"| {count:,} | {workers} | {first.ready_s:.2f} | {first.last_route_s:.2f} "
            f"| {snap.last_route_s:.2f} | {first.supervisor_kib / 1024:.0f} "
            f"| {' / '.join(f'{k / 1024:.0f}' for k in first.worker_kib)} "
            f"| {per_route:,.0f} | {instance:.0f} |"
        )
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
