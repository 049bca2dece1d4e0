"""Router benchmark (run on demand, not a test): `.venv/bin/python bench/router.py [--quick]`.

Two realistic route sets per size N:
* radixtree_host_uri (APISIX's default): 40% static paths, 20% prefixes, 20% exact hosts
  (each with /api/* and /health), 20% wildcard hosts (*.tN.example.org with /*);
* radixtree_uri_with_parameter: 40% static, 20% prefixes, 40% parameter paths.

For each scenario it reports matches/s (batch loop) and the p99 of single matches, and the ratio
against the same scenario at 10 routes (the baseline measured in the same run). Then: full build
time and memory per route (tracemalloc) at the largest size, and the time to apply one change
(modify, add, delete) to the largest router. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from tollway.router import Router, RouteSpec, build_router


class Req:
    __slots__ = ("host", "method", "path", "remote_addr")

    def __init__(self, path: str, host: str = "gw.local", method: str = "GET") -> None:
        self.path = path
        self.host = host
        self.method = method
        self.remote_addr = "10.0.0.1"

    def var(self, name: str) -> Any:
        return None


GET_POST = frozenset({"GET", "POST"})


def host_uri_routes(n: int) -> tuple[list[RouteSpec], dict[str, list[Req]]]:
    specs: list[RouteSpec] = []
    reqs: dict[str, list[Req]] = {"static": [], "prefix": [], "host": [], "wildcard host": []}
    for i in range(n):
        kind = i % 10
        if kind < 4:
            specs.append(RouteSpec(f"s{i}", (f"/api/v1/svc{i}/items",), methods=GET_POST))
            reqs["static"].append(Req(f"/api/v1/svc{i}/items"))
        elif kind < 6:
            specs.append(RouteSpec(f"p{i}", (f"/static/app{i}/*",)))
            reqs["prefix"].append(Req(f"/static/app{i}/js/main.{i}.js"))
        elif kind < 8:
            host = f"tenant{i}.example.com"
            specs.append(RouteSpec(f"h{i}", ("/api/*", "/health"), hosts=(host,)))
            reqs["host"].append(Req(f"/api/orders/{i}", host=host))
        else:
            specs.append(RouteSpec(f"w{i}", ("/*",), hosts=(f"*.t{i}.example.org",)))
            reqs["wildcard host"].append(Req("/index.html", host=f"www.t{i}.example.org"))
    return specs, reqs


def param_routes(n: int) -> tuple[list[RouteSpec], dict[str, list[Req]]]:
    specs: list[RouteSpec] = []
    reqs: dict[str, list[Req]] = {"static (param kind)": [], "prefix (param kind)": [], "param": []}
    for i in range(n):
        kind = i % 5
        if kind < 2:
            specs.append(RouteSpec(f"s{i}", (f"/api/v1/svc{i}/items",)))
            reqs["static (param kind)"].append(Req(f"/api/v1/svc{i}/items"))
        elif kind < 3:
            specs.append(RouteSpec(f"p{i}", (f"/static/app{i}/*",)))
            reqs["prefix (param kind)"].append(Req(f"/static/app{i}/css/site.css"))
        else:
            specs.append(RouteSpec(f"u{i}", (f"/svc{i}/users/:id/orders/:oid",)))
            reqs["param"].append(Req(f"/svc{i}/users/{i * 7}/orders/{i * 13}"))
    return specs, reqs


def measure(router: Router, reqs: list[Req], count: int, rounds: int) -> tuple[float, float]:
    """(matches per second, p99 microseconds) over `count` requests drawn from `reqs`.

    Like the gateway, each match gets a freshly decoded path string (its hash not yet cached) in
    a request view that is hot in cache; the decoding loop alone is timed and subtracted."""
    rnd = random.Random(1)
    sample = [rnd.choice(reqs) for _ in range(count)]
    raw = [(r.path.encode(), r.host.encode(), r.method) for r in sample]
    view = Req("/")
    match = router.match
    for req in sample[:1000]:  # warm up (lazy regex compiles, caches)
        assert match(req) is not None, req.path
    best_match = best_decode = float("inf")
    gc.disable()
    try:
        for _ in range(rounds):
            start = time.perf_counter()
            for path, host, method in raw:
                view.path = path.decode()
                view.host = host.decode()
                view.method = method
                match(view)
            best_match = min(best_match, time.perf_counter() - start)
            start = time.perf_counter()
            for path, host, method in raw:
                view.path = path.decode()
                view.host = host.decode()
                view.method = method
            best_decode = min(best_decode, time.perf_counter() - start)
        clock = time.perf_counter_ns
        times = []
        for path, host, method in raw:
            view.path = path.decode()
            view.host = host.decode()
            view.method = method
            t0 = clock()
            match(view)
            times.append(clock() - t0)
    finally:
        gc.enable()
    times.sort()
    return count / (best_match - best_decode), times[int(len(times) * 0.99)] / 1000


def measure_floor(n: int, count: int, rounds: int) -> tuple[float, float]:
    """A plain dict lookup of the static paths: what the memory hierarchy alone costs at n."""
    _, reqs = host_uri_routes(n)
    table = {r.path: r for r in reqs["static"]}
    lookup = table.get

    class DictRouter:
        def match(self, req: Req) -> Any:
            return lookup(req.path)

    return measure(DictRouter(), reqs["static"], count, rounds)  # type: ignore[arg-type]


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def change_times(router: Router, specs: list[RouteSpec], repeat: int) -> dict[str, float]:
    """Median milliseconds to apply one change to `router` (built from `specs`)."""
    rnd = random.Random(2)
    out: dict[str, list[float]] = {"modify": [], "add": [], "delete": []}
    for k in range(repeat):
        victim = rnd.choice(specs)
        moved = RouteSpec(victim.id, (f"/moved/{k}/*",), priority=1, hosts=victim.hosts)
        for name, upserts, deletes in [
            ("modify", [moved], []),
            ("modify", [victim], []),
            ("add", [RouteSpec(f"new{k}", (f"/new/{k}",), hosts=victim.hosts)], []),
            ("delete", [], [f"new{k}"]),
        ]:
            start = time.perf_counter()
            router.update(upserts, deletes)
            out[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(v) for name, v in out.items()}


def memory_per_route(kind: str, specs: list[RouteSpec]) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    router = build_router(kind, specs)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(router) == len(specs)
    return (after - before) / len(specs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="sizes up to 10k, fewer matches")
    args = parser.parse_args()
    sizes = [10, 1_000, 10_000] if args.quick else [10, 1_000, 10_000, 100_000]
    count = 20_000 if args.quick else 50_000
    rounds = 3 if args.quick else 5
    largest = sizes[-1]

    warm, warm_reqs = param_routes(10)  # let the CPU clock up before the 10-route baseline
    measure(build_router("radixtree_uri_with_parameter", warm), warm_reqs["param"], count, 5)

    rows: list[tuple[str, int, float, float]] = []
    built: dict[str, tuple[Router, list[RouteSpec]]] = {}
    for n in sizes:
        for kind, make in [
            ("radixtree_host_uri", host_uri_routes),
            ("radixtree_uri_with_parameter", param_routes),
        ]:
            specs, reqs = make(n)
            router = build_router(kind, specs)
            for scenario, scenario_reqs in reqs.items():
                rate, p99 = measure(router, scenario_reqs, count, rounds)
                rows.append((scenario, n, rate, p99))
            if n == largest:
                built[kind] = (router, specs)
            del router
        rows.append(("floor: bare dict.get, static paths", n, *measure_floor(n, count, rounds)))

    base = {s: r for s, n, r, _ in rows if n == sizes[0]}
    print(f"## Router benchmark (Python {sys.version.split()[0]})\n")
    print("| scenario | routes | matches/s | p99 per match (µs) | time ratio vs 10 routes |")
    print("|---|---:|---:|---:|---:|")
    for scenario in dict.fromkeys(s for s, *_ in rows):
        for s, n, rate, p99 in rows:
            if s == scenario:
                print(f"| {s} | {n:,} | {rate:,.0f} | {p99:.2f} | {base[s] / rate:.2f}x |")

    print(f"\n| measure ({largest:,} routes) | radixtree_host_uri | radixtree_uri_with_parameter |")
    print("|---|---:|---:|")
    cells: dict[str, list[str]] = {}
    for kind in ("radixtree_host_uri", "radixtree_uri_with_parameter"):
        router, specs = built[kind]
        build_s = best_of(2 if args.quick else 1, lambda k=kind, s=specs: build_router(k, s))
        cells.setdefault("full build (s)", []).append(f"{build_s:.2f}")
        for name, ms in change_times(router, specs, 50).items():
            cells.setdefault(f"apply one change: {name} (ms, median)", []).append(f"{ms:.3f}")
        mem_specs = specs if args.quick else specs[: largest // 2]
        per_route = memory_per_route(kind, mem_specs)
        cells.setdefault(f"memory per route (bytes, {len(mem_specs):,} routes)", []).append(
            f"{per_route:,.0f}"
        )
    for name, values in cells.items():
        print(f"| {name} | {' | '.join(values)} |")


if __name__ == "__main__":
    main()
