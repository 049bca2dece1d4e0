"""Hot-path microbenchmark (run on demand, not a test): the Python cost of one proxied request.

    .venv/bin/python bench/hotpath.py [--requests 200000] [--plugins] [--profile]
    .venv/bin/python bench/hotpath.py --vars-regex | --uri-blocker   # user regexes on the route
    .venv/bin/python bench/hotpath.py --against HEAD~1     # A/B: that commit vs the working tree
    .venv/bin/python bench/hotpath.py --access-log default  # with the access log (json: escape)

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


SENT = REQUEST  # what the client sends (--realistic, --plugin: with credentials)
TO_UPSTREAM = True  # False for a plugin that answers itself (redirect)


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


# ``--plugin NAME`` / ``--each``: one built-in plugin on the route, with a conf that lets the
# request through to the upstream (a network sink is replaced as for ``--observe``).
_LOG = {"uri": "http://127.0.0.1:1/log"}
PLUGIN_CONFS: dict[str, dict[str, Any]] = {
    "real-ip": {"source": "http_x_forwarded_for"},
    "request-id": {},
    "zipkin": OBSERVE["zipkin"],
    "opentelemetry": OBSERVE["opentelemetry"],
    "fault-injection": {"abort": {"http_status": 403, "vars": [[["arg_x", "==", "y"]]]}},
    "cors": {},
    "ip-restriction": {"whitelist": ["127.0.0.0/24"]},
    "ua-restriction": {"denylist": ["curl.*", "^python"]},
    "referer-restriction": {"whitelist": ["example.com"]},
    "uri-blocker": {"block_rules": [r"\.php$", "^/admin/", r"/\.git"]},
    "hmac-auth": {},
    "basic-auth": {},
    "jwt-auth": {},
    "key-auth": {},
    "consumer-restriction": {"type": "route_id", "whitelist": ["1"]},
    "proxy-mirror": {"host": "http://127.0.0.1:1"},
    "proxy-rewrite": {
        "regex_uri": ["^/api/v1/(.*)", "/v1/$1"],
        "headers": {"set": {"X-Bench": "1"}},
    },
    "api-breaker": {"break_response_code": 502},
    "limit-conn": {"conn": 100_000, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"},
    "limit-count": {"count": 100_000_000, "time_window": 60, "rejected_code": 429},
    "limit-req": {"rate": 1e9, "burst": 0, "key": "remote_addr"},
    "gzip": {},
    "traffic-split": {"rules": [{"weighted_upstreams": [{"weight": 1}]}]},
    "redirect": {"http_to_https": True},  # answers itself: no upstream request
    "response-rewrite": {"headers": {"set": {"X-Served-By": "tollway-bench"}}},
    "prometheus": {},
    "loki-logger": {"endpoint_addrs": ["http://127.0.0.1:1"]},
    "elasticsearch-logger": {"endpoint_addr": "http://127.0.0.1:1", "field": {"index": "x"}},
    "http-logger": _LOG,
    "tcp-logger": {"host": "127.0.0.1", "port": 1},
    "kafka-logger": {"brokers": [{"host": "127.0.0.1", "port": 1}], "kafka_topic": "t"},
    "syslog": {"host": "127.0.0.1", "port": 1},
    "udp-logger": {"host": "127.0.0.1", "port": 1},
    "file-logger": {"path": "/dev/null"},
    "clickhouse-logger": {
        "endpoint_addr": "http://127.0.0.1:1",
        "user": "u",
        "password": "p",
        "database": "d",
        "logtable": "t",
    },
}
ANSWERS_ITSELF = {"redirect"}
# Not runnable here: serverless-*-function run Lua (Tollway rejects their confs).
NOT_RUNNABLE = {"serverless-pre-function", "serverless-post-function"}
JWT_SECRET = "bench-jwt-secret"
HMAC_SECRET = "bench-hmac-secret"


def _jwt() -> str:
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(b'{"alg":"HS256","typ":"JWT"}')
    body = b64(json.dumps({"key": "bench-jwt", "exp": int(time.time()) + 86400}).encode())
    sig = hmac.new(JWT_SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def _hmac_headers() -> str:
    import base64
    import hashlib
    import hmac
    from email.utils import formatdate

    date = formatdate(usegmt=True)
    text = f"bench-hmac\nGET /api/v1/svc500/items/42\ndate: {date}\n"
    sig = hmac.new(HMAC_SECRET.encode(), text.encode(), hashlib.sha256).digest()
    auth = (
        'Signature keyId="bench-hmac",algorithm="hmac-sha256",'
        f'headers="@request-target date",signature="{base64.b64encode(sig).decode()}"'
    )
    return f"Date: {date}\r\nAuthorization: {auth}"


def credentials(plugin: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the bench consumer's conf for this auth plugin, the request's header lines)."""
    import base64

    if plugin == "key-auth":
        return {"key": "bench-key"}, "apikey: bench-key"
    if plugin == "basic-auth":
        token = base64.b64encode(b"bench:bench-pw").decode()
        return {"username": "bench", "password": "bench-pw"}, f"Authorization: Basic {token}"
    if plugin == "jwt-auth":
        return {"key": "bench-jwt", "secret": JWT_SECRET}, f"Authorization: Bearer {_jwt()}"
    if plugin == "hmac-auth":
        return {"key_id": "bench-hmac", "secret_key": HMAC_SECRET}, _hmac_headers()
    extra = {
        "real-ip": "X-Forwarded-For: 10.1.2.3",
        "cors": "Origin: http://example.com",
        "ua-restriction": "User-Agent: wrk",
        "referer-restriction": "Referer: http://example.com/page",
    }
    return None, extra.get(plugin)


