"""HTTP/2 benchmark (run on demand, not a test): Tollway against nginx, both speaking h2c (prior
knowledge) to h2load and HTTP/1.1 to the same upstream.

    .venv/bin/python bench/http2.py [--duration 8] [--reps 3] [--loads 10x10,50x1] [--profile]

The method of bench/proxy.py (/work/shared/reference/proxy-calibration.md): CPU 0 runs h2load
and the upstream nginx, CPU 1 the proxy under test (nginx 1.22 ``listen ... http2`` with
proxy_pass and upstream keepalive 64, bench/nginx/nginx_proxy_h2.conf; Tollway with 1 worker and
one route, apisix.enable_http2 on by default). Each target gets a warm-up, then
``taskset -c 0 h2load -t1 -cC -mM -D S`` runs interleaved: rep -> load -> target, the order
rotating each rep. The figure: requests per proxy CPU-second (h2load's succeeded requests over
the utime+stime delta of the proxy's process tree); medians over reps; the ratio is against
nginx in the same run. ``--profile`` prints where Tollway's worker spends its CPU under load
(py-spy, when installed); ``--lib`` measures only the HTTP/2 layer's part of a request
(tollway.http2), in memory; ``--against REV`` adds Tollway at git revision REV (its src/) to
the rotation, for a before/after in one run. Prints a markdown table on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import (
    LOAD_CPU,
    NGINX,
    PATH,
    PROXY_CPU,
    BenchError,
    Processes,
    busy_and_steal,
    cpu_split,
    cpu_times,
    free_ports,
    pinned,
    process_tree,
    render,
    start_nginx,
    start_tollway,
)

ROOT = Path(__file__).resolve().parent.parent
H2LOAD = shutil.which("h2load") or "/usr/bin/h2load"
TARGET_RATIO = 0.40  # issue #14: HTTP/2 requests per proxy CPU-second, against nginx


@dataclass
class Run:
    target: str
    load: str
    rep: int
    succeeded: int
    failed: int
    rps: float
    cpu_s: float
    busy1: float
    steal: float

    @property
    def per_cpu_s(self) -> float:
        return self.succeeded / self.cpu_s if self.cpu_s > 0 else float("nan")


def h2_ready(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}{PATH}"
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} "
             "%{http_version}", url], capture_output=True, text=True, check=False,
        )  # fmt: skip
        if out.stdout == "200 2":
            return
        time.sleep(0.2)
    raise BenchError(f"{url}: no HTTP/2 200 within {timeout}s")


def start_nginx_h2(procs: Processes, workdir: Path, port: int, upstream: int) -> int:
    conf = workdir / "conf" / "nginx_h2.conf"
    conf.write_text(
        render("nginx_proxy_h2.conf", workdir, name="nginx_h2", port=port, upstream_port=upstream)
    )
    log = workdir / "logs" / "nginx_h2.out"
    argv = pinned(PROXY_CPU, NGINX, "-p", f"{workdir}/", "-e", str(log), "-c", str(conf))
    proc = procs.start("nginx_h2", argv, log)
    h2_ready(port)
    return proc.pid


def h2load(
    url: str, clients: int, streams: int, seconds: float, extra: tuple[str, ...] = ()
) -> tuple[int, int, float]:
    """(succeeded, failed, req/s); ``extra``: more h2load options (bench/grpc_proxy.py's)."""
    argv = pinned(LOAD_CPU, H2LOAD, "-t1", f"-c{clients}", f"-m{streams}", "-D", f"{seconds:g}",
                  *extra, url)  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed",
                  out.stdout)  # fmt: skip
    rps = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out.stdout)
    if m is None or rps is None:
        raise BenchError(f"h2load output not understood:\n{out.stdout}\n{out.stderr}")
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out.stdout)
    # (h2load may count one more 2xx than requests succeeded: a stream ending at the deadline)
    if codes is None or int(codes.group(1)) < int(m.group(1)) or codes.groups()[1:] != ("0",) * 3:
        raise BenchError(f"non-2xx answers:\n{out.stdout}")
    return int(m.group(1)), int(m.group(2)), float(rps.group(1))


