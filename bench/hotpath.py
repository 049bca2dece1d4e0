"""Hot-path microbenchmark (run on demand, not a test): the Python cost of one proxied request.

    .venv/bin/python bench/hotpath.py [--requests 200000] [--plugins] [--profile]
    .venv/bin/python bench/hotpath.py --vars-regex | --uri-blocker   # user regexes on the route
    .venv/bin/python bench/hotpath.py --against HEAD~1     # A/B: that commit vs the working tree

One client connection (``HttpProtocol``) and one pooled upstream connection (``UpstreamConnection``)
with in-memory transports: each iteration feeds wrk's request to the client side and nginx's answer
to the upstream side, so everything Tollway does per request runs except the socket syscalls and
uvloop's polling. The route is the proxy benchmark's (one route, no plugins, one node). Reports
microseconds per request (best of 20 rounds); ``--profile`` prints a cProfile of one round.
``--against REF`` checks REF out in a temporary git worktree and alternates runs of it and of the
working tree (4 pairs): on a shared VM only interleaved runs compare. This is the quick loop for
hot-path work; ``bench/proxy.py`` remains the figure that counts.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

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

REQUEST = b"GET /api/v1/svc500/items/42 HTTP/1.1\r\nHost: 127.0.0.1:18382\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 23:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n"
    b"hello world\n"
)


class Transport:
    def __init__(self, peer: tuple[str, int], sock: tuple[str, int]) -> None:
        self.out: list[bytes] = []
        self.extra = {"peername": peer, "sockname": sock}

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None:
        raise AssertionError("closed")


async def setup(
    plugins: bool, vars_regex: bool = False, uri_blocker: bool = False
) -> tuple[HttpProtocol, UpstreamConnection, Transport, Transport]:
    route: dict[str, Any] = {
        "uri": "/api/v1/svc500/*",
        "upstream": {
            "type": "roundrobin",
            "nodes": {"127.0.0.1:18380": 1},
            # One connection for the whole run (the default recycles it every 1000 requests).
            "keepalive_pool": {"size": 320, "idle_timeout": 60, "requests": 2**31},
        },
    }
    if plugins:
        route["plugins"] = {  # the proxy benchmark's two plugins
            "proxy-rewrite": {
                "regex_uri": ["^/api/v1/(.*)", "/v1/$1"],
                "headers": {"set": {"X-Bench": "1"}},
            },
            "response-rewrite": {"headers": {"set": {"X-Served-By": "tollway-bench"}}},
        }
    if vars_regex:  # a route condition on a variable, searched on every request
        route["vars"] = [["uri", "~~", "^/api/v[0-9]+/svc[0-9]+/items/[0-9]+$"]]
    if uri_blocker:  # three rules, none matching: the whole request uri is searched
        route["plugins"] = {"uri-blocker": {"block_rules": [r"\.php$", "^/admin/", r"/\.git"]}}
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
    ut = Transport(("127.0.0.1", 18380), ("127.0.0.1", 40000))
    conn.connection_made(ut)  # type: ignore[arg-type]
    state.pool.release(conn, up.limits)
    proto = HttpProtocol(state)
    ct = Transport(("127.0.0.1", 50000), ("127.0.0.1", 18382))
    proto.connection_made(ct)  # type: ignore[arg-type]
    return proto, conn, ct, ut


def round_(
    proto: HttpProtocol, conn: UpstreamConnection, ct: Transport, ut: Transport, n: int
) -> float:
    feed_client, feed_up = proto.data_received, conn.data_received
    # The event loop does not run here: flush the writes it would send at the end of each
    # iteration (ServerState.send), when there is such a method.
    flush = getattr(proto.state, "flush_writes", lambda: None)
    t0 = time.perf_counter()
    for _ in range(n):
        feed_client(REQUEST)
        flush()
        feed_up(RESPONSE)
        flush()
    dt = time.perf_counter() - t0
    assert len(ct.out) == n and len(ut.out) == n, (len(ct.out), len(ut.out))
    ct.out.clear()
    ut.out.clear()
    return dt / n * 1e6


def against(ref: str, passthrough: list[str]) -> None:
    """Alternate runs of ``ref`` (a temporary worktree on PYTHONPATH) and of this tree."""
    repo = Path(__file__).resolve().parent.parent
    tmp = Path(tempfile.mkdtemp(prefix="tollway-ab-"))
    tree = tmp / "tree"
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "-q", "--detach", str(tree), ref],
                   check=True)  # fmt: skip
    try:
        argv = [sys.executable, str(Path(__file__).resolve()), *passthrough]
        for _ in range(4):
            for label, env in ((ref, {"PYTHONPATH": str(tree / "src")}), ("working tree", {})):
                out = subprocess.run(argv, env={**os.environ, **env}, capture_output=True,
                                     text=True, check=True).stdout.strip()  # fmt: skip
                print(f"{label:>14}: {out}", flush=True)
    finally:
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
                       check=False)  # fmt: skip
        shutil.rmtree(tmp, ignore_errors=True)


async def main() -> None:
    if "--against" in sys.argv:
        i = sys.argv.index("--against")
        against(sys.argv[i + 1], sys.argv[1:i] + sys.argv[i + 2 :])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument(
        "--plugins", action="store_true", help="proxy-rewrite + response-rewrite as bench/proxy.py"
    )
    ap.add_argument("--vars-regex", action="store_true", help="the route has a vars ~~ regex")
    ap.add_argument("--uri-blocker", action="store_true", help="uri-blocker with three rules")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--against", metavar="REF", help="A/B against a git revision")
    ap.add_argument("--show", action="store_true", help="print one request and one answer")
    args = ap.parse_args()
    proto, conn, ct, ut = await setup(args.plugins, args.vars_regex, args.uri_blocker)
    if args.show:
        round_(proto, conn, ct, ut, 1)
        flush = getattr(proto.state, "flush_writes", lambda: None)
        proto.data_received(REQUEST)
        flush()
        conn.data_received(RESPONSE)
        flush()
        sys.stdout.write(ut.out[-1].decode() + "----\n" + ct.out[-1].decode() + "\n")
        return
    round_(proto, conn, ct, ut, 2000)  # warm
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        round_(proto, conn, ct, ut, args.requests // 4)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    # Many short rounds, the best one reported: this VM's neighbours make the others slower.
    times = sorted(round_(proto, conn, ct, ut, args.requests // 20) for _ in range(20))
    print(f"{times[0]:.2f} us/request (best of 20 rounds; median {times[10]:.2f})")


if __name__ == "__main__":
    uvloop.run(main())