def plugin_request(plugins: list[str]) -> bytes:
    lines = [line for p in plugins if (line := credentials(p)[1]) is not None]
    if not lines:
        return REQUEST
    return REQUEST.replace(b"\r\n\r\n", ("\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode())


async def setup(
    plugins: bool,
    vars_regex: bool = False,
    uri_blocker: bool = False,
    realistic: bool = False,
    observe: str | None = None,
    with_plugins: list[str] | None = None,
) -> tuple[HttpProtocol, UpstreamConnection, Transport, Transport]:
    route: dict[str, Any] = {
        "uri": "/api/v1/svc500/*",
        "upstream": {
            "type": "roundrobin",
            "nodes": {"127.0.0.1:18380": 1},
            # One connection for the whole run (the default recycles it every 1000 requests).
            # Idle for an hour: a long --each run must not see the pool's sweep close it.
            "keepalive_pool": {"size": 320, "idle_timeout": 3600, "requests": 2**31},
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
    auth: dict[str, Any] = {}
    for p in with_plugins or ():
        route.setdefault("plugins", {})[p] = PLUGIN_CONFS[p]
        consumer_conf = credentials(p)[0]
        if consumer_conf is not None:
            auth[p] = consumer_conf
    if auth:
        consumer = {"username": "bench", "plugins": auth}
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
    for pname in [name] if name else with_plugins or ():
        _no_network(registry.get(pname))
    state = ServerState(compiler, max_header_size=32768, max_body_size=0, keepalive_timeout=3600)
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


def _no_network(plugin: Any) -> None:
    """A logger's or tracer's sends become no-ops, with no backlog limit (no cheaper drops)."""
    manager = getattr(plugin, "batches", None) or getattr(plugin, "spans", None)
    if manager is None:
        return
    manager.max_pending = 2**62

    async def noop(batch: list[Any]) -> None:
        return None

    if hasattr(plugin, "sender"):
        plugin.sender = lambda conf: noop
    else:
        plugin._sender = lambda key: noop


def round_(
    proto: HttpProtocol, conn: UpstreamConnection, ct: Transport, ut: Transport, n: int
) -> float:
    feed_client, feed_up = proto.data_received, conn.data_received
    request = SENT
    if not TO_UPSTREAM:
        return _local_round(proto, ct, n)
    # The event loop does not run here: flush the writes it would send at the end of each
    # iteration (ServerState.send), when there is such a method.
    flush = getattr(proto.state, "flush_writes", lambda: None)
    t0 = time.process_time()
    for _ in range(n):
        feed_client(request)
        flush()
        feed_up(RESPONSE)
        flush()
    dt = time.process_time() - t0
    assert len(ct.out) == n and len(ut.out) == n, (len(ct.out), len(ut.out))
    ct.out.clear()
    ut.out.clear()
    return dt / n * 1e6


def _local_round(proto: HttpProtocol, ct: Transport, n: int) -> float:
    feed_client = proto.data_received
    flush = getattr(proto.state, "flush_writes", lambda: None)
    t0 = time.process_time()
    for _ in range(n):
        feed_client(SENT)
        flush()
    dt = time.process_time() - t0
    assert len(ct.out) == n, len(ct.out)
    ct.out.clear()
    return dt / n * 1e6


async def measure(plugins: list[str] | None, requests: int, rounds: int = 20) -> list[float]:
    """Sorted µs per request of ``rounds`` rounds, on a fresh gateway with ``plugins``. A
    route whose request waits on a task (an async plugin) is run with the event loop turning
    between the steps of each request (``task_round``); its figure includes the task."""
    global SENT, TO_UPSTREAM
    SENT = plugin_request(plugins or [])
    TO_UPSTREAM = not ANSWERS_ITSELF.intersection(plugins or ())
    proto, conn, ct, ut = await setup(False, with_plugins=plugins)
    proto.data_received(SENT)
    proto.state.flush_writes()
    if TO_UPSTREAM and not ut.out:  # the request went to a task: the loop must run
        await _until(lambda: len(ut.out) == 1)
        conn.data_received(RESPONSE)
        await _until(lambda: len(ct.out) == 1)
        ct.out.clear()
        ut.out.clear()
        await task_round(proto, conn, ct, ut, 2000)
        times = [await task_round(proto, conn, ct, ut, requests // rounds) for _ in range(rounds)]
        return sorted(times)
    if TO_UPSTREAM:
        conn.data_received(RESPONSE)
    proto.state.flush_writes()
    ct.out.clear()
    ut.out.clear()
    round_(proto, conn, ct, ut, 2000)  # warm
    times = []
    for _ in range(rounds):
        times.append(round_(proto, conn, ct, ut, requests // rounds))
        for _ in range(5):  # what the round queued is sent (and fails: no receiver) meanwhile
            await asyncio.sleep(0)
    times.sort()
    return times


async def _until(done: Any) -> None:
    for _ in range(1000):
        if done():
            return
        await asyncio.sleep(0)
    raise AssertionError("no progress")


async def task_round(
    proto: HttpProtocol, conn: UpstreamConnection, ct: Transport, ut: Transport, n: int
) -> float:
    """``round_`` for a request that waits on a task: the loop turns until each step is done."""
    flush = proto.state.flush_writes
    t0 = time.process_time()
    for i in range(1, n + 1):
        proto.data_received(SENT)
        flush()
        while len(ut.out) < i:
            await asyncio.sleep(0)
        conn.data_received(RESPONSE)
        flush()
        while len(ct.out) < i:
            await asyncio.sleep(0)
    dt = time.process_time() - t0
    ct.out.clear()
    ut.out.clear()
    return dt / n * 1e6


async def each(requests: int, only: list[str]) -> None:
    """Every built-in plugin alone on the route, minus the bare route: the marginal Python cost
    per request. The bare route is measured between every two plugins; the median of those
    runs is the baseline (this VM's neighbours move every figure)."""
    from tollway.plugins.registry import BUILTIN_ENTRY_POINTS

    runnable = [n for n, _ in BUILTIN_ENTRY_POINTS if n not in NOT_RUNNABLE]
    names = only or [n for n in runnable if n in PLUGIN_CONFS]
    skipped = [n for n in runnable if n not in names and not only]
    if skipped:  # (no conf here: gRPC plugins need a gRPC route, see bench/h2hotpath.py)
        print(f"not measured (no conf in PLUGIN_CONFS): {', '.join(skipped)}", file=sys.stderr)
    rows: list[tuple[str, float, float]] = []  # (name, best, the bare route's just before)
    bare: list[float] = []
    for name in names:
        bare.append((await measure(None, requests))[0])
        times = await measure([name], requests)
        rows.append((name, times[0], bare[-1]))
        print(f"{name}: best {times[0]:.2f} median {times[len(times) // 2]:.2f}", file=sys.stderr)
    bare.append((await measure(None, requests))[0])
    base = sorted(bare)[len(bare) // 2]
    print(f"bare route: {base:.2f} us/request (median of {len(bare)} bests: "
          f"{min(bare):.2f}-{max(bare):.2f})")  # fmt: skip
    print("| plugin | µs/request (best of 20 rounds) | minus median bare | minus bare run before |")
    print("|---|---|---|---|")
    for name, best, before in rows:
        note = " (answers itself: no upstream)" if name in ANSWERS_ITSELF else ""
        print(f"| `{name}`{note} | {best:.2f} | {best - base:+.2f} | {best - before:+.2f} |")


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
    ap.add_argument("--profile", action="store_true", help="a cProfile (also: HOTPATH_SORT=key)")
    ap.add_argument(
        "--plugin",
        action="append",
        choices=sorted(PLUGIN_CONFS),
        help="this built-in plugin on the route (repeatable), with a conf that lets it through",
    )
    ap.add_argument(
        "--each",
        nargs="*",
        metavar="PLUGIN",
        help="the marginal cost of each built-in plugin (or of those named), as a table",
    )
    ap.add_argument("--observe", choices=sorted(OBSERVE), help="add this plugin to the route")
    ap.add_argument(
        "--worker-gc", action="store_true", help="the worker's gc.freeze() and thresholds"
    )
    ap.add_argument(
        "--access-log",
        choices=["default", "json"],
        help="the default access log format on, with this escape (lines written to /dev/null)",
    )
    ap.add_argument("--against", metavar="REF", help="A/B against a git revision")
    ap.add_argument("--show", action="store_true", help="print one request and one answer")
    args = ap.parse_args()
    # prometheus records only with a multiprocess directory (the supervisor sets one)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="tollway-prom-"))
    if args.each is not None:
        await each(args.requests, args.each)
        return
    global SENT, TO_UPSTREAM
    if args.realistic:
        SENT = REALISTIC_REQUEST
    elif args.plugin:
        SENT = plugin_request(args.plugin)
        TO_UPSTREAM = not ANSWERS_ITSELF.intersection(args.plugin)
    proto, conn, ct, ut = await setup(
        args.plugins,
        args.vars_regex,
        args.uri_blocker,
        args.realistic,
        args.observe,
        with_plugins=args.plugin,
    )
    if args.access_log:  # on by default in the gateway (HttpConf.enable_access_log)
        from tollway.proxy.accesslog import AccessLog
        from tollway.settings import HttpConf

        log = AccessLog(os.devnull, HttpConf().access_log_format, args.access_log)
        proto.state.access_log = log
    if args.worker_gc:  # as tollway.worker.main
        import gc

        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
    if args.show:
        round_(proto, conn, ct, ut, 1)
        flush = getattr(proto.state, "flush_writes", lambda: None)
        proto.data_received(SENT)
        flush()
        conn.data_received(RESPONSE)
        flush()
        sys.stdout.write(ut.out[-1].decode() + "----\n" + ct.out[-1].decode() + "\n")
        return
    round_(proto, conn, ct, ut, 2000)  # warm
    if args.profile or os.environ.get("HOTPATH_SORT"):
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
