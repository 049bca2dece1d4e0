"""Per-request cost of the prometheus plugin's log phase (run on demand, not a test).

    .venv/bin/python bench/prometheus.py [--requests 200000] [--reps 5]

Compares, in one process and one run, what one finished request costs to record:

* baseline: prometheus-client's own Counter/Histogram in multiprocess mode, with the label
  children looked up once and cached (the cheapest way to use them): APISIX's 1 status + 3 latency
  + 2 bandwidth updates per request;
* tollway: ``Prometheus.log`` (label tuple, one dict probe, bucket search, integer adds), with
  its once-a-second flush to the same kind of files measured separately and amortised.

Prints the median per-request microseconds over ``--reps`` and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))


def make_ctx():  # type: ignore[no-untyped-def]
    from tollway.plugins.kit import RequestContext

    headers = [
        (b"Host", b"api.example.com"),
        (b"User-Agent", b"wrk"),
        (b"Accept", b"*/*"),
        (b"Connection", b"keep-alive"),
    ]
    ctx = RequestContext(
        "GET", "/api/v1/items/42", "/api/v1/items/42", "", headers, "api.example.com",
        "127.0.0.1", 50000, "127.0.0.1", 9080, "http", time.time(),
    )  # fmt: skip
    ctx.route_id = "1"
    ctx.matched_uri = "/api/v1/*"
    ctx.upstream_addr = "127.0.0.1:1980"
    ctx.resp_status = 200
    ctx.bytes_sent = 512
    ctx.upstream_response_time = 0.0004
    return ctx


def bench_tollway(n: int, directory: str) -> tuple[float, float]:
    from tollway.plugins.builtin.prometheus import Prometheus, PrometheusConf

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    plugin = Prometheus()
    plugin.init({})
    assert plugin.recorder is not None
    plugin.recorder.scheduled = True  # no loop here: flush by hand below
    conf = PrometheusConf()
    ctx = make_ctx()
    log = plugin.log
    t = time.perf_counter()
    for _ in range(n):
        ctx.start_time = t  # any recent time: latency ~ elapsed run time
        log(conf, ctx)
    per_request = (time.perf_counter() - t) / n
    plugin.recorder.flush()  # the first flush also builds the series' file keys
    plugin.recorder.scheduled = True
    log(conf, ctx)
    t = time.perf_counter()
    plugin.recorder.flush()
    flush = time.perf_counter() - t
    return per_request, flush


def bench_client(n: int) -> float:
    from prometheus_client import Counter, Histogram

    from tollway.plugins.builtin.prometheus import DEFAULT_BUCKETS, GROUP_LABELS, STATUS_LABELS

    status = Counter("b_http_status", "x", STATUS_LABELS, registry=None)
    latency = Histogram("b_http_latency", "x", GROUP_LABELS, buckets=DEFAULT_BUCKETS, registry=None)
    bandwidth = Counter("b_bandwidth", "x", GROUP_LABELS, registry=None)
    group = ("1", "", "", "127.0.0.1")
    s = status.labels("200", "1", "/api/v1/*", "", "", "", "127.0.0.1")
    req, up, own = (latency.labels(t, *group) for t in ("request", "upstream", "apisix"))
    ing, egr = (bandwidth.labels(t, *group) for t in ("ingress", "egress"))
    t = time.perf_counter()
    for _ in range(n):
        s.inc()
        req.observe(0.6)
        up.observe(0.4)
        own.observe(0.2)
        ing.inc(120)
        egr.inc(512)
    return (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        # prometheus-client picks its value class from the environment when first imported.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = d
        tollway_us: list[float] = []
        client_us: list[float] = []
        flush_ms: list[float] = []
        for _ in range(args.reps):
            per, flush = bench_tollway(args.requests, d)
            tollway_us.append(per * 1e6)
            flush_ms.append(flush * 1e3)
            client_us.append(bench_client(args.requests // 4) * 1e6)
    t = statistics.median(tollway_us)
    c = statistics.median(client_us)
    f = statistics.median(flush_ms)
    print(f"| what | us per request (median of {args.reps}) |")
    print("|---|---|")
    print(f"| prometheus-client multiprocess, cached children (baseline) | {c:.2f} |")
    print(f"| tollway prometheus log phase | {t:.2f} ({t / c:.1%} of baseline) |")
    print(f"| tollway flush of one changed series group (at most once a second) | {f:.3f} ms |")


if __name__ == "__main__":
    main()
