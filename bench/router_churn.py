"""Router churn benchmark (run on demand, not a test): latency under config churn at 10k routes.

    .venv/bin/python bench/router_churn.py [--duration 10] [--reps 3] [--routes 10000]
                                           [--interval 0.1] [--samples 20] [--quick] [--keep]

Issue #4's acceptance item: wrk through the gateway with 10k routes and one route changing every
100 ms keeps p99 within 1.2x of the idle p99. A throwaway etcd (CPU 0) holds N routes under
/apisix/routes/<id> (40% static, 30% prefix, 20% prefix with hosts, 10% parameter paths), all to
one nginx upstream (CPU 0); Tollway in etcd mode runs 1 worker on CPU 1. Phase A (idle config) and
phase B (a thread PUTs a change to a different route every --interval seconds) run interleaved,
the order alternating each rep, ``taskset -c 0 wrk -t1 -c50 -dDs --latency`` on one prefix route.
After each B run the last change must reach the worker (its acknowledged revision in
/status/config) and answer on its new URI. Then the apply latency: PUT a new route, poll it through
the gateway every 1 ms until it answers 200 instead of 404, idle and under wrk load. Medians over
the reps; the ratios are B against A from the same run. Markdown on stdout, progress on stderr;
every process it starts is stopped on exit, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import os
import random
import shlex
import shutil
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Reuse bench/proxy.py's process control, wrk parsing and /proc accounting.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import (
    BODY,
    DASH,
    LOAD_CPU,
    PROXY_CPU,
    BenchError,
    Processes,
    Target,
    WrkResult,
    busy_and_steal,
    check_affinity,
    cpu_seconds,
    cpu_times,
    first_line,
    free_ports,
    machine,
    med,
    parse_wrk,
    pinned,
    process_tree,
    progress,
    run_bench,
    spread,
    start_nginx,
    versions,
    wait_ready,
    wrk_argv,
)

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
PREFIX = "/apisix"
TXN_OPS = 128  # etcd's default --max-txn-ops
MAX_P99_RATIO = 1.2  # issue #4
APPLY_DEADLINE = 10.0  # seconds for a change to reach the data plane before we call it lost
KINDS = ("static",) * 4 + ("prefix",) * 3 + ("host",) * 2 + ("param",)


# -- the route set -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteSet:
    """N routes, all to one upstream; ``change`` > 0 gives route i a new URI (and desc)."""

    count: int
    upstream_port: int
    with_params: bool

    def key(self, i: int) -> str:
        return f"{PREFIX}/routes/{i}"

    def value(self, i: int, change: int = 0) -> dict[str, Any]:
        seg = f"{i}c{change}" if change else str(i)
        route: dict[str, Any] = {"id": str(i), "desc": f"bench route {i} change {change}"}
        kind = KINDS[i % len(KINDS)]
        if kind == "static":
            route |= {"uri": f"/svc/{seg}/items", "methods": ["GET", "POST"]}
        elif kind == "prefix":
            route["uri"] = f"/api/{seg}/*"
        elif kind == "host":
            route |= {"uri": f"/api/{seg}/*", "hosts": [f"tenant{i}.example.com"]}
        else:
            route["uri"] = f"/users/{seg}/:uid/orders"
        return route | {"upstream": self.upstream()}

    def upstream(self) -> dict[str, Any]:
        return {
            "type": "roundrobin",
            "nodes": {f"127.0.0.1:{self.upstream_port}": 1},
            "keepalive_pool": {"size": 320, "idle_timeout": 60, "requests": 100000000},
        }

    def request(self, i: int, change: int = 0) -> tuple[str, str | None]:
        """A (path, Host) that route i answers after ``change``."""
        seg = f"{i}c{change}" if change else str(i)
        kind = KINDS[i % len(KINDS)]
        if kind == "static":
            return f"/svc/{seg}/items", None
        if kind == "host":
            return f"/api/{seg}/x", f"tenant{i}.example.com"
        if kind == "param":
            # radixtree_host_uri (APISIX's default) takes ":uid" literally.
            return f"/users/{seg}/{'42' if self.with_params else ':uid'}/orders", None
        return f"/api/{seg}/x", None

    def target(self) -> int:
        """The route wrk loads: a prefix route without hosts, in the middle of the table."""
        i = self.count // 2
        while KINDS[i % len(KINDS)] != "prefix":
            i += 1
        return i

    def churn_order(self, avoid: int) -> Iterator[int]:
        """Every route but ``avoid`` once, spread over the table (a stride coprime with N)."""
        stride = next(s for s in range(7919, 2 * self.count + 7919) if math.gcd(s, self.count) == 1)
        for n in range(self.count):
            i = (n * stride) % self.count
            if i != avoid:
                yield i


# -- etcd ----------------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdHttp:
    """etcd's v3 HTTP/JSON gateway: puts and transactions, each returning the new revision."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            self.endpoint + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError) as e:
            raise BenchError(f"etcd {path}: {e}") from None

    def put(self, key: str, value: dict[str, Any]) -> int:
        body = {"key": _b64(key), "value": _b64(json.dumps(value))}
        return int(self.call("/v3/kv/put", body)["header"]["revision"])

    def put_many(self, items: Iterator[tuple[str, dict[str, Any]]]) -> tuple[int, int]:
        """Transactions of at most TXN_OPS puts; (last revision, number of transactions)."""
        rev, txns, batch = 0, 0, []
        for key, value in items:
            batch.append({"requestPut": {"key": _b64(key), "value": _b64(json.dumps(value))}})
            if len(batch) == TXN_OPS:
                rev, txns, batch = self._txn(batch), txns + 1, []
        if batch:
            rev, txns = self._txn(batch), txns + 1
        return rev, txns

    def _txn(self, ops: list[dict[str, Any]]) -> int:
        out = self.call("/v3/kv/txn", {"success": ops})
        if not out.get("succeeded", True):
            raise BenchError(f"etcd txn failed: {out}")
        return int(out["header"]["revision"])


