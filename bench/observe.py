"""What tracing and logging plugins cost per request (run on demand, not a test).

    .venv/bin/python bench/observe.py [--requests 20000]

For each plugin: the request-path cost (its phase methods as the pipeline calls them, on a
request context like the pipeline's: 6 request headers, a matched route, a 200 answer) and the
cost paid later in the batch processor's task (the span or log entry built and encoded, per
entry; the network send itself is replaced by a no-op). Best and median of rounds, in µs; the
event loop runs between rounds so batches leave as in a worker, whose garbage-collector settings
(``gc.freeze()``, thresholds 50,000/50/100) are used. ``bench/hotpath.py --observe``
measures the same plugins inside the whole request path.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

import uvloop

from tollway.plugins.builtin.http_logger import encode_batch
from tollway.plugins.builtin.opentelemetry import Instance, export_request, resource_of
from tollway.plugins.kit import RequestContext
from tollway.plugins.registry import load_registry

HEADERS = [
    (b"Host", b"api.example.com"),
    (b"User-Agent", b"wrk/4.2"),
    (b"Accept", b"*/*"),
    (b"Accept-Encoding", b"gzip"),
    (b"X-Request-Id", b"9f2c1d3e4b5a69788796a5b4c3d2e1f0"),
    (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
]

CONFS: dict[str, dict[str, Any]] = {
    "opentelemetry": {"sampler": {"name": "always_on"}},
    "zipkin": {"endpoint": "http://127.0.0.1:9411/api/v2/spans", "sample_ratio": 1},
    "http-logger": {"uri": "http://127.0.0.1:1/log"},
    "tcp-logger": {"host": "127.0.0.1", "port": 1},
}


class Route:
    id = "1"


def make_ctx() -> RequestContext:
    ctx = RequestContext(
        "GET",
        "/api/v1/items/42?x=1",
        "/api/v1/items/42",
        "x=1",
        HEADERS,
        "api.example.com",
        "127.0.0.1",
        50000,
        "127.0.0.1",
        9080,
        "http",
        time.time(),
    )
    ctx.route = Route()
    ctx.route_id = "1"
    ctx.matched_uri = "/api/v1/*"
    return ctx


def finish(ctx: RequestContext) -> None:
    """What the pipeline sets before header_filter and log."""
    ctx.resp_status = 200
    ctx.resp_headers = [("Content-Type", "text/plain"), ("Content-Length", "12")]
    ctx.upstream_addr = "127.0.0.1:18380"
    ctx.upstream_status = "200"
    ctx.upstream_response_time = 0.001
    ctx.bytes_sent = 12


async def noop_send(batch: list[Any]) -> None:
    return None


def phases(plugin: Any, conf: Any) -> list[tuple[str, Callable[..., Any]]]:
    out = []
    for phase in ("rewrite", "access", "header_filter", "log"):
        fn = getattr(type(plugin), phase, None)
        base = getattr(type(plugin).__mro__[-2], phase, None)
        if fn is not None and fn is not base and plugin.phase_method(phase, conf) is not None:
            out.append((phase, getattr(plugin, phase)))
    return out


async def request_path(name: str, n: int, rounds: int) -> tuple[float, float]:
    reg = load_registry()
    plugin: Any = reg.get(name)
    conf = reg.decode_conf(name, CONFS[name])
    manager = getattr(plugin, "batches", None) or plugin.spans
    if hasattr(plugin, "sender"):
        plugin.sender = lambda conf: noop_send
    else:
        plugin._sender = lambda inst: noop_send
    fns = [fn for _, fn in phases(plugin, conf)]
    times = []
    for _ in range(rounds):
        ctxs = [make_ctx() for _ in range(n)]
        for c in ctxs:
            finish(c)
        t0 = time.perf_counter()
        for ctx in ctxs:
            for fn in fns:
                fn(conf, ctx)
        times.append((time.perf_counter() - t0) / n * 1e6)
        del ctxs
        for _ in range(3):
            await asyncio.sleep(0)
    await manager.aclose(1.0)
    times.sort()
    return times[0], times[len(times) // 2]


async def background(name: str, n: int, rounds: int) -> tuple[float, float]:
    """Per entry: the preparer (entry/span built from the context) and the encoding."""
    reg = load_registry()
    plugin: Any = reg.get(name)
    conf = reg.decode_conf(name, CONFS[name])
    times = []
    for _ in range(rounds):
        items = []
        for _ in range(n):
            ctx = make_ctx()
            if name == "opentelemetry":
                plugin.rewrite(conf, ctx)
            finish(ctx)
            state = ctx.plugin_state.get(name) if ctx.plugin_state else None
            items.append((conf, ctx, state, time.time_ns()) if state else (ctx, time.time()))
        if name == "opentelemetry":
            _, _, prepare = plugin._start(plugin.instance)
            resource = resource_of(Instance())
            t0 = time.perf_counter()
            export_request(resource, prepare(items))
        else:
            _, _, prepare = plugin.start(conf)
            t0 = time.perf_counter()
            encode_batch(prepare(items), "json", 1000)
        times.append((time.perf_counter() - t0) / n * 1e6)
    times.sort()
    return times[0], times[len(times) // 2]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    args = ap.parse_args()
    n, rounds = 1000, max(args.requests // 1000, 5)
    # As tollway.worker.main: long-lived objects frozen, young collections rare.
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    print("| plugin | request path, µs (best / median) | in the batch task, µs per entry |")
    print("|---|---|---|")
    for name in ("opentelemetry", "zipkin", "http-logger", "tcp-logger"):
        best, median = await request_path(name, n, rounds)
        if name in ("opentelemetry", "http-logger"):
            bbest, bmedian = await background(name, n, max(rounds // 4, 3))
            later = f"{bbest:.1f} / {bmedian:.1f}"
        else:
            later = "-"
        print(f"| {name} | {best:.2f} / {median:.2f} | {later} |", flush=True)


if __name__ == "__main__":
    uvloop.run(main())