def measure(
    name: str, pid: int, url: str, load: str, seconds: float, rep: int, extra: tuple[str, ...] = ()
) -> Run:
    clients, streams = (int(x) for x in load.split("x"))
    pids = process_tree(pid)
    stat0, (u0, s0) = cpu_times(), cpu_split(pids)
    ok, failed, rps = h2load(url, clients, streams, seconds, extra)
    (u1, s1), stat1 = cpu_split(pids), cpu_times()
    busy1, steal1 = busy_and_steal(stat0["cpu" + PROXY_CPU], stat1["cpu" + PROXY_CPU])
    _, steal0 = busy_and_steal(stat0["cpu" + LOAD_CPU], stat1["cpu" + LOAD_CPU])
    return Run(name, load, rep, ok, failed, rps, (u1 + s1) - (u0 + s0), busy1,
               max(steal0, steal1))  # fmt: skip


def profile(
    pid: int, url: str, seconds: float, extra: tuple[str, ...] = (), load: str = "10x10"
) -> str:
    """py-spy record of the worker while h2load loads it (``load``: CLIENTSxSTREAMS)."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        return "(--profile needs py-spy: .venv/bin/pip install py-spy)"
    worker = [p for p in process_tree(pid) if p != pid][-1]
    clients, streams = load.split("x")
    argv = pinned(LOAD_CPU, H2LOAD, "-t1", f"-c{clients}", f"-m{streams}", "-D",
                  f"{seconds + 2:g}", *extra, url)  # fmt: skip
    load = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    out = Path(tempfile.mkdtemp(prefix="tollway-h2-profile-")) / "raw.txt"
    time.sleep(1)
    rec = subprocess.run(
        [str(spy), "record", "-p", str(worker), "-d", f"{seconds:g}", "-r", "200", "--format",
         "raw", "--full-filenames", "-o", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    load.wait(timeout=seconds + 30)
    if rec.returncode != 0 or not out.exists():
        return f"(py-spy failed: {rec.stderr.strip()[:300]})"
    return summarize_profile(out)


def summarize_profile(path: Path, top: int = 25) -> str:
    """Self and inclusive shares of the event loop's thread (the log thread's idle waits left
    out), per function, from py-spy's raw (collapsed) output."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "Runner.run" not in stack:
            continue  # another thread (the error log's writer)
        n = int(count)
        total += n
        frames = [re.sub(r" \((.*/)?(site-packages|src)/", " (", f) for f in stack.split(";")]
        frames = [re.sub(r":\d+\)$", ")", f) for f in frames]
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    if not total:
        return "(no samples of the event loop)"
    rows = [f"event-loop thread, {total} samples", "", "| function | self % | incl. % |",
            "|---|---|---|"]  # fmt: skip
    for name, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        rows.append(f"| `{name}` | {100 * own.get(name, 0) / total:.1f} | {100 * n / total:.1f} |")
    lib = sum(n for name, n in own.items() if re.search(r"\((j?h2|hpack|hyperframe)/", name))
    layer = sum(n for name, n in own.items() if "(tollway/http2/" in name)
    rows.append(f"\nself time in h2/jh2/hpack/hyperframe: {100 * lib / total:.1f}%")
    rows.append(f"self time in tollway/http2 (the HTTP/2 layer): {100 * layer / total:.1f}%")
    return "\n".join(rows)