def start_etcd(procs: Processes, workdir: Path) -> EtcdHttp:
    client, peer = (f"http://127.0.0.1:{p}" for p in free_ports(2))
    log = workdir / "logs" / "etcd.out"
    argv = [
        ETCD,
        "--name", "bench",
        "--data-dir", str(workdir / "etcd"),
        "--listen-client-urls", client,
        "--advertise-client-urls", client,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"bench={peer}",
        "--initial-cluster-state", "new",
        "--initial-cluster-token", f"bench-{os.getpid()}",
        "--log-level", "warn",
        "--logger", "zap",
    ]  # fmt: skip
    # On the load CPU: the gateway's CPU should only run the gateway.
    proc = procs.start("etcd", pinned(LOAD_CPU, *argv), log)
    wait_ready(f"{client}/health", proc, log, timeout=20)
    return EtcdHttp(client)


# -- Tollway -------------------------------------------------------------------------------

TOLLWAY_CONFIG = """\
apisix:
  node_listen: [{{ip: 127.0.0.1, port: {port}}}]
  ssl: {{enable: false}}
  status: {{ip: 127.0.0.1, port: {status_port}}}
  enable_admin: false
  enable_control: false
  router: {{http: {router}}}
deployment:
  role: traditional
  role_traditional: {{config_provider: etcd}}
  etcd: {{host: ["{etcd}"], prefix: {prefix}}}
nginx_config:
  worker_processes: 1
  http: {{enable_access_log: false}}
tollway: {{run_dir: {home}/run, graceful_timeout: 1, snapshot: {snapshot}}}
"""


