"""Proxy benchmark (run on demand, not a test): Tollway against nginx proxy_pass, side by side.

    .venv/bin/python bench/proxy.py [--duration 10] [--reps 3] [--conns 50,10] [--nodes 1]
                                    [--quick] [--no-plugins] [--profile /tmp/profile.txt]
                                    [--json out.json] [--keep]

Method (/work/shared/reference/proxy-calibration.md): CPU 0 runs wrk and the upstream nginx,
CPU 1 runs the proxy under test (nginx proxy_pass with keepalive 64, Tollway with 1 worker and
one route, Tollway with proxy-rewrite + response-rewrite on that route, and Tollway with the
chain nearly every production route carries: key-auth with one consumer, whose key wrk sends,
limit-count with a limit never reached, prometheus). With ``--nodes 2,10``
each of those runs once per node count, the upstream spread over that many nodes: the one upstream
nginx listens on as many ports, Tollway's route lists them (weight 1, roundrobin) and nginx gets
an ``upstream`` block of as many servers. Every target gets a warm-up (after which it must hold a
connection to every node), then ``taskset -c 0 wrk -t1 -cN -dDs --latency`` runs interleaved:
rep -> conns -> target, the target order rotating each rep. The figure that carries across
machines is requests per proxy CPU-second: wrk's request count over the utime+stime delta
(/proc/PID/stat) of every process in the proxy's tree. Medians over the reps; ratios are against
nginx with the same node count, measured in the same run. Prints a markdown table on stdout
(progress on stderr). Every process it starts is stopped on exit, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import linecache
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
LOAD_CPU = "0"  # wrk + upstream nginx
PROXY_CPU = "1"  # the proxy under test
PATH = "/api/v1/svc500/items/42"  # the calibration's URL
BODY = b"hello world\n"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Issue targets, at the highest connection count.
MIN_CPU_RATIO, GOAL_CPU_RATIO, MAX_P99_RATIO = 0.5, 0.6, 2.0
DASH = "\N{EN DASH}"


class BenchError(Exception):
    pass


# -- processes ---------------------------------------------------------------------------


class Processes:
    """Every process this run started. Each one leads its own session, so stopping one also
    reaches whatever it forked (nginx and Tollway workers) by its process-group id."""

    def __init__(self) -> None:
        self._running: dict[int, tuple[str, subprocess.Popen[bytes]]] = {}

    def start(self, name: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._running[proc.pid] = (name, proc)
        return proc

    def capture(self, argv: list[str], timeout: float) -> str:
        """Run a short command to completion; its stdout+stderr as text."""
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._running[proc.pid] = (argv[0], proc)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{shlex.join(argv)} did not finish in {timeout:.0f} s") from None
        finally:
            self._stop(proc, grace=0)
            del self._running[proc.pid]
        return out.decode("utf-8", "replace")

    def stop(self, name: str) -> None:
        """SIGTERM the process started as ``name`` (and its group), wait, forget it."""
        for pid, (n, proc) in list(self._running.items()):
            if n == name:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                self._stop(proc, grace=15.0)
                del self._running[pid]

    def stop_all(self) -> None:
        # SIGTERM to each leader: nginx and Tollway stop their own workers.
        for _, proc in reversed(list(self._running.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(list(self._running.values())):
            self._stop(proc, grace=8.0)
        self._running.clear()

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
        if proc.poll() is None and grace > 0:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        # Leftovers of the group (a worker whose parent died first) go too.
        _signal_group(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def free_ports(count: int) -> list[int]:
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(f"    {line}" for line in text) or "    (empty)"


def http_get(url: str, header: tuple[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=dict([header]) if header else {})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read()


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{proc.args!r} exited with {proc.returncode}:\n{log_tail(log)}")
        try:
            if http_get(url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"{url} not ready after {timeout:.0f} s:\n{log_tail(log)}")


# -- /proc accounting ---------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children[int(fields[1])].append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system) of these processes."""
    user, system = cpu_split(pids)
    return user + system


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds of these processes (utime, stime)."""
    user = system = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None:
            raise BenchError(f"process {pid} of a target exited during a run")
        user += int(fields[11])
        system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def cpu_times() -> dict[str, list[int]]:
    """Per-CPU jiffies from /proc/stat, keyed 'cpu0', 'cpu1', ..."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if name.startswith("cpu") and name != "cpu":
            out[name] = [int(v) for v in vals]
    return out


def busy_and_steal(before: list[int], after: list[int]) -> tuple[float, float]:
    delta = [a - b for a, b in zip(after, before, strict=False)]
    total = sum(delta[:8]) or 1  # user nice system idle iowait irq softirq steal
    idle = delta[3] + delta[4]
    return (total - idle) / total, delta[7] / total


# -- wrk -----------------------------------------------------------------------------------

