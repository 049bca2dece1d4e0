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


REALISTIC = False  # --realistic: requests carry the consumer's key


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


# ``--observe NAME``: the route also runs this plugin. Its network send is replaced by a no-op
# (the batches leave between rounds, when the event loop runs), and its backlog limit is lifted
# so that no entry takes the cheaper drop path.
OBSERVE: dict[str, dict[str, Any]] = {
    "opentelemetry": {"sampler": {"name": "always_on"}},
    "zipkin": {"endpoint": "http://127.0.0.1:9411/api/v2/spans", "sample_ratio": 1},
    "http-logger": {"uri": "http://127.0.0.1:1/log"},
    # with its own log_format: no header_filter, the response head passes untouched
    "http-logger+log_format": {
        "uri": "http://127.0.0.1:1/log",
        "log_format": {"host": "$host", "uri": "$uri", "status": "$status"},
    },
    "tcp-logger": {"host": "127.0.0.1", "port": 1},
}


REALISTIC_REQUEST = REQUEST.replace(b"\r\n\r\n", b"\r\napikey: bench-key\r\n\r\n")


async def setup(
    plugins: bool,
    vars_regex: bool = False,
    uri_blocker: bool = False,
    realistic: bool = False,
    observe: str | None = None,
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
    items = []
    if realistic:  # what nearly every production route carries (issue #13)
        route["plugins"] = {
            "key-auth": {},
            "limit-count": {"count": 100_000_000, "time_window": 60, "rejected_code": 429},
            "prometheus": {},
        }
        consumer = {"username": "bench", "plugins": {"key-auth": {"key": "bench-key"}}}
        items.append(KeyValue("/apisix/consumers/bench", json.dumps(consumer).encode(), 1, 1))
    name = observe.split("+")[0] if observe else None
    if observe:
        route.setdefault("plugins", {})[name] = OBSERVE[observe]
    items.append(KeyValue("/apisix/routes/1", json.dumps(route).encode(), 1, 1))
    store = Store()
    store.load(1, items)
    registry = load_registry()
    compiler = Compiler(default_settings(Path("/tmp/conf")), registry)
    await compiler.rebuild(store)
    if observe:
        plugin: Any = registry.get(name)
        manager = getattr(plugin, "batches", None) or plugin.spans
        manager.max_pending = 2**62

        async def noop(batch: list[Any]) -> None:
            return None

        if hasattr(plugin, "sender"):
            plugin.sender = lambda conf: noop
        else:
            plugin._sender = lambda key: noop
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
    request = REALISTIC_REQUEST if REALISTIC else REQUEST
    # The event loop does not run here: flush the writes it would send at the end of each
    # iteration (ServerState.send), when there is such a method.
    flush = getattr(proto.state, "flush_writes", lambda: None)
    t0 = time.perf_counter()
    for _ in range(n):
        feed_client(request)
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
    ap.add_argument(
        "--realistic", action="store_true", help="key-auth + limit-count + prometheus (#13)"
    )
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--observe", choices=sorted(OBSERVE), help="add this plugin to the route")
    ap.add_argument(
        "--worker-gc", action="store_true", help="the worker's gc.freeze() and thresholds"
    )
    ap.add_argument("--against", metavar="REF", help="A/B against a git revision")
    ap.add_argument("--show", action="store_true", help="print one request and one answer")
    args = ap.parse_args()
    global REALISTIC
    REALISTIC = args.realistic
    proto, conn, ct, ut = await setup(
        args.plugins, args.vars_regex, args.uri_blocker, args.realistic, args.observe
    )
    if args.worker_gc:  # as tollway.worker.main
        import gc

        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
    if args.show:
        round_(proto, conn, ct, ut, 1)
        flush = getattr(proto.state, "flush_writes", lambda: None)
        proto.data_received(REALISTIC_REQUEST if REALISTIC else REQUEST)
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
        pstats.Stats(prof).sort_stats(os.environ.get("HOTPATH_SORT", "tottime")).print_stats(25)
        return
    # Many short rounds, the best one reported: this VM's neighbours make the others slower.
    times = []
    for _ in range(20):
        times.append(round_(proto, conn, ct, ut, args.requests // 20))
        for _ in range(5):  # what the round queued is sent (and fails: no receiver) meanwhile
            await asyncio.sleep(0)
    times.sort()
    print(f"{times[0]:.2f} us/request (best of 20 rounds; median {times[10]:.2f})")


if __name__ == "__main__":
    uvloop.run(main())
