"""gRPC proxying benchmark (run on demand, not a test): unary calls per proxy CPU-second, Tollway
against nginx ``grpc_pass``, both to the same upstream, in the same run.

    .venv/bin/python bench/grpc_proxy.py [--duration 8] [--reps 3] [--loads 4x16,20x1]
                                         [--upstream native|grpcio] [--against REV] [--profile]

The method of bench/http2.py: CPU 0 runs h2load and the upstream, CPU 1 the proxy under test:
nginx 1.22 (``listen ... http2``, ``grpc_pass`` with upstream keepalive 64,
bench/nginx/nginx_grpc.conf) or Tollway (1 worker, one route, ``scheme: grpc``). The upstream
(``--upstream``): ``native`` (the default) is nginx answering every call with one pre-built
reply, ``grpc-status: 0`` in trailers (bench/nginx/grpc_upstream.conf), 30k+ calls/s on one
core, so the proxies are the bottleneck and both run CPU-bound; ``grpcio`` is the tests' Echo
service (grpcio with Python handlers, a process of its own), ~3k calls/s, which leaves both
proxies idle most of the time. h2load sends unary calls over h2c (``-d`` a framed message,
``content-type: application/grpc``, ``te: trailers``). Before timing, a grpcio client calls
the upstream and each target through the bench's stub: the reply must decode to the upstream's
answer with status OK (which grpcio reads from the trailers). Then each target gets a warm-up,
and ``taskset -c 0 h2load -t1 -cC -mM -D S`` runs interleaved: rep -> load -> target, the order
rotating each rep. The figure: calls per proxy CPU-second (h2load's succeeded calls over the
utime+stime delta of the proxy's process tree); medians over reps; the ratio is against nginx
in the same run. ``--profile``: py-spy of Tollway's worker under the last load after the runs;
``--against REV``: Tollway at git revision REV too, in the rotation (before/after in one run).
Prints the upstream and a markdown table on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from http2 import H2LOAD, Run, measure, profile, report  # noqa: E402
from proxy import (  # noqa: E402
    LOAD_CPU,
    NGINX,
    PROXY_CPU,
    TOLLWAY_CONFIG,
    BenchError,
    Processes,
    free_ports,
    pinned,
    render,
    wait_ready,
)
from tests.support.grpc_echo import echo_pb2_grpc  # noqa: E402
from tests.support.grpc_server import Msg, frame  # noqa: E402

PATH = "/tollway.test.Echo/Unary"
GRPC_ROUTES = """\
routes:
  - id: g
    uri: {path}
    upstream: {{scheme: grpc, nodes: {{"127.0.0.1:{port}": 1}}}}
#END
"""


# The native upstream's one reply to every call (what the grpcio upstream would answer to
# "hi" is "bench:hi": its name, then the text).
NATIVE_REPLY = Msg(text="native:reply")
UPSTREAMS = ("native", "grpcio")
UPSTREAM_NAMES = {
    "native": "native (nginx h2c, one pre-built reply, bench/nginx/grpc_upstream.conf)",
    "grpcio": "grpcio (tests' Echo service, Python handlers)",
}


def grpc_check(port: int, expect: str, timeout: float = 20) -> None:
    """A grpcio client's unary call through ``port`` decodes to a reply whose text is
    ``expect``, with status OK: grpcio takes the status from the trailers' grpc-status, so a
    lost or mangled trailer fails here too."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = echo_pb2_grpc.EchoStub(ch)
                reply, call = stub.Unary.with_call(Msg(text="hi"), timeout=5)
            if reply.text == expect and call.code() is grpc.StatusCode.OK:
                return
            raise BenchError(f"port {port}: unexpected answer {reply!r} {call.code()}")
        except grpc.RpcError as e:
            if time.monotonic() > deadline:
                raise BenchError(f"port {port}: no gRPC answer: {e}") from None
            time.sleep(0.2)


def start_upstream(procs: Processes, workdir: Path, port: int, kind: str) -> str:
    """The upstream of ``kind`` on ``port``, checked with a call; the reply text to expect."""
    if kind == "grpcio":
        argv = pinned(LOAD_CPU, sys.executable, "-m", "tests.support.grpc_server", "bench",
                      str(port))  # fmt: skip
        procs.start("grpcio", argv, workdir / "logs" / "grpcio.out")
        grpc_check(port, "bench:hi")
        return "bench:hi"
    (workdir / "htdocs").mkdir()
    (workdir / "htdocs" / "reply").write_bytes(frame(NATIVE_REPLY))
    # run as root, nginx's worker is "nobody": it must reach the file in the private workdir
    workdir.chmod(0o711)
    for path in (workdir / "htdocs", workdir / "htdocs" / "reply"):
        path.chmod(0o755)
    conf = workdir / "conf" / "grpc_upstream.conf"
    conf.write_text(render("grpc_upstream.conf", workdir, name="grpc_upstream", port=port,
                           path=PATH))  # fmt: skip
    log = workdir / "logs" / "grpc_upstream.out"
    procs.start("grpc_upstream", pinned(LOAD_CPU, NGINX, "-p", f"{workdir}/", "-e", str(log),
                                        "-c", str(conf)), log)  # fmt: skip
    grpc_check(port, NATIVE_REPLY.text)
    return NATIVE_REPLY.text


