"""gRPC proxying benchmark (run on demand, not a test): unary calls from h2load over h2c, to a
grpcio server directly and through Tollway (1 worker, one route, ``scheme: grpc``).

    .venv/bin/python bench/grpc_proxy.py [--requests 6000] [--clients 4] [--streams 16] [--reps 3]

The upstream is the tests' Echo service (grpcio, in a process of its own); its Python handlers
bound the direct figure, so the ratio says little. What counts is Tollway's worker CPU per call
(utime+stime of the worker over the calls h2load completed): the gateway's own cost, both
HTTP/2 sides (the ``h2`` library) included. Runs alternate direct / gateway; medians of ``--reps``.
Prints a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.gateway import Gateway  # noqa: E402
from tests.support.grpc_server import GrpcServerProcess, Msg, frame  # noqa: E402

PATH = "/tollway.test.Echo/Unary"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def h2load(port: int, body: Path, args: argparse.Namespace) -> tuple[float, int]:
    """(requests per second, succeeded calls)."""
    out = subprocess.run(
        ["h2load", "-n", str(args.requests), "-c", str(args.clients), "-m", str(args.streams),
         "-t", "1", "-d", str(body), "-H", "content-type: application/grpc",
         "-H", "te: trailers", f"http://127.0.0.1:{port}{PATH}"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    rps = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    ok = re.search(r"(\d+) succeeded", out)
    if rps is None or ok is None:
        raise RuntimeError(out)
    return float(rps.group(1)), int(ok.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tollway-grpc-bench-"))
    body = work / "req.bin"
    body.write_bytes(frame(Msg(text="hello")))
    server = GrpcServerProcess("bench").start()
    yaml = (
        f"routes:\n  - id: g\n    uri: {PATH}\n"
        f'    upstream: {{scheme: grpc, nodes: {{"127.0.0.1:{server.port}": 1}}}}\n#END\n'
    )
    direct: list[float] = []
    proxied: list[float] = []
    cpu_us: list[float] = []
    try:
        with Gateway(work / "gw", apisix_yaml=yaml, workers=1) as g:
            worker = g.worker_pids()[0]
            h2load(g.port, body, args)  # warm-up: connections, caches
            for _ in range(args.reps):
                direct.append(h2load(server.port, body, args)[0])
                before = cpu_seconds(worker)
                rps, ok = h2load(g.port, body, args)
                cpu_us.append((cpu_seconds(worker) - before) / ok * 1e6)
                proxied.append(rps)
    finally:
        server.kill()
    print("| target | calls/s (median) | worker CPU per call |")
    print("|---|---|---|")
    print(f"| grpcio directly | {statistics.median(direct):.0f} | |")
    cpu = statistics.median(cpu_us)
    print(f"| through Tollway | {statistics.median(proxied):.0f} | {cpu:.0f} µs |")


if __name__ == "__main__":
    main()