_LAT = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.M)
_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx/3xx answers plus socket errors


def parse_wrk(text: str) -> WrkResult:
    reqs = re.search(r"(\d+) requests in", text)
    rps = re.search(r"Requests/sec:\s*([\d.]+)", text)
    lat = {m[1]: float(m[2]) * _UNIT_MS[m[3]] for m in _LAT.finditer(text)}
    if not reqs or not rps or len(lat) != 2:
        raise BenchError(f"cannot parse wrk output:\n{text}")
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text):
        errors += int(m[1])
    if m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    ):
        errors += sum(int(g) for g in m.groups())
    return WrkResult(int(reqs[1]), float(rps[1]), lat["50"], lat["99"], errors)


def pinned(cpu: str, *argv: str) -> list[str]:
    return ["taskset", "-c", cpu, *argv]


def wrk_argv(
    url: str, conns: int, seconds: float, header: tuple[str, str] | None = None
) -> list[str]:
    extra = ["-H", f"{header[0]}: {header[1]}"] if header else []
    return pinned(LOAD_CPU, WRK, "-t1", f"-c{conns}", f"-d{seconds:g}s", "--latency", *extra, url)


# -- targets -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    key: str
    label: str
    url: str
    root_pid: int
    upstream_ports: tuple[int, ...] = ()  # the nodes the target balances over
    header: tuple[str, str] | None = None  # sent with every request (the consumer's key)

    @property
    def nodes(self) -> int:
        return len(self.upstream_ports)


def render(template: str, workdir: Path, **values: str | int | list[int]) -> str:
    """Fill @WORKDIR@ and @NAME@ for each keyword NAME. A line holding the mark of a list is
    repeated once per item (N ``listen`` or ``server`` lines); comment lines stay as written."""
    text = (BENCH_DIR / "nginx" / template).read_text()
    out = []
    for line in text.splitlines(keepends=True):
        copies = [line]
        if not line.lstrip().startswith("#"):
            copies = [line.replace("@WORKDIR@", str(workdir))]
            for name, value in values.items():
                mark, items = f"@{name.upper()}@", value if isinstance(value, list) else [value]
                if mark in line:
                    copies = [c.replace(mark, str(item)) for c in copies for item in items]
        out += copies
    return "".join(out)


def start_nginx(
    procs: Processes, workdir: Path, name: str, cpu: str, template: str, **ports: int | list[int]
) -> subprocess.Popen[bytes]:
    """nginx from a template; ``port`` (one, or a list to listen on each) must answer PATH."""
    conf = workdir / "conf" / f"{name}.conf"
    conf.write_text(render(template, workdir, name=name, **ports))
    log = workdir / "logs" / f"{name}.out"
    argv = pinned(cpu, NGINX, "-p", f"{workdir}/", "-e", str(log), "-c", str(conf))
    proc = procs.start(name, argv, log)
    listen = ports["port"]
    for port in listen if isinstance(listen, list) else [listen]:
        wait_ready(f"http://127.0.0.1:{port}{PATH}", proc, log)
    return proc


TOLLWAY_CONFIG = """\
apisix:
  node_listen: [{{ip: 127.0.0.1, port: {port}}}]
  ssl: {{enable: false}}
  status: {{ip: 127.0.0.1, port: {status_port}}}
deployment:
  role: data_plane
  role_data_plane: {{config_provider: yaml}}
nginx_config:
  worker_processes: 1
  http: {{enable_access_log: false}}
tollway: {{run_dir: {home}/run, graceful_timeout: 1}}
plugin_attr: {{prometheus: {{export_addr: {{ip: 127.0.0.1, port: {metrics_port}}}}}}}
"""

TOLLWAY_ROUTES = """\
routes:
  - id: 1
    uri: /api/v1/*
    upstream:
      type: roundrobin
      nodes: {{{nodes}}}
      keepalive_pool: {{size: 320, idle_timeout: 60, requests: 100000000}}
{plugins}#END
"""

# Two common plugins: a regex rewrite and a header on the way up, a header on the way down.
PLUGINS = """\
    plugins:
      proxy-rewrite:
        regex_uri: ["^/api/v1/(.*)", "/v1/$1"]
        headers: {set: {X-Bench: "1"}}
      response-rewrite:
        headers: {set: {X-Served-By: tollway-bench}}
"""


# What nearly every production route carries (issue #13): authentication, a rate limit that
# never trips, metrics. wrk sends the consumer's key (REALISTIC_HEADER).
REALISTIC = """\
    plugins:
      key-auth: {}
      limit-count: {count: 100000000, time_window: 60, rejected_code: 429}
      prometheus: {}
"""
REALISTIC_CONSUMERS = """\
consumers:
  - username: bench
    plugins:
      key-auth: {key: bench-key}
"""
REALISTIC_HEADER = ("apikey", "bench-key")