@dataclass(frozen=True, slots=True)
class Gateway:
    target: Target  # root_pid = the supervisor, which leads the process group
    port: int
    status_port: int

    def status(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.status_port}/status/config"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.loads(resp.read())

    def worker_revision(self) -> int:
        """The lowest revision any worker has acknowledged: what the data plane serves."""
        workers = self.status()["workers"]
        return min((int(w["revision"]) for w in workers), default=0)


def start_tollway(
    procs: Processes, workdir: Path, etcd: EtcdHttp, args: argparse.Namespace, target_path: str
) -> Gateway:
    home = workdir / "tollway"
    (home / "conf").mkdir(parents=True)
    port, status_port = free_ports(2)
    config = home / "conf" / "config.yaml"
    config.write_text(
        TOLLWAY_CONFIG.format(
            port=port,
            status_port=status_port,
            router=args.router,
            snapshot="false" if args.no_snapshot else "true",
            etcd=etcd.endpoint,
            prefix=PREFIX,
            home=home,
        )
    )
    exe = Path(sys.executable).with_name("tollway")
    if not exe.exists():
        raise BenchError(f"{exe} not found: run this script with the project's .venv/bin/python")
    log = workdir / "logs" / "tollway.out"
    argv = pinned(PROXY_CPU, str(exe), "start", "-c", str(config), "--workers", "1")
    proc = procs.start("tollway", argv, log)
    wait_ready(f"http://127.0.0.1:{status_port}/status/ready", proc, log, timeout=90)
    url = f"http://127.0.0.1:{port}{target_path}"
    return Gateway(Target("tollway", "Tollway", url, proc.pid), port, status_port)


