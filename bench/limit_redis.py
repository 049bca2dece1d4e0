"""limit-count's cost per request: ``policy: redis`` (with and without ``sync_interval``) against
``policy: local`` and no plugin (run on demand, not a test).

    .venv/bin/python bench/limit_redis.py [--requests 20000] [--rounds 5]

The method of bench/hotpath.py: one client connection (``HttpProtocol``) and one pooled upstream
connection with in-memory transports run the whole pipeline (parse, match, plugins, proxy) for
wrk's request and nginx's answer; here the event loop runs too, because the Redis policies'
access phase is a coroutine that talks to a real redis-server (started on a free loopback port,
no persistence). One request at a time: the wall time per request includes the Redis round
trip, the CPU time is this process's (``time.process_time``) and Redis's own is reported beside
it (``/proc/<pid>/stat``). Variants run interleaved, round by round (this VM is shared); the
median per variant and its ratio to ``local`` are reported. The limit is never reached (count
10^9), so every request is proxied.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from hotpath import REQUEST, RESPONSE, Transport

from tollway.config.source import KeyValue
from tollway.config.store import Store
from tollway.plugins.registry import load_registry

try:  # the module layout of the tree under test (bench/hotpath.py --against an older commit)
    from tollway.runtime.compiler import Compiler
except ImportError:
    from tollway.proxy.runtime import Compiler  # type: ignore[no-redef]
from tollway.proxy.server import HttpProtocol
from tollway.proxy.state import ServerState
from tollway.proxy.upstream import UpstreamConnection
from tollway.settings import default_settings

CLK_TCK = os.sysconf("SC_CLK_TCK")
DASH = "\N{EN DASH}"


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
            "no", "--dir", str(workdir)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


class Waiter(Transport):
    """The upstream side's transport: wakes the driver when the request was sent up."""

    def __init__(self, peer: tuple[str, int], sock: tuple[str, int]) -> None:
        super().__init__(peer, sock)
        self.sent: asyncio.Event | None = None

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.sent is not None:
            self.sent.set()


async def setup(
    plugins: dict[str, Any],
) -> tuple[HttpProtocol, UpstreamConnection, Transport, Waiter]:
    route: dict[str, Any] = {
        "uri": "/api/v1/svc500/*",
        "upstream": {
            "type": "roundrobin",
            "nodes": {"127.0.0.1:18380": 1},
            "keepalive_pool": {"size": 320, "idle_timeout": 60, "requests": 2**31},
        },
    }
    if plugins:
        route["plugins"] = plugins
    store = Store()
    store.load(1, [KeyValue("/apisix/routes/1", json.dumps(route).encode(), 1, 1)])
    compiler = Compiler(default_settings(Path("/tmp/conf")), load_registry())
    await compiler.rebuild(store)
    state = ServerState(compiler, max_header_size=32768, max_body_size=0, keepalive_timeout=60)
    state.start(asyncio.get_running_loop())
    routes = compiler.routes if hasattr(compiler, "routes") else compiler.runtime.routes
    up = routes["1"].upstream
    assert up is not None
    conn = UpstreamConnection(state.pool, (up.pool_key, "127.0.0.1", 18380))
    ut = Waiter(("127.0.0.1", 18380), ("127.0.0.1", 40000))
    conn.connection_made(ut)  # type: ignore[arg-type]
    state.pool.release(conn, up.limits)
    proto = HttpProtocol(state)
    ct = Transport(("127.0.0.1", 50000), ("127.0.0.1", 18382))
    proto.connection_made(ct)  # type: ignore[arg-type]
    return proto, conn, ct, ut


async def round_(
    proto: HttpProtocol, conn: UpstreamConnection, ct: Transport, ut: Waiter, n: int
) -> tuple[float, float]:
    """(wall µs, CPU µs) per request, one request at a time."""
    feed_client, feed_up = proto.data_received, conn.data_received
    loop = asyncio.get_running_loop()
    flush = proto.state.flush_writes
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        sent = ut.sent = asyncio.Event()
        feed_client(REQUEST)
        flush()
        if not sent.is_set():  # an async plugin: the loop runs the rest
            await sent.wait()
        feed_up(RESPONSE)
        flush()
        if len(ct.out) < len(ut.out):
            done = loop.create_future()
            loop.call_soon(done.set_result, None)
            await done
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    assert len(ct.out) == n and len(ut.out) == n, (len(ct.out), len(ut.out))
    assert all(b" 200 OK" in r for r in ct.out[:1]), ct.out[:1]
    ct.out.clear()
    ut.out.clear()
    return dt / n * 1e6, dc / n * 1e6


def variants(port: int) -> dict[str, dict[str, Any]]:
    base = {"count": 10**9, "time_window": 60}
    redis = {**base, "policy": "redis", "redis_host": "127.0.0.1", "redis_port": port}
    return {
        "no plugin": {},
        "local": {"limit-count": base},
        "redis": {"limit-count": redis},
        "redis, sync_interval 1": {"limit-count": {**redis, "sync_interval": 1}},
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tollway-bench-redis-"))
    redis, port = start_redis(workdir)
    try:
        setups = {name: await setup(p) for name, p in variants(port).items()}
        for s in setups.values():
            await round_(*s, 500)  # warm: connections, scripts loaded, quotas read
        wall: dict[str, list[float]] = {k: [] for k in setups}
        cpu: dict[str, list[float]] = {k: [] for k in setups}
        rcpu: dict[str, list[float]] = {k: [] for k in setups}
        for _ in range(args.rounds):
            for name, s in setups.items():
                r0 = cpu_seconds(redis.pid)
                w, c = await round_(*s, args.requests)
                wall[name].append(w)
                cpu[name].append(c)
                rcpu[name].append((cpu_seconds(redis.pid) - r0) / args.requests * 1e6)
        report(wall, cpu, rcpu, args)
    finally:
        redis.kill()
        redis.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def report(
    wall: dict[str, list[float]],
    cpu: dict[str, list[float]],
    rcpu: dict[str, list[float]],
    args: argparse.Namespace,
) -> None:
    med = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"{args.rounds} interleaved rounds x {args.requests} requests, medians")
    print("| variant | wall µs/req | Tollway CPU µs/req | CPU ÷ local | redis-server CPU µs/req |")
    print("|---|---|---|---|---|")
    for k in wall:
        w = statistics.median(wall[k])
        ratio = med[k] / med["local"]
        rc = statistics.median(rcpu[k])
        lo, hi = min(cpu[k]), max(cpu[k])
        print(f"| {k} | {w:.1f} | {med[k]:.1f} ({lo:.1f}{DASH}{hi:.1f}) | {ratio:.2f} | {rc:.1f} |")


if __name__ == "__main__":
    uvloop.run(main())