def start_tollway(
    procs: Processes,
    workdir: Path,
    name: str,
    port: int,
    status_port: int,
    upstream_ports: list[int],
    plugins: str,
) -> subprocess.Popen[bytes]:
    """``plugins``: "" (none), "rewrite" (PLUGINS), "realistic" (REALISTIC), or a chain's
    YAML as it goes under the route."""
    home = workdir / name
    (home / "conf").mkdir(parents=True)
    config = home / "conf" / "config.yaml"
    metrics_port = free_ports(1)[0]
    config.write_text(
        TOLLWAY_CONFIG.format(
            port=port, status_port=status_port, home=home, metrics_port=metrics_port
        )
    )
    nodes = ", ".join(f'"127.0.0.1:{p}": 1' for p in upstream_ports)
    chain = {"": "", "rewrite": PLUGINS, "realistic": REALISTIC}.get(plugins, plugins)
    routes = TOLLWAY_ROUTES.format(nodes=nodes, plugins=chain)
    if plugins == "realistic":
        routes = REALISTIC_CONSUMERS + routes
    (home / "conf" / "apisix.yaml").write_text(routes)
    exe = Path(sys.executable).with_name("tollway")
    if not exe.exists():
        raise BenchError(f"{exe} not found: run this script with the project's .venv/bin/python")
    log = workdir / "logs" / f"{name}.out"
    argv = pinned(PROXY_CPU, str(exe), "start", "-c", str(config), "--workers", "1")
    proc = procs.start(name, argv, log)
    wait_ready(f"http://127.0.0.1:{status_port}/status/ready", proc, log)
    return proc


def check_target(target: Target, header: tuple[str, str] | None) -> None:
    """A target that answers fast but wrongly would win: check status, body and plugin effect."""
    if target.header is not None:  # key-auth really refuses a request without the key
        status, _, _ = http_get(target.url)
        if status != 401:
            raise BenchError(f"{target.label}: answered {status} without the consumer's key")
    status, headers, body = http_get(target.url, target.header)
    if status != 200 or body != BODY:
        raise BenchError(f"{target.label}: {target.url} answered {status} {body[:200]!r}")
    if header is not None and headers.get(header[0]) != header[1]:
        raise BenchError(f"{target.label}: header {header[0]}: {header[1]} missing: {headers}")


def nodes_label(n: int) -> str:
    return f"{n} node{'' if n == 1 else 's'}"


# limit-count alone, per policy (issue #11): the local shared table, Redis on every request,
# Redis with sync_interval (counted in the instance, synced in the background).
LIMIT_COUNT = """\
    plugins:
      limit-count: {{count: 100000000, time_window: 60, rejected_code: 429{extra}}}
"""
LIMIT_VARIANTS = (
    ("lc_local", "limit-count policy local", ""),
    (
        "lc_redis",
        "limit-count policy redis",
        ", policy: redis, redis_host: 127.0.0.1, redis_port: {port}",
    ),
    (
        "lc_redis_sync",
        "limit-count policy redis, sync_interval 1",
        ", policy: redis, redis_host: 127.0.0.1, redis_port: {port}, sync_interval: 1",
    ),
)


def start_redis(procs: Processes, workdir: Path) -> int:
    """A throwaway redis-server on the load CPU (no persistence)."""
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_ports(1)[0]
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    procs.start("redis", pinned(LOAD_CPU, *argv), workdir / "logs" / "redis.out")
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return port
        if time.monotonic() > deadline:
            raise BenchError(f"redis-server did not listen on {port}")
        time.sleep(0.05)


def start_limit_count(
    procs: Processes, workdir: Path, nodes: list[int], n: int
) -> list[tuple[str, str, int, int, None]]:
    redis_port = start_redis(procs, workdir)
    kinds = []
    for key, label, extra in LIMIT_VARIANTS:
        port, status_port = free_ports(2)
        chain = LIMIT_COUNT.format(extra=extra.format(port=redis_port))
        proc = start_tollway(procs, workdir, f"tollway_{key}_{n}n", port, status_port, nodes, chain)
        kinds.append((key, f"Tollway + {label}", port, proc.pid, None))
    return kinds


def start_minproxy(
    procs: Processes, workdir: Path, nodes: list[int], n: int
) -> tuple[str, str, int, int, None]:
    """bench/minproxy.py (CPU 1) to the first node: the floor of a Python proxy, no features."""
    port = free_ports(1)[0]
    log = workdir / "logs" / f"minproxy_{n}n.out"
    script = str(BENCH_DIR / "minproxy.py")
    argv = [sys.executable, script, "--port", str(port), "--upstream", f"127.0.0.1:{nodes[0]}"]
    proc = procs.start(f"minproxy_{n}n", pinned(PROXY_CPU, *argv), log)
    wait_ready(f"http://127.0.0.1:{port}{PATH}", proc, log)
    return (
        "minproxy",
        "minproxy (bench/minproxy.py: uvloop + httptools, no features)",
        port,
        proc.pid,
        None,
    )


