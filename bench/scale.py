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
  per route per worker = (worker RSS at N - worker RSS at 10 routes) / N;
- with one worker: match throughput through the gateway (``wrk -t1 -c50`` on one prefix route,
  nginx upstream), at N routes against 10 routes;
- with one worker at the largest N: one route changed at a time through etcd (a new URI), ms
  from the PUT's answer until the gateway answers the new URI (polled every 1 ms), while wrk
  loads another route: its p99 next to the idle run's says whether a request waited for a change.

Tollway's sources are byte-compiled first (``bytecode``), as an installed package is: where
``PYTHONDONTWRITEBYTECODE`` is set (this VM sets it), every process would otherwise compile the
sources it imports at each start, ~0.25 s per process here (``--no-bytecode`` measures that).

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

import re
import statistics
import threading

from proxy import (
    BenchError,
    Processes,
    WrkResult,
    cpu_seconds,
    free_ports,
    parse_wrk,
    pinned,
    process_tree,
    start_nginx,
    wait_ready,
    wrk_argv,
)
from router_churn import LOAD_CPU, PREFIX, Client, EtcdHttp, RouteSet, poll, start_etcd

CHANGE_DEADLINE = 10.0  # s a changed route may take to answer before the run fails

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
  error_log_level: info
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
    port: int = 0
    pid: int = 0
    steps: str = ""  # the processes' own step timings (their info log lines)


@dataclass
class Serving:
    """Throughput idle, and while single routes change (with those changes' latencies)."""

    idle: WrkResult
    churn: WrkResult | None = None
    change_ms: list[float] | None = None  # while wrk runs
    idle_change_ms: list[float] | None = None  # without load


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
    return answers_at(client, *routes.request(i))


def answers_at(client: Client, path: str, host: str | None) -> bool:
    return client.get(path, host)[0] not in (0, 404)


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
    error_log = home / "logs" / "error.log"
    log_from = error_log.stat().st_size if error_log.exists() else 0
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
    steps = step_timings(error_log, log_from)
    return Start(ready, last, rss_kib(proc.pid), sorted(workers_kib), port, proc.pid, steps)


_VALIDATED = re.compile(
    r"config: \d+ keys at revision \d+: validated in (\d+) ms, sent to workers in (\d+) ms"
)
_COMPILED = re.compile(r"loaded \d+ items at revision \d+: store (\d+) ms, compile (\d+) ms")


def step_timings(error_log: Path, offset: int) -> str:
    """'validate V ms, send S ms, worker store W ms, compile C ms' from the log lines the
    supervisor and the workers write for a full load (the slowest worker's)."""
    try:
        with error_log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    sup = _VALIDATED.search(text)
    workers = [(int(a), int(b)) for a, b in _COMPILED.findall(text)]
    if sup is None or not workers:
        return ""
    store, compile_ms = max(workers, key=lambda w: w[0] + w[1])
    return (
        f"validate {sup[1]} ms, send {sup[2]} ms, worker store {store} ms, compile {compile_ms} ms"
    )


def wrk(procs: Processes, url: str, seconds: float) -> WrkResult:
    return parse_wrk(procs.capture(wrk_argv(url, 50, seconds), seconds + 30))


def change_routes(
    etcd: EtcdHttp, port: int, routes: RouteSet, avoid: int, stop: threading.Event, first: int = 1
) -> list[float]:
    """Change one route at a time (route i gets change j: a new URI) until ``stop``; ms from
    each PUT's answer until the gateway answers the new URI (404 before)."""
    client = Client(port)
    out: list[float] = []
    order = routes.churn_order(avoid)
    try:
        for j, i in enumerate(order, start=first):
            if stop.is_set():
                break
            path, host = routes.request(i, change=j)
            etcd.put(routes.key(i), routes.value(i, change=j))
            t0 = time.monotonic()
            if not poll(lambda p=path, h=host: answers_at(client, p, h), CHANGE_DEADLINE):
                raise BenchError(f"route {i} change {j} not served after {CHANGE_DEADLINE:g} s")
            out.append((time.monotonic() - t0) * 1e3)
            time.sleep(0.02)
    finally:
        client.close()
    return out


def quiet(root: int, timeout: float = 30) -> None:
    """Wait until the instance is idle (< 5% of a CPU over 0.5 s): after a load at 100k routes
    the supervisor still writes its snapshot, which a throughput run must not share the CPUs
    with."""
    deadline = time.monotonic() + timeout
    before = cpu_seconds(process_tree(root))
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(process_tree(root))
        if now - before < 0.025:
            return
        before = now


def serving(
    procs: Processes, etcd: EtcdHttp, start: Start, routes: RouteSet, seconds: float, churn: bool
) -> Serving:
    port = start.port
    quiet(start.pid)
    target = routes.target()
    path, _ = routes.request(target)
    url = f"http://127.0.0.1:{port}{path}"
    wrk(procs, url, 1)  # warm-up
    idle = wrk(procs, url, seconds)
    if not churn:
        return Serving(idle)
    stop = threading.Event()
    result: list[float] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.extend(change_routes(etcd, port, routes, target, stop))
        except BaseException as e:  # reported below
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    loaded = wrk(procs, url, seconds)
    stop.set()
    thread.join(CHANGE_DEADLINE + 5)
    if errors:
        raise errors[0]
    # The same without load (other routes, new URIs: change numbers far past the first run's).
    quiet(start.pid)
    stop_idle = threading.Event()
    timer = threading.Timer(seconds, stop_idle.set)
    timer.start()
    idle_ms = change_routes(etcd, port, routes, target, stop_idle, first=1_000_000)
    timer.cancel()
    return Serving(idle, loaded, result, idle_ms)