def library_cost(requests: int = 6000, rounds: int = 3) -> float:
    """µs per request spent in the HTTP/2 layer alone (``tollway.http2.Connection``, server
    side, as the gateway runs it): receive a request's HEADERS (h2load's fields), send HEADERS +
    DATA with END_STREAM. In memory, no sockets, no other Tollway code. The request frames come
    from the ``h2`` library as the client (not measured)."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection

    from tollway.http2.connection import Connection
    from tollway.http2.frames import INITIAL_WINDOW_SIZE, MAX_CONCURRENT_STREAMS

    server = Connection(False, {MAX_CONCURRENT_STREAMS: 128, INITIAL_WINDOW_SIZE: 65535})
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    server.initiate_connection()
    client.initiate_connection()
    client.increment_flow_control_window(2**31 - 1 - 65535)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    server.data_to_send()
    req = [(b":method", b"GET"), (b":path", PATH.encode()), (b":scheme", b"http"),
           (b":authority", b"127.0.0.1:9080"), (b"user-agent", b"h2load nghttp2/1.52.0"),
           (b"accept", b"*/*")]  # fmt: skip
    resp = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"12"),
            (b"date", b"Wed, 25 Nov 2026 23:00:00 GMT"), (b"server", b"Tollway/0.1.0")]  # fmt: skip
    frames = []
    for _ in range(requests * rounds):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, req, end_stream=True)
        frames.append((sid, client.data_to_send()))
        client.streams.pop(sid, None)  # (the client side is not measured)
    best = float("inf")
    for r in range(rounds):
        t0 = time.perf_counter()
        for sid, data in frames[r * requests : (r + 1) * requests]:
            server.receive_data(data)
            server.send_headers(sid, resp)
            server.send_data(sid, b"hello world\n", end_stream=True)
            server.data_to_send()
        best = min(best, (time.perf_counter() - t0) / requests * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--loads", default="10x10,50x1", help="CLIENTSxSTREAMS, comma-separated")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--lib", action="store_true", help="only the HTTP/2 layer's cost per request")
    ap.add_argument("--against", metavar="REV", help="also Tollway at git revision REV")
    args = ap.parse_args()
    if args.lib:
        print(f"HTTP/2 layer alone: {library_cost():.1f} µs per request (best of 3 x 6000)")
        return
    loads = args.loads.split(",")
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="tollway-h2-bench-"))
    try:
        for sub in ("conf", "logs", "run"):
            (workdir / sub).mkdir()
        up, ngx_port, tw_port, tw_status = free_ports(4)
        start_nginx(procs, workdir, "upstream", LOAD_CPU, "upstream.conf", port=up)
        targets = {
            "nginx": (start_nginx_h2(procs, workdir, ngx_port, up), ngx_port),
            "tollway": (
                start_tollway(procs, workdir, "tollway", tw_port, tw_status, [up], "").pid,
                tw_port,
            ),
        }
        h2_ready(tw_port)
        if args.against:
            targets[f"tollway@{args.against}"] = start_at(procs, workdir, args.against, up)
        for _pid, port in targets.values():  # warm-up (and pools filled)
            h2load(f"http://127.0.0.1:{port}{PATH}", 10, 10, 2)
        runs: list[Run] = []
        order = list(targets)
        for rep in range(args.reps):
            for load in loads:
                for name in order:
                    pid, port = targets[name]
                    url = f"http://127.0.0.1:{port}{PATH}"
                    run = measure(name, pid, url, load, args.duration, rep)
                    print(f"rep {rep} {load} {name}: {run.per_cpu_s:,.0f} req/CPU-s, "
                          f"{run.rps:,.0f} req/s", file=sys.stderr)  # fmt: skip
                    runs.append(run)
            order.reverse()
        print(report(runs, loads, list(targets)))
        if args.profile:
            pid, port = targets["tollway"]
            # (under the last load of --loads)
            url = f"http://127.0.0.1:{port}{PATH}"
            print("\n" + profile(pid, url, args.duration, load=loads[-1]))
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def start_at(procs: Processes, workdir: Path, rev: str, upstream: int) -> tuple[int, int]:
    """Tollway of git revision ``rev`` (its src/, exported from this checkout), as "tollway"."""
    src = workdir / f"src-{rev}"
    src.mkdir()
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True,
                         check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(src)], input=tar, check=True)
    port, status = free_ports(2)
    env = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(src / "src")
    try:
        pid = start_tollway(procs, workdir, f"tollway-{rev}", port, status, [upstream], "").pid
    finally:
        if env is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = env
    h2_ready(port)
    return pid, port


def report(runs: list[Run], loads: list[str], names: list[str], unit: str = "req") -> str:
    """The runs' table (also bench/grpc_proxy.py's, with ``unit`` "calls")."""
    rows = [
        f"| h2load load (clients x streams) | target | {unit} per proxy CPU-s (median; runs) "
        f"| {unit}/s (median) | ÷ nginx ({unit}/CPU-s) | failed | max steal |",
        "|---|---|---|---|---|---|---|",
    ]
    for load in loads:
        base = statistics.median(r.per_cpu_s for r in runs if r.load == load and
                                 r.target == "nginx")  # fmt: skip
        for name in names:
            mine = [r for r in runs if r.load == load and r.target == name]
            cps = statistics.median(r.per_cpu_s for r in mine)
            each = ", ".join(f"{r.per_cpu_s:,.0f}" for r in mine)
            rows.append(
                f"| {load} | {name} | {cps:,.0f} ({each}) | "
                f"{statistics.median(r.rps for r in mine):,.0f} | {cps / base:.2f} | "
                f"{sum(r.failed for r in mine)} | {max(r.steal for r in mine):.1%} |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        sys.exit(f"bench/http2.py: {e}")