def start_all(
    procs: Processes,
    workdir: Path,
    with_plugins: bool,
    node_counts: list[int],
    limit_count: bool = False,
    minproxy: bool = False,
) -> tuple[Target, ...]:
    """One upstream nginx (CPU 0) listening on max(node_counts) ports; per node count N, the
    proxies under test (CPU 1) balance over the first N of them."""
    for sub in ("conf", "logs", "run"):
        (workdir / sub).mkdir()
    ports = free_ports(max(node_counts) + 7 * len(node_counts))
    upstream, ports = ports[: max(node_counts)], ports[max(node_counts) :]
    start_nginx(procs, workdir, "upstream", LOAD_CPU, "upstream.conf", port=upstream)
    targets = []
    for n in node_counts:
        (px, tw, tw_status, tp, tp_status), ports = ports[:5], ports[5:]
        nodes = upstream[:n]
        name = f"nginx_proxy_{n}n"
        ngx = start_nginx(
            procs, workdir, name, PROXY_CPU, "nginx_proxy.conf", port=px, upstream_port=nodes
        )
        tol = start_tollway(procs, workdir, f"tollway_{n}n", tw, tw_status, nodes, plugins="")
        kinds = [
            ("nginx", "nginx proxy_pass, keepalive 64", px, ngx.pid, None),
            ("tollway", "Tollway, 1 route, no plugins", tw, tol.pid, None),
        ]
        if with_plugins:
            name = f"tollway_plugins_{n}n"
            tpp = start_tollway(procs, workdir, name, tp, tp_status, nodes, plugins="rewrite")
            label = "Tollway + proxy-rewrite + response-rewrite"
            kinds.append(("plugins", label, tp, tpp.pid, None))
            (tr, tr_status), ports = ports[:2], ports[2:]
            name = f"tollway_realistic_{n}n"
            trr = start_tollway(procs, workdir, name, tr, tr_status, nodes, plugins="realistic")
            label = "Tollway + key-auth + limit-count + prometheus"
            kinds.append(("realistic", label, tr, trr.pid, REALISTIC_HEADER))
        if limit_count:
            kinds += start_limit_count(procs, workdir, nodes, n)
        if minproxy:
            kinds.append(start_minproxy(procs, workdir, nodes, n))
        for key, label, port, pid, header in kinds:
            url = f"http://127.0.0.1:{port}{PATH}"
            targets.append(
                Target(key, f"{nodes_label(n)}: {label}", url, pid, tuple(nodes), header)
            )
    for t in targets:
        check_target(t, ("X-Served-By", "tollway-bench") if t.key == "plugins" else None)
        check_affinity(t, PROXY_CPU)
    return tuple(targets)


def upstream_connections(target: Target) -> dict[int, int]:
    """Established TCP connections from the target's process tree to each of its nodes: the
    socket inodes among the tree's open files, looked up in /proc/net/tcp."""
    inodes = set()
    for pid in process_tree(target.root_pid):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    counts = dict.fromkeys(target.upstream_ports, 0)
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and fields[9] in inodes:  # 01 = ESTABLISHED
            port = int(fields[2].rpartition(":")[2], 16)  # rem_address
            if port in counts:
                counts[port] += 1
    return counts


def check_spread(target: Target) -> str:
    """After the warm-up every node must hold a connection from the target: the load is spread."""
    counts = upstream_connections(target)
    if idle := [port for port, n in counts.items() if n == 0]:
        raise BenchError(f"{target.label}: no connection to node(s) {idle}: {counts}")
    return "/".join(str(n) for n in counts.values())


def check_affinity(target: Target, cpu: str) -> None:
    for pid in process_tree(target.root_pid):
        allowed = os.sched_getaffinity(pid)
        if allowed != {int(cpu)}:
            raise BenchError(f"{target.label}: process {pid} may run on CPUs {allowed}, not {cpu}")


# -- measuring -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    target: str
    conns: int
    rep: int
    wrk: WrkResult
    wall_s: float
    proxy_cpu_s: float
    cpu0_busy: float
    cpu1_busy: float
    steal: float
    nodes: int = 1
    proxy_sys_s: float = math.nan  # the kernel's share of proxy_cpu_s (syscalls, TCP)

    @property
    def us_user_sys(self) -> tuple[float, float]:
        """Proxy CPU microseconds per request spent in user space and in the kernel."""
        n = self.wrk.requests or 1
        return (self.proxy_cpu_s - self.proxy_sys_s) / n * 1e6, self.proxy_sys_s / n * 1e6

    @property
    def req_per_cpu_s(self) -> float:
        return self.wrk.requests / self.proxy_cpu_s if self.proxy_cpu_s > 0 else math.nan

    @property
    def cpu1_other(self) -> float:
        """Share of CPU 1 busy with something other than the proxy: other people's jobs."""
        return max(0.0, self.cpu1_busy - self.proxy_cpu_s / self.wall_s)