def measure(
    count: int, workers: int, workdir: Path, seconds: float, churn: bool
) -> tuple[Start, Start, Serving | None]:
    """(from etcd, from the snapshot with etcd stopped, throughput with one worker)."""
    procs = Processes()
    try:
        for sub in ("logs", "conf", "run"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        etcd: EtcdHttp = start_etcd(procs, workdir)
        upstream = free_ports(1)[0]
        start_nginx(procs, workdir, "upstream", LOAD_CPU, "upstream.conf", port=upstream)
        routes = RouteSet(count, upstream_port=upstream, with_params=False)
        t0 = time.monotonic()
        etcd.put_many((routes.key(i), routes.value(i)) for i in range(count))
        progress(f"  {count} routes written to etcd in {time.monotonic() - t0:.1f}s")
        home = workdir / "tollway"
        first = start(procs, home, "tollway", etcd.endpoint, routes, workers)
        progress(f"  from etcd: ready {first.ready_s:.2f}s, last route {first.last_route_s:.2f}s")
        progress(f"    {first.steps}")
        served = None
        if workers == 1 and seconds > 0:
            served = serving(procs, etcd, first, routes, seconds, churn)
            progress(f"  {served.idle.rps:,.0f} req/s")
        procs.stop("tollway")
        procs.stop("etcd")
        again = start(procs, home, "tollway-snapshot", etcd.endpoint, routes, workers)
        progress(f"  from the snapshot: last route {again.last_route_s:.2f}s")
        progress(f"    {again.steps}")
        return first, again, served
    finally:
        procs.stop_all()


def bytecode(src: Path | None = None) -> None:
    """Byte-compile the ``tollway`` package that Tollway's processes will import (from ``src``,
    or as ``PYTHONPATH`` finds it) into its ``__pycache__``: a deployed gateway starts from
    bytecode that pip compiled when it installed the package."""
    import compileall
    import importlib.util

    if src is not None:
        package = src / "tollway"
    else:
        spec = importlib.util.find_spec("tollway")
        assert spec is not None and spec.submodule_search_locations is not None
        package = Path(next(iter(spec.submodule_search_locations)))
    if not compileall.compile_dir(package, quiet=1):
        raise BenchError(f"could not byte-compile {package}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--no-bytecode", action="store_true", help="do not byte-compile Tollway")
    ap.add_argument("--routes", default="10000,100000")
    ap.add_argument("--workers", default="1,4")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--seconds", type=float, default=5, help="each wrk run (0: no throughput)")
    args = ap.parse_args()
    counts = [int(x) for x in args.routes.split(",")]
    worker_counts = [int(x) for x in args.workers.split(",")]
    if not args.no_bytecode:
        bytecode()
    root = Path(tempfile.mkdtemp(prefix="tollway-scale-"))
    results: dict[tuple[int, int], tuple[Start, Start, Serving | None]] = {}
    for workers in worker_counts:
        for count in [10, *counts]:
            if workers != 1 and count != max(counts):
                continue  # several workers: only at the largest count
            progress(f"{count} routes, {workers} worker(s)")
            churn = count == max(counts)
            work = root / f"r{count}-w{workers}"
            results[count, workers] = measure(count, workers, work, args.seconds, churn)
    base = results[10, 1][0].worker_kib[0]
    print(
        "| routes | workers | ready s (etcd) | last route s (etcd) | last route s (snapshot) "
        "| supervisor MiB | worker MiB | bytes/route/worker | instance MiB |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    for (count, workers), (first, snap, _) in sorted(results.items(), key=lambda kv: kv[0][::-1]):
        per_route = (sum(first.worker_kib) / len(first.worker_kib) - base) * 1024 / count
        instance = (first.supervisor_kib + sum(first.worker_kib)) / 1024
        print(
            f"| {count:,} | {workers} | {first.ready_s:.2f} | {first.last_route_s:.2f} "
            f"| {snap.last_route_s:.2f} | {first.supervisor_kib / 1024:.0f} "
            f"| {' / '.join(f'{k / 1024:.0f}' for k in first.worker_kib)} "
            f"| {per_route:,.0f} | {instance:.0f} |"
        )
    print("\n| routes | workers | steps from etcd | steps from the snapshot |\n|---|---|---|---|")
    for (count, workers), (first, snap, _) in sorted(results.items()):
        print(f"| {count:,} | {workers} | {first.steps} | {snap.steps} |")
    report_serving(results)
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def report_serving(results: dict[tuple[int, int], tuple[Start, Start, Serving | None]]) -> None:
    base = results[10, 1][2]
    if base is None:
        return
    print(
        "\n| routes | req/s (1 worker) | vs 10 routes | p99 ms | while routes change: req/s "
        "| p99 ms | changes | change ms p50 / p99 / max | idle: changes "
        "| change ms p50 / p99 / max |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for (count, _), (_, _, s) in sorted(results.items()):
        if s is None:
            continue
        row = (
            f"| {count:,} | {s.idle.rps:,.0f} | {s.idle.rps / base.idle.rps:.2f} "
            f"| {s.idle.p99_ms:.2f} "
        )
        if s.churn is not None and s.change_ms:
            row += f"| {s.churn.rps:,.0f} | {s.churn.p99_ms:.2f} {latencies(s.change_ms)}"
            row += latencies(s.idle_change_ms or []) + "|"
        else:
            row += "| | | | | | |"
        print(row)


def latencies(ms: list[float]) -> str:
    """'| count | p50 / p99 / max ' of change latencies."""
    if not ms:
        return "| 0 | "
    ms = sorted(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"| {len(ms)} | {statistics.median(ms):.1f} / {p99:.1f} / {ms[-1]:.1f} "


if __name__ == "__main__":
    main()