def start_nginx_grpc(procs: Processes, workdir: Path, port: int, upstream: int, expect: str) -> int:
    conf = workdir / "conf" / "nginx_grpc.conf"
    conf.write_text(render("nginx_grpc.conf", workdir, name="nginx_grpc", port=port,
                           upstream_port=upstream))  # fmt: skip
    log = workdir / "logs" / "nginx_grpc.out"
    argv = pinned(PROXY_CPU, NGINX, "-p", f"{workdir}/", "-e", str(log), "-c", str(conf))
    proc = procs.start("nginx_grpc", argv, log)
    grpc_check(port, expect)
    return proc.pid


def start_tollway_grpc(
    procs: Processes, workdir: Path, port: int, upstream: int, expect: str, name: str = "tollway"
) -> int:
    home = workdir / name
    (home / "conf").mkdir(parents=True)
    status, metrics = free_ports(2)
    config = home / "conf" / "config.yaml"
    config.write_text(TOLLWAY_CONFIG.format(port=port, status_port=status, home=home,
                                            metrics_port=metrics))  # fmt: skip
    (home / "conf" / "apisix.yaml").write_text(GRPC_ROUTES.format(path=PATH, port=upstream))
    exe = Path(sys.executable).with_name("tollway")
    log = workdir / "logs" / f"{name}.out"
    argv = pinned(PROXY_CPU, str(exe), "start", "-c", str(config), "--workers", "1")
    proc = procs.start(name, argv, log)
    wait_ready(f"http://127.0.0.1:{status}/status/ready", proc, log)
    grpc_check(port, expect)
    return proc.pid


def export_src(rev: str, workdir: Path) -> Path:
    """src/ of git revision ``rev`` of this checkout, exported under ``workdir``."""
    out = workdir / f"src-{rev}"
    out.mkdir()
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True,
                         check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(out)], input=tar, check=True)
    return out / "src"


@contextlib.contextmanager
def python_path(path: Path) -> Iterator[None]:
    """PYTHONPATH for the processes started meanwhile."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(path)
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--loads", default="4x16,20x1", help="CLIENTSxSTREAMS, comma-separated")
    ap.add_argument("--profile", action="store_true", help="py-spy of Tollway's worker after")
    ap.add_argument("--against", metavar="REV", help="also Tollway at git revision REV")
    ap.add_argument(
        "--upstream", choices=UPSTREAMS, default="native",
        help="native: nginx answering a pre-built reply (default); grpcio: Python handlers",
    )  # fmt: skip
    args = ap.parse_args()
    loads = args.loads.split(",")
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="tollway-grpc-bench-"))
    try:
        for sub in ("conf", "logs", "run"):
            (workdir / sub).mkdir()
        body = workdir / "req.bin"
        body.write_bytes(frame(Msg(text="hello")))
        up, ngx_port, tw_port = free_ports(3)
        expect = start_upstream(procs, workdir, up, args.upstream)
        targets = {
            "nginx": (start_nginx_grpc(procs, workdir, ngx_port, up, expect), ngx_port),
            "tollway": (start_tollway_grpc(procs, workdir, tw_port, up, expect), tw_port),
        }
        if args.against:
            old = export_src(args.against, workdir)
            port = free_ports(1)[0]
            with python_path(old):
                pid = start_tollway_grpc(procs, workdir, port, up, expect,
                                         f"tollway-{args.against}")  # fmt: skip
            targets[f"tollway@{args.against}"] = (pid, port)
        extra = ("-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers")
        for pid, port in targets.values():  # warm-up (and upstream connections opened)
            measure("warm-up", pid, f"http://127.0.0.1:{port}{PATH}", "4x16", 2, -1, extra)
        runs: list[Run] = []
        order = list(targets)
        for rep in range(args.reps):
            for load in loads:
                for name in order:
                    pid, port = targets[name]
                    url = f"http://127.0.0.1:{port}{PATH}"
                    run = measure(name, pid, url, load, args.duration, rep, extra)
                    print(f"rep {rep} {load} {name}: {run.per_cpu_s:,.0f} calls/CPU-s, "
                          f"{run.rps:,.0f} calls/s", file=sys.stderr)  # fmt: skip
                    runs.append(run)
            order.reverse()
        print(f"upstream: {UPSTREAM_NAMES[args.upstream]}\n")
        print(report(runs, loads, list(targets), "calls"))
        if args.profile:
            pid, port = targets["tollway"]
            # (under the last load of --loads)
            url = f"http://127.0.0.1:{port}{PATH}"
            print("\n" + profile(pid, url, args.duration, extra, loads[-1]))
    finally:
        procs.stop_all()


if __name__ == "__main__":
    assert H2LOAD
    try:
        main()
    except (BenchError, subprocess.SubprocessError) as e:
        sys.exit(f"bench/grpc_proxy.py: {e}")