def measure(procs: Processes, target: Target, conns: int, seconds: float, rep: int) -> Run:
    pids = process_tree(target.root_pid)
    t0, stat0, cpu0 = time.monotonic(), cpu_times(), cpu_split(pids)
    out = procs.capture(wrk_argv(target.url, conns, seconds, target.header), timeout=seconds + 30)
    (u1, s1), stat1, t1 = cpu_split(pids), cpu_times(), time.monotonic()
    (u0, s0) = cpu0
    busy0, steal0 = busy_and_steal(stat0["cpu" + LOAD_CPU], stat1["cpu" + LOAD_CPU])
    busy1, steal1 = busy_and_steal(stat0["cpu" + PROXY_CPU], stat1["cpu" + PROXY_CPU])
    wrk = parse_wrk(out)
    steal = max(steal0, steal1)
    cpu_s, sys_s = (u1 + s1) - (u0 + s0), s1 - s0
    return Run(
        target.key, conns, rep, wrk, t1 - t0, cpu_s, busy0, busy1, steal, target.nodes, sys_s
    )


def schedule(targets: tuple[Target, ...], conns: list[int], reps: int) -> Iterator[tuple]:
    """rep -> conns -> target; the target order rotates each rep so none always goes first."""
    for rep in range(reps):
        k = rep % len(targets)
        for c in conns:
            for t in targets[k:] + targets[:k]:
                yield rep, c, t


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_all(procs: Processes, targets: tuple[Target, ...], args: argparse.Namespace) -> list[Run]:
    for t in targets:
        w = parse_wrk(procs.capture(wrk_argv(t.url, max(args.conns), args.warmup), 60))
        spread_ = check_spread(t)
        progress(f"warm-up {t.key:8} n{t.nodes:<3} {w.rps:9,.0f} req/s  conns per node {spread_}")
    runs = []
    plan = list(schedule(targets, args.conns, args.reps))
    for i, (rep, conns, t) in enumerate(plan, 1):
        time.sleep(args.gap)
        r = measure(procs, t, conns, args.duration, rep)
        runs.append(r)
        progress(
            f"[{i}/{len(plan)}] rep {rep + 1} c{conns:<3} {t.key:8} n{t.nodes:<3} "
            f"{r.wrk.rps:9,.0f} req/s  "
            f"p99 {r.wrk.p99_ms:6.2f} ms  {r.req_per_cpu_s:9,.0f} req/CPU-s  "
            f"user/sys {r.us_user_sys[0]:4.1f}/{r.us_user_sys[1]:4.1f} us/req  "
            f"cpu1 {r.cpu1_busy:4.0%} (other {r.cpu1_other:4.0%})  errors {r.wrk.errors}"
        )
    return runs


# -- report --------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def spread(values: list[float], fmt: str) -> str:
    if len(values) < 2:
        return format(med(values), fmt)
    return f"{med(values):{fmt}} ({min(values):{fmt}}{DASH}{max(values):{fmt}})"


def paired_ratio(runs: list[Run], base: list[Run], value: Callable[[Run], float]) -> str:
    """Median ratio of medians, and in brackets the range of per-rep ratios (same rep, same
    connections: the two runs sat next to each other in time)."""
    ratio = med([value(r) for r in runs]) / med([value(r) for r in base])
    by_rep = {b.rep: value(b) for b in base}
    per_rep = [value(r) / by_rep[r.rep] for r in runs if by_rep.get(r.rep)]
    if len(per_rep) < 2 or runs is base:
        return f"{ratio:.2f}"
    return f"{ratio:.2f} ({min(per_rep):.2f}{DASH}{max(per_rep):.2f})"