class Client:
    """One keep-alive connection to the gateway, reopened after any error."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def get(self, path: str, host: str | None = None) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        headers = {"Host": host} if host else {}
        try:
            self.conn.request("GET", path, headers=headers)
            resp = self.conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            return 0, b""

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def poll(predicate: Callable[[], bool], deadline_s: float, interval: float = 0.001) -> bool:
    deadline = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def check_routes(gw: Gateway, routes: RouteSet) -> None:
    """Every kind of route answers with the upstream's body, and a path no route has is 404."""
    client = Client(gw.port)
    try:
        for i in range(len(KINDS)):
            path, host = routes.request(routes.count // 2 + i)
            status, body = client.get(path, host)
            if status != 200 or body != BODY:
                raise BenchError(f"{path} (Host {host}) answered {status} {body[:200]!r}")
        status, _ = client.get("/no/such/route")
        if status != 404:
            raise BenchError(f"/no/such/route answered {status}, not 404")
    finally:
        client.close()


# -- churn ---------------------------------------------------------------------------------


class Churn:
    """A thread that changes one route every ``interval`` seconds (on a fixed schedule, so a slow
    PUT does not stretch the period) until stopped; remembers the last change it made."""

    def __init__(
        self, etcd: EtcdHttp, routes: RouteSet, order: Iterator[int], interval: float
    ) -> None:
        self.etcd, self.routes, self.order, self.interval = etcd, routes, order, interval
        self.changes = 0
        self.serial = 0  # across runs: each change gives its route a URI it never had
        self.last: tuple[int, int, int, float] | None = None  # route, serial, revision, put done
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.changes, self.last, self.error = 0, None, None
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="churn", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        t0 = time.monotonic()
        try:
            n = 0
            while not self._stop.wait(max(0.0, t0 + n * self.interval - time.monotonic())):
                i = next(self.order)
                self.serial += 1
                rev = self.etcd.put(self.routes.key(i), self.routes.value(i, self.serial))
                self.last = (i, self.serial, rev, time.monotonic())
                self.changes += 1
                # The next slot still ahead of us (skips slots a slow PUT overran).
                n = max(n + 1, math.ceil((time.monotonic() - t0) / self.interval))
        except BaseException as e:  # reported by the main thread
            self.error = e


def verify_last_change(gw: Gateway, churn: Churn) -> float:
    """Wait until the worker serves the last change; ms from its PUT until we saw it applied
    (an upper bound: polling starts only when wrk has finished)."""
    if churn.error is not None:
        raise BenchError(f"churn thread failed: {churn.error!r}")
    if churn.last is None:
        raise BenchError("churn thread made no change")
    i, serial, rev, put_done = churn.last
    if not poll(lambda: gw.worker_revision() >= rev, APPLY_DEADLINE, interval=0.005):
        raise BenchError(f"revision {rev} (route {i}) not applied after {APPLY_DEADLINE:g} s")
    lag_ms = (time.monotonic() - put_done) * 1e3
    path, host = churn.routes.request(i, serial)
    client = Client(gw.port)
    try:
        status, body = client.get(path, host)
        # Each route changes at most once per run of the script: before, it had change 0.
        old = client.get(*churn.routes.request(i))[0]
    finally:
        client.close()
    if status != 200 or body != BODY:
        raise BenchError(f"route {i} changed to {path} but that answers {status} {body[:100]!r}")
    if old != 404:
        raise BenchError(f"route {i}: its previous URI answers {old}, not 404, after the change")
    return lag_ms


# -- measuring -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    phase: str  # "idle" | "churn"
    rep: int
    wrk: WrkResult
    wall_s: float
    proxy_cpu_s: float  # the whole Tollway tree
    supervisor_cpu_s: float  # its root: etcd watch, validation, broadcast to workers
    cpu0_busy: float
    cpu1_busy: float
    steal: float
    changes: int = 0
    last_applied_ms: float = math.nan

    @property
    def us_cpu_per_req(self) -> float:
        return 1e6 * self.proxy_cpu_s / self.wrk.requests if self.wrk.requests else math.nan

    @property
    def cpu1_other(self) -> float:
        return max(0.0, self.cpu1_busy - self.proxy_cpu_s / self.wall_s)

    @property
    def worker_cpu_s(self) -> float:
        return self.proxy_cpu_s - self.supervisor_cpu_s


def measure(
    procs: Processes, gw: Gateway, churn: Churn | None, rep: int, args: argparse.Namespace
) -> Run:
    root = gw.target.root_pid
    pids = process_tree(root)
    t0, stat0 = time.monotonic(), cpu_times()
    cpu0, sup0 = cpu_seconds(pids), cpu_seconds([root])
    if churn is not None:
        churn.start()
    try:
        out = procs.capture(wrk_argv(gw.target.url, args.conns, args.duration), args.duration + 30)
    finally:
        if churn is not None:
            churn.stop()
    cpu1, sup1, stat1, t1 = cpu_seconds(pids), cpu_seconds([root]), cpu_times(), time.monotonic()
    busy0, steal0 = busy_and_steal(stat0["cpu" + LOAD_CPU], stat1["cpu" + LOAD_CPU])
    busy1, steal1 = busy_and_steal(stat0["cpu" + PROXY_CPU], stat1["cpu" + PROXY_CPU])
    wrk = parse_wrk(out)
    common = (rep, wrk, t1 - t0, cpu1 - cpu0, sup1 - sup0, busy0, busy1, max(steal0, steal1))
    if churn is None:
        return Run("idle", *common)
    lag_ms = verify_last_change(gw, churn)
    return Run("churn", *common, changes=churn.changes, last_applied_ms=lag_ms)


def run_phases(procs: Processes, gw: Gateway, churn: Churn, args: argparse.Namespace) -> list[Run]:
    warm = parse_wrk(procs.capture(wrk_argv(gw.target.url, args.conns, args.warmup), 60))
    progress(f"warm-up {warm.rps:9,.0f} req/s")
    runs = []
    for rep in range(args.reps):
        # A then B, B then A, ...: neither phase always runs first.
        for phase in ("idle", "churn") if rep % 2 == 0 else ("churn", "idle"):
            time.sleep(args.gap)
            r = measure(procs, gw, churn if phase == "churn" else None, rep, args)
            runs.append(r)
            extra = f"  {r.changes} changes, last applied {r.last_applied_ms:.0f} ms after its PUT"
            progress(
                f"rep {rep + 1} {phase:5} {r.wrk.rps:9,.0f} req/s  p50 {r.wrk.p50_ms:6.2f} ms  "
                f"p99 {r.wrk.p99_ms:6.2f} ms  {r.us_cpu_per_req:5.0f} µs CPU/req  "
                f"cpu1 other {r.cpu1_other:4.0%}  errors {r.wrk.errors}"
                + (extra if phase == "churn" else "")
            )
    return runs


def apply_latency(
    etcd: EtcdHttp, gw: Gateway, routes: RouteSet, samples: int, tag: str
) -> list[float]:
    """ms from the PUT's response to the first 200 for a new route (polled every 1 ms on one
    keep-alive connection; 404 until the worker has it)."""
    client = Client(gw.port)
    out = []
    try:
        for j in range(samples):
            rid = f"probe-{tag}-{j}"
            path = f"/probe/{tag}/{j}/x"
            if client.get(path)[0] != 404:
                raise BenchError(f"{path} answers before its route exists")
            value = {"id": rid, "uri": f"/probe/{tag}/{j}/*", "upstream": routes.upstream()}
            etcd.put(f"{PREFIX}/routes/{rid}", value)
            t0 = time.monotonic()
            if not poll(lambda p=path: client.get(p)[0] == 200, APPLY_DEADLINE):
                raise BenchError(f"new route {rid} not served after {APPLY_DEADLINE:g} s")
            out.append((time.monotonic() - t0) * 1e3)
            time.sleep(random.uniform(0.05, 0.15))  # not in step with anything periodic
    finally:
        client.close()
    return out


def apply_latency_loaded(
    procs: Processes, etcd: EtcdHttp, gw: Gateway, routes: RouteSet, args: argparse.Namespace
) -> list[float]:
    """The same, while wrk keeps the worker busy (wrk is stopped with SIGINT once done)."""
    budget = args.samples * 0.5 + 10
    argv = wrk_argv(gw.target.url, args.conns, budget)
    wrk = procs.start("wrk-apply", argv, Path(args.workdir) / "logs" / "wrk-apply.out")
    try:
        time.sleep(1)  # wrk's connections are up and busy
        return apply_latency(etcd, gw, routes, args.samples, "load")
    finally:
        if wrk.poll() is None:
            wrk.send_signal(signal.SIGINT)
            wrk.wait(timeout=10)


@dataclass(frozen=True, slots=True)
class ChangeCost:
    """CPU seconds of the supervisor and the worker over equal windows without load: config
    idle, then churning. Without wrk the worker's CPU is the change's, not the requests'."""

    seconds: float
    changes: int
    supervisor: tuple[float, float]  # (idle, churn)
    worker: tuple[float, float]

    def line(self, args: argparse.Namespace) -> str:
        if not self.changes:
            return ""
        sup = (self.supervisor[1] - self.supervisor[0]) / self.changes * 1e3
        wrk = (self.worker[1] - self.worker[0]) / self.changes * 1e3
        share = (sup + wrk) / 1e3 / args.interval
        return (
            f"CPU per route change (no load, {self.seconds:g} s churning against {self.seconds:g}"
            f" s idle, {self.changes} changes): supervisor {sup:.1f} ms, worker {wrk:.1f} ms; "
            f"at one change per {args.interval * 1e3:g} ms that is {share:.0%} of CPU "
            f"{PROXY_CPU}.\n"
        )


def change_cost(gw: Gateway, churn: Churn, seconds: float) -> ChangeCost:
    root = gw.target.root_pid
    pids = process_tree(root)
    sup, tree = [], []
    for phase in ("idle", "churn"):
        s0, t0 = cpu_seconds([root]), cpu_seconds(pids)
        if phase == "churn":
            churn.start()
        time.sleep(seconds)
        churn.stop()
        time.sleep(0.3)  # the last change lands inside the window (same length for both)
        sup.append(cpu_seconds([root]) - s0)
        tree.append(cpu_seconds(pids) - t0)
    verify_last_change(gw, churn)
    worker = (tree[0] - sup[0], tree[1] - sup[1])
    return ChangeCost(seconds, churn.changes, (sup[0], sup[1]), worker)


# -- report --------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (with 20 samples, p99 is the largest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


def ratio(churn: list[Run], idle: list[Run], value: Callable[[Run], float]) -> str:
    """Ratio of medians; in brackets the range of per-rep ratios (B and A ran back to back)."""
    r = med([value(x) for x in churn]) / med([value(x) for x in idle])
    by_rep = {x.rep: value(x) for x in idle}
    paired = [value(x) / by_rep[x.rep] for x in churn if by_rep.get(x.rep)]
    if len(paired) < 2:
        return f"**{r:.2f}**"
    return f"**{r:.2f}** ({min(paired):.2f}{DASH}{max(paired):.2f})"


def phase_table(runs: list[Run], args: argparse.Namespace, url: str) -> str:
    idle = [r for r in runs if r.phase == "idle"]
    churn = [r for r in runs if r.phase == "churn"]
    head = (
        f"### `wrk -t1 -c{args.conns} -d{args.duration:g}s --latency {url}` "
        f"(median of {args.reps} interleaved runs, min{DASH}max in brackets)\n\n"
        "| phase | RPS | p50 ms | p99 ms | µs proxy CPU/req | CPU0 / CPU1 busy (CPU1 not proxy) "
        "| route changes (last one seen applied, ms after its PUT) | wrk errors |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )

    def row(label: str, rs: list[Run], changes: str) -> str:
        return (
            f"| {label} | {spread([r.wrk.rps for r in rs], ',.0f')} "
            f"| {spread([r.wrk.p50_ms for r in rs], '.2f')} "
            f"| {spread([r.wrk.p99_ms for r in rs], '.2f')} "
            f"| {spread([r.us_cpu_per_req for r in rs], '.0f')} "
            f"| {med([r.cpu0_busy for r in rs]):.0%} / {med([r.cpu1_busy for r in rs]):.0%} "
            f"({med([r.cpu1_other for r in rs]):.0%}) | {changes} "
            f"| {sum(r.wrk.errors for r in rs)} |"
        )

    applied = spread([r.last_applied_ms for r in churn], ".0f")
    changes = f"{sum(r.changes for r in churn)} written, all applied; {applied} ms"
    rows = [
        row("A: idle config", idle, "0"),
        row(f"B: 1 route changed every {args.interval * 1e3:g} ms", churn, changes),
        f"| **B ÷ A** | {ratio(churn, idle, lambda r: r.wrk.rps)} "
        f"| {ratio(churn, idle, lambda r: r.wrk.p50_ms)} "
        f"| {ratio(churn, idle, lambda r: r.wrk.p99_ms)} "
        f"| {ratio(churn, idle, lambda r: r.us_cpu_per_req)} | | | |",
    ]
    return head + "\n".join(rows) + "\n"


def latency_table(idle: list[float], loaded: list[float], args: argparse.Namespace) -> str:
    lines = [
        "### Apply latency: PUT response → a new route answers 200 through the gateway "
        "(polled every 1 ms)\n",
        "| gateway | samples | median ms | p90 ms | p99 ms | min ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, xs in (("idle", idle), (f"under wrk -c{args.conns}", loaded)):
        lines.append(
            f"| {label} | {len(xs)} | {med(xs):.1f} | {percentile(xs, 90):.1f} "
            f"| {percentile(xs, 99):.1f} | {min(xs):.1f} | {max(xs):.1f} |"
        )
    return "\n".join(lines) + "\n"


def verdict(runs: list[Run]) -> str:
    def p99(phase: str) -> float:
        return med([r.wrk.p99_ms for r in runs if r.phase == phase])

    r = p99("churn") / p99("idle")
    word = "ok" if r <= MAX_P99_RATIO else "ABOVE"
    return (
        f"Issue #4 target: p99 under churn ÷ idle p99 = {r:.2f} "
        f"(at most {MAX_P99_RATIO:g}): **{word}**.\n"
    )


def report(
    runs: list[Run],
    gw: Gateway,
    setup: dict[str, float],
    latencies: tuple[list[float], list[float]],
    cost: ChangeCost,
    args: argparse.Namespace,
    load_before: str,
) -> str:
    load_after = Path("/proc/loadavg").read_text().strip()
    title = f"{args.routes:,} routes, one changing every {args.interval * 1e3:g} ms"
    if args.no_snapshot:
        title += " (tollway.snapshot: false)"
    parts = [f"## Router churn benchmark: {title}\n"]
    parts.append(f"```\n{shlex.join([sys.executable, *sys.argv])}\n```\n")
    etcd_version = first_line([ETCD, "--version"]).replace("etcd Version: ", "")
    parts.append(
        machine(load_before, load_after, runs)
        + f"- etcd {etcd_version} (CPU {LOAD_CPU}, like this script's churn thread)\n"
        + versions()
    )
    parts.append(
        f"- Routes: 40% static `/svc/<n>/items` (GET, POST), 30% prefix `/api/<n>/*`, 20% prefix "
        f"with `hosts`, 10% `/users/<n>/:uid/orders`; router `{args.router}`; each with an "
        f"inline upstream to the nginx on CPU {LOAD_CPU}. Written in {setup['write_s']:.2f} s "
        f"({setup['txns']:.0f} txns of ≤{TXN_OPS} puts); Tollway ready "
        f"{setup['ready_s']:.1f} s after start.\n"
        f"- A change PUTs a new URI (and desc) for a different route each time, spread over "
        f"the table; after each B run the worker's acknowledged revision reached the last change "
        f"and its new URI answered 200 (its old one did not). Warm-up {args.warmup:g} s; "
        f"{args.gap:g} s between runs; ratios are of medians, per-rep paired ratios in brackets.\n"
    )
    parts.append(phase_table(runs, args, gw.target.url))
    parts.append(verdict(runs) + cost.line(args))
    parts.append(latency_table(*latencies, args))
    return "\n".join(parts)


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--duration", type=float, help="seconds per wrk run (10; quick 3)")
    p.add_argument("--reps", type=int, help="interleaved A/B repetitions (3; quick 1)")
    p.add_argument("--routes", type=int, default=10000, help="routes in etcd (10000)")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between changes (0.1)")
    p.add_argument("--conns", type=int, default=50, help="wrk connections (50)")
    p.add_argument("--samples", type=int, help="apply-latency samples, each mode (20; quick 8)")
    p.add_argument("--warmup", type=float, help="warm-up seconds (3; quick 2)")
    p.add_argument("--gap", type=float, help="pause between runs in seconds (1; quick 0.5)")
    p.add_argument(
        "--router",
        default="radixtree_host_uri",
        choices=("radixtree_host_uri", "radixtree_uri", "radixtree_uri_with_parameter"),
        help="apisix.router.http (APISIX's default radixtree_host_uri)",
    )
    p.add_argument(
        "--no-snapshot",
        action="store_true",
        help="tollway.snapshot: false (no last-known-good file written after changes)",
    )
    p.add_argument("--quick", action="store_true", help="a smoke run in well under a minute")
    p.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    args = p.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or (3.0 if quick else 10.0)
    args.reps = args.reps or (1 if quick else 3)
    args.samples = args.samples or (8 if quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (2.0 if quick else 3.0)
    args.gap = args.gap if args.gap is not None else (0.5 if quick else 1.0)
    if args.routes < 2 * len(KINDS) or args.reps < 1 or args.duration < 1 or args.conns < 1:
        p.error(f"--routes >= {2 * len(KINDS)}, --reps/--conns >= 1 and --duration >= 1 s")
    if args.interval <= 0 or args.samples < 1:
        p.error("--interval and --samples must be positive")
    args.cost_seconds = 2.0 if quick else 4.0
    if (args.reps * args.duration + args.cost_seconds) / args.interval >= args.routes - 1:
        p.error("more changes than routes: each change must give a route a URI it never had")
    return args


def preflight() -> None:
    if len(os.sched_getaffinity(0)) < 2 or (os.cpu_count() or 1) < 2:
        raise BenchError("needs CPUs 0 and 1 (wrk, upstream, etcd on one; Tollway on the other)")
    for tool in ("taskset", "nginx", "wrk", ETCD):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} not found (scripts/ensure-system-deps.sh bench; etcd-server)")


def bench(procs: Processes, workdir: Path, args: argparse.Namespace) -> None:
    preflight()
    load_before = Path("/proc/loadavg").read_text().strip()
    estimate = 10 + args.warmup + args.reps * 2 * (args.duration + args.gap + 0.5)
    estimate += 2 * args.samples * 0.15 + 2 * args.cost_seconds + 2
    progress(f"work dir {workdir}; estimated {estimate:.0f} s")
    # This script (the churn thread, the pollers) stays off the gateway's CPU too.
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    for sub in ("conf", "logs", "run"):
        (workdir / sub).mkdir()
    (upstream_port,) = free_ports(1)
    start_nginx(procs, workdir, "upstream", LOAD_CPU, "upstream.conf", port=upstream_port)
    etcd = start_etcd(procs, workdir)
    routes = RouteSet(args.routes, upstream_port, args.router == "radixtree_uri_with_parameter")
    t0 = time.monotonic()
    rev, txns = etcd.put_many((routes.key(i), routes.value(i)) for i in range(routes.count))
    write_s = time.monotonic() - t0
    progress(f"{routes.count:,} routes written in {write_s:.2f} s ({txns} txns), revision {rev}")
    target = routes.target()
    t0 = time.monotonic()
    gw = start_tollway(procs, workdir, etcd, args, routes.request(target)[0])
    if not poll(lambda: gw.worker_revision() >= rev, APPLY_DEADLINE, interval=0.05):
        raise BenchError(f"Tollway ready but its worker is not at revision {rev}: {gw.status()}")
    ready_s = time.monotonic() - t0
    progress(f"Tollway ready in {ready_s:.1f} s; wrk target {gw.target.url}")
    check_routes(gw, routes)
    check_affinity(gw.target, PROXY_CPU)
    churn = Churn(etcd, routes, routes.churn_order(avoid=target), args.interval)
    runs = run_phases(procs, gw, churn, args)
    idle_lat = apply_latency(etcd, gw, routes, args.samples, "idle")
    progress(f"apply latency idle: median {med(idle_lat):.1f} ms, max {max(idle_lat):.1f} ms")
    load_lat = apply_latency_loaded(procs, etcd, gw, routes, args)
    progress(f"apply latency under load: median {med(load_lat):.1f} ms, max {max(load_lat):.1f}")
    setup = {"write_s": write_s, "txns": txns, "ready_s": ready_s}
    cost = change_cost(gw, churn, args.cost_seconds)
    progress(cost.line(args).strip())
    print(report(runs, gw, setup, (idle_lat, load_lat), cost, args, load_before), flush=True)


def main(argv: list[str] | None = None) -> int:
    errors = (BenchError, urllib.error.URLError, OSError)
    return run_bench(bench, parse_args(argv), "tollway-churn-", errors)


if __name__ == "__main__":
    sys.exit(main())