def table(
    runs: list[Run], targets: tuple[Target, ...], conns: int, args: argparse.Namespace
) -> str:
    head = (
        f"### wrk -t1 -c{conns} -d{args.duration:g}s --latency  "
        f"(median of {args.reps} interleaved runs, min{DASH}max in brackets)\n\n"
        "| target | RPS | p50 ms | p99 ms | req per proxy CPU-s | µs proxy CPU/req (user + sys) "
        "| RPS ÷ nginx | req/CPU-s ÷ nginx | p99 ÷ nginx "
        "| CPU0 / CPU1 busy (CPU1 not proxy) | errors |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for t in targets:
        base = [r for r in runs if (r.target, r.nodes, r.conns) == ("nginx", t.nodes, conns)]
        rs = [r for r in runs if (r.target, r.nodes, r.conns) == (t.key, t.nodes, conns)]
        cpu = [r.req_per_cpu_s for r in rs]
        rows.append(
            f"| {t.label} | {spread([r.wrk.rps for r in rs], ',.0f')} "
            f"| {med([r.wrk.p50_ms for r in rs]):.2f} | {med([r.wrk.p99_ms for r in rs]):.2f} "
            f"| {spread(cpu, ',.0f')} | {1e6 / med(cpu):.0f} "
            f"({med([r.us_user_sys[0] for r in rs]):.0f} "
            f"+ {med([r.us_user_sys[1] for r in rs]):.0f}) "
            f"| {paired_ratio(rs, base, lambda r: r.wrk.rps)} "
            f"| {paired_ratio(rs, base, lambda r: r.req_per_cpu_s)} "
            f"| {paired_ratio(rs, base, lambda r: r.wrk.p99_ms)} "
            f"| {med([r.cpu0_busy for r in rs]):.0%} / {med([r.cpu1_busy for r in rs]):.0%} "
            f"({med([r.cpu1_other for r in rs]):.0%}) "
            f"| {sum(r.wrk.errors for r in rs)} |"
        )
    return head + "\n".join(rows) + "\n"


def verdict(runs: list[Run], conns: int, nodes: int) -> str:
    def ratio(key: str, value: Callable[[Run], float]) -> float:
        pick = [value(r) for r in runs if (r.target, r.nodes, r.conns) == (key, nodes, conns)]
        base = [value(r) for r in runs if (r.target, r.nodes, r.conns) == ("nginx", nodes, conns)]
        return med(pick) / med(base)

    cpu = ratio("tollway", lambda r: r.req_per_cpu_s)
    p99 = ratio("tollway", lambda r: r.wrk.p99_ms)
    cpu_word = "meets goal" if cpu >= GOAL_CPU_RATIO else "ok" if cpu >= MIN_CPU_RATIO else "BELOW"
    out = (
        f"Issue targets at -c{conns} (Tollway, no plugins, {nodes_label(nodes)}): "
        f"req/CPU-s ÷ nginx = {cpu:.2f} (minimum {MIN_CPU_RATIO}, goal {GOAL_CPU_RATIO}): "
        f"{cpu_word}; p99 ÷ nginx = {p99:.2f} (at most {MAX_P99_RATIO:g}): "
        f"{'ok' if p99 <= MAX_P99_RATIO else 'ABOVE'}.\n"
    )
    if any(r.target == "realistic" for r in runs):
        real = ratio("realistic", lambda r: r.req_per_cpu_s)
        out += (
            f"Issue #13 at -c{conns} (key-auth + limit-count + prometheus): "
            f"req/CPU-s ÷ nginx = {real:.2f} (target 0.45), "
            f"÷ Tollway's bare route = {real / cpu:.2f} (goal 0.80).\n"
        )
    return out


def first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    lines = (out.stdout + out.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def versions() -> str:
    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    commit = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    status = ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"]
    if subprocess.run(status, capture_output=True, text=True, timeout=10).stdout.strip():
        commit += " + uncommitted changes in src/"
    return (
        f"- Tollway {dist('tollway')} at {commit}"
        f"; Python {platform.python_version()}, uvloop {dist('uvloop')}, "
        f"httptools {dist('httptools')}\n"
        f"- {first_line([NGINX, '-v']).replace('nginx version: ', '')}, "
        f"{first_line([WRK, '-v']).split(' [')[0]}\n"
    )


def machine(load_before: str, load_after: str, runs: list[Run]) -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    steal = max((r.steal for r in runs), default=0.0)
    return (
        f"- nproc {os.cpu_count()} ({model}), kernel {platform.release()}; "
        f"CPU {LOAD_CPU} = wrk + upstream nginx, CPU {PROXY_CPU} = proxy under test\n"
        f"- loadavg before: {load_before}; after: {load_after}; max steal in a run: {steal:.1%}\n"
    )


def report(
    runs: list[Run], targets: tuple[Target, ...], args: argparse.Namespace, load_before: str
) -> str:
    load_after = Path("/proc/loadavg").read_text().strip()
    parts = ["## Proxy benchmark: Tollway vs nginx proxy_pass\n"]
    parts.append(f"```\n{shlex.join([sys.executable, *sys.argv])}\n```\n")
    parts.append(machine(load_before, load_after, runs) + versions())
    parts.append(
        f"- URL {PATH}; warm-up {args.warmup:g} s per target; {args.gap:g} s between runs; "
        "req per proxy CPU-s = wrk requests ÷ Δ(utime+stime) of the proxy's whole process tree; "
        "ratios are of medians, per-rep paired ratios in brackets\n"
    )
    parts.append(
        f"- upstream: {', '.join(nodes_label(n) for n in args.nodes)} = ports of one nginx "
        f"(1 worker, CPU {LOAD_CPU}); Tollway route `type: roundrobin`, weight 1 each; nginx "
        "`upstream` block of as many servers, round-robin, keepalive 64; every ratio is to nginx "
        "with the same node count\n"
    )
    for conns in args.conns:
        parts.append(table(runs, targets, conns, args))
    conns = 50 if 50 in args.conns else max(args.conns)
    parts.append("".join(verdict(runs, conns, n) for n in args.nodes))
    return "\n".join(parts)


# -- profile -------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<fn>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


def py_spy() -> str:
    exe = Path(sys.executable).with_name("py-spy")
    found = str(exe) if exe.exists() else shutil.which("py-spy")
    if found is None:
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


def worker_pid(target: Target) -> int:
    for pid in process_tree(target.root_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"tollway.worker" in cmdline:
            return pid
    raise BenchError(f"no worker process under {target.root_pid}")


def profile(procs: Processes, target: Target, args: argparse.Namespace) -> str:
    """py-spy record one worker while wrk loads it; a summary of where the samples fall."""
    pid, conns = worker_pid(target), max(args.conns)
    out = Path(args.profile)
    record = [
        py_spy(),
        "record",
        "-p",
        str(pid),
        "-d",
        f"{args.duration:g}",
        "-r",
        "200",
        "--format",
        "raw",
        "--full-filenames",
        "-o",
        str(out),
    ]
    wrk = procs.start(
        "wrk-profile",
        wrk_argv(target.url, conns, args.duration + 2, target.header),
        out.with_suffix(".wrk"),
    )
    time.sleep(1)
    procs.capture(record, timeout=args.duration + 60)
    wrk.wait(timeout=args.duration + 30)
    return summarize_profile(out.read_text(), out, pid, conns)


@dataclass(slots=True)
class ProfileStats:
    total: int = 0
    # (leaf function, its file, its line, caller "function file:line")
    sites: Counter[tuple[str, str, int, str]] = field(default_factory=Counter)
    self_fn: Counter[tuple[str, str]] = field(default_factory=Counter)  # (function, file)
    inclusive: Counter[tuple[str, str]] = field(default_factory=Counter)


def parse_profile(raw: str) -> ProfileStats:
    """py-spy's raw (collapsed) format: 'frame;frame;... count', frame = 'fn (file:line)'."""
    stats = ProfileStats()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        stats.total += n
        frames = [m for f in stack.split(";") if (m := _FRAME.match(f))]
        if not frames:
            continue
        leaf, caller = frames[-1], frames[-2] if len(frames) > 1 else None
        by = f"{caller['fn']} {_short(caller['file'])}:{caller['line']}" if caller else ""
        stats.sites[(leaf["fn"], leaf["file"], int(leaf["line"]), by)] += n
        stats.self_fn[(leaf["fn"], _short(leaf["file"]))] += n
        for key in {(f["fn"], _short(f["file"])) for f in frames}:
            stats.inclusive[key] += n
    return stats


def summarize_profile(raw: str, out: Path, pid: int, conns: int) -> str:
    stats = parse_profile(raw)
    if not stats.total:
        return f"(py-spy wrote no samples to {out})\n"

    def pct(n: int) -> str:
        return f"{100 * n / stats.total:.1f}%"

    lines = [
        f"### py-spy: Tollway worker {pid} under wrk -c{conns} "
        f"({stats.total} samples while busy; raw: {out})\n",
        "Self time by call site (the innermost Python frame; C code and syscalls it calls,",
        "such as transport.write, count there; Runner.run is uvloop's own C loop), top 20:\n",
        "| % samples | function | file:line | code | called from |",
        "|---|---|---|---|---|",
    ]
    for (fn, file, ln, by), n in stats.sites.most_common(20):
        code = linecache.getline(file, ln).strip().replace("|", "\\|")
        lines.append(f"| {pct(n)} | {fn} | {_short(file)}:{ln} | `{code}` | {by} |")
    lines += ["", "Functions in tollway/proxy/*.py by inclusive time:\n"]
    lines += ["| inclusive | self | function | file |", "|---|---|---|---|"]
    ranked = [kv for kv in stats.inclusive.most_common() if kv[0][1].startswith("tollway/proxy/")]
    for (fn, file), n in ranked[:20]:
        lines.append(f"| {pct(n)} | {pct(stats.self_fn[(fn, file)])} | {fn} | {file} |")
    return "\n".join(lines) + "\n"


def _short(file: str) -> str:
    for marker in ("/src/", "/site-packages/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return re.sub(r"^.*/lib/python3\.\d+/", "", file)


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--duration", type=float, help="seconds per wrk run (10; quick 3)")
    p.add_argument("--reps", type=int, help="interleaved repetitions (3; quick 1)")
    p.add_argument("--conns", default="50,10", help="wrk connection counts (50,10)")
    p.add_argument("--nodes", default="1", help="upstream node counts, a run each (1; e.g. 2,10)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per target (3; quick 2)")
    p.add_argument("--gap", type=float, help="pause between runs in seconds (1; quick 0.5)")
    p.add_argument("--quick", action="store_true", help="a smoke run in well under a minute")
    p.add_argument("--no-plugins", action="store_true", help="skip the Tollway+plugins row")
    p.add_argument(
        "--minproxy",
        action="store_true",
        help="add bench/minproxy.py, the floor of a Python proxy (no router, plugins, timeouts)",
    )
    p.add_argument(
        "--limit-count",
        action="store_true",
        help="add limit-count rows: policy local, redis, redis with sync_interval (a redis-server)",
    )
    p.add_argument("--profile", metavar="OUT", help="then py-spy a Tollway worker into OUT")
    p.add_argument(
        "--profile-target",
        choices=("tollway", "plugins", "realistic"),
        default="tollway",
        help="the Tollway target --profile samples (tollway: no plugins)",
    )
    p.add_argument("--json", metavar="OUT", help="write every run as JSON to OUT")
    p.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    args = p.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or (3.0 if quick else 10.0)
    args.reps = args.reps or (1 if quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (2.0 if quick else 3.0)
    args.gap = args.gap if args.gap is not None else (0.5 if quick else 1.0)
    try:
        args.conns = [int(c) for c in args.conns.split(",") if c.strip()]
    except ValueError:
        p.error(f"--conns: expected numbers like 50,10, got {args.conns!r}")
    try:
        args.nodes = list(dict.fromkeys(int(n) for n in args.nodes.split(",") if n.strip()))
    except ValueError:
        p.error(f"--nodes: expected numbers like 2,10, got {args.nodes!r}")
    if not args.nodes or min(args.nodes) < 1 or max(args.nodes) > 100:
        p.error("--nodes: node counts from 1 to 100")
    if not args.conns or min(args.conns) < 1 or args.reps < 1 or args.duration < 1:
        p.error("--conns, --reps and --duration must be positive (duration >= 1 s)")
    return args


def preflight() -> None:
    if len(os.sched_getaffinity(0)) < 2 or (os.cpu_count() or 1) < 2:
        raise BenchError("needs CPUs 0 and 1 (wrk + upstream on one, the proxy on the other)")
    for tool in ("taskset", NGINX, WRK):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} not found (scripts/ensure-system-deps.sh bench)")


def bench(procs: Processes, workdir: Path, args: argparse.Namespace) -> None:
    preflight()
    load_before = Path("/proc/loadavg").read_text().strip()
    n_targets = (2 if args.no_plugins else 4) * len(args.nodes)
    n_targets += 3 * len(args.nodes) if args.limit_count else 0
    n_targets += len(args.nodes) if args.minproxy else 0
    estimate = n_targets * (args.warmup + 1) + args.reps * len(args.conns) * n_targets * (
        args.duration + args.gap + 0.3
    )
    progress(f"work dir {workdir}; estimated {estimate:.0f} s")
    targets = start_all(
        procs, workdir, not args.no_plugins, args.nodes, args.limit_count, args.minproxy
    )
    runs = run_all(procs, targets, args)
    if args.json:
        Path(args.json).write_text(
            json.dumps([asdict(r) | {"req_per_cpu_s": r.req_per_cpu_s} for r in runs], indent=1)
        )
    print(report(runs, targets, args, load_before), flush=True)
    if args.profile:
        chosen = next(t for t in targets if t.key == args.profile_target)
        print(profile(procs, chosen, args), flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_bench(
    bench_fn: Callable[[Processes, Path, argparse.Namespace], None],
    args: argparse.Namespace,
    prefix: str,
    errors: tuple[type[BaseException], ...] = (BenchError,),
) -> int:
    """Run ``bench_fn`` in a fresh work dir and stop every process it started, however it ends
    (SIGTERM and SIGHUP become KeyboardInterrupt). Shared by the benchmarks that start servers."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    workdir.chmod(0o755)  # nginx workers drop root and still need the paths below it
    args.workdir = str(workdir)
    try:
        bench_fn(procs, workdir, args)
        return 0
    except KeyboardInterrupt:
        progress("interrupted: stopping everything this run started")
        return 130
    except errors as e:
        progress(f"error: {e}")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        if args.keep:
            progress(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    return run_bench(bench, parse_args(argv), "tollway-bench-")


if __name__ == "__main__":
    sys.exit(main())
