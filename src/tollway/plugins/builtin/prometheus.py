"""prometheus (APISIX priority 500, log phase): per-request metrics of every worker.

APISIX's ``http_status``, ``http_latency`` (ms) and ``bandwidth`` series, with its labels. A
worker counts in plain Python (one dict probe and a few integer adds per request) and at most once
per ``FLUSH_INTERVAL`` writes its running totals into its own files of a prometheus-client
multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor for its workers). The
supervisor merges every worker's files when scraped (``tollway.metrics``).

Invariants: a file holds totals since the worker started, never deltas, so a flush that is late
is made good by the next one; without that directory nothing is recorded.

Why not prometheus-client's ``Counter``/``Histogram`` directly: in multiprocess mode every ``inc``
is a locked mmap write plus a getpid call, ~1.5 us; APISIX's six updates per request (1 status,
3 latencies, 2 bandwidths) cost 9-18 us even with the label children cached, a third of a whole
proxied request here; this log phase costs ~1.5 us (``bench/prometheus.py``).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import os
from bisect import bisect_left
from collections.abc import Callable
from time import time as _now
from typing import Any

import msgspec

from tollway.plugins.builtin.prometheus_conf import (
    BY_ID,
    BY_NAME,
    DEFAULT_BUCKETS,
    PrometheusAttr,
    PrometheusConf,
)
from tollway.plugins.kit import Plugin, RequestContext

log = logging.getLogger("tollway.plugins")

ENV_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's name for the directory
_SEEN_MAX = 10_000
FLUSH_INTERVAL = 1.0  # seconds; scrapes are seconds apart, so a second of delay is invisible

STATUS_LABELS = ("code", "route", "matched_uri", "matched_host", "service", "consumer", "node")
GROUP_LABELS = ("type", "route", "service", "consumer", "node")
HELP_STATUS = "HTTP status codes per service in APISIX"
HELP_LATENCY = "HTTP request latency in milliseconds per service in APISIX"
HELP_BANDWIDTH = "Total bandwidth in bytes consumed per service in APISIX"


def parse_attr(attr: dict[str, Any] | None) -> PrometheusAttr:
    """``plugin_attr.prometheus``; ValueError naming the key when it is invalid."""
    try:
        return msgspec.convert(attr or {}, PrometheusAttr, strict=False)
    except msgspec.ValidationError as e:
        raise ValueError(f"plugin_attr.prometheus: {e}") from None


# -- labels (pure) ---------------------------------------------------------------------------


def host_pattern(hosts: tuple[str, ...] | None, host: str) -> str:
    """APISIX's ``matched_host``: the route's host that matched, a wildcard as written
    (``*.foo.com``); "" for a route without hosts."""
    if not hosts:
        return ""
    for h in hosts:
        if h == host or (h[:1] == "*" and host.endswith(h[1:])):
            return h
    # Not matched by name: a ``host:port`` entry, which radixtree compares with the Host header.
    with_port = [h for h in hosts if ":" in h]
    return with_port[0] if len(with_port) == 1 else ""


def node_ip(upstream_addr: str | None) -> str:
    """APISIX's ``node`` label is the balancer's IP, without the port."""
    if not upstream_addr:
        return ""
    ip = upstream_addr.rpartition(":")[0]
    return ip[1:-1] if ip[:1] == "[" else ip


def status_key(ctx: RequestContext, prefer_name: bool) -> tuple[Any, ...]:
    """(code, route, matched_uri, matched_host, service, consumer, node) of a finished request.
    The code stays an int here (the label text is made once per series, at flush)."""
    route_id = ctx.route_id
    if route_id is None:  # no route matched (a global rule's plugin on the 404)
        route = matched_uri = matched_host = service = ""
    else:
        route = (ctx.route_name or route_id) if prefer_name else route_id
        matched_uri = ctx.matched_uri or ""
        hosts = ctx.route_hosts
        matched_host = host_pattern(hosts, ctx.host) if hosts else ""
        service = ctx.service_id or ""
    # No status: the client went away first; nginx logs 499 for that.
    return (
        ctx.resp_status or 499,
        route,
        matched_uri,
        matched_host,
        service,
        ctx.consumer_name or "",
        node_ip(ctx.upstream_addr),
    )


# -- the worker's counts ---------------------------------------------------------------------


class _Series:
    """One ``http_status`` series (a status code and the group's labels) and its requests'
    share of the group's latency histograms and bandwidth: the counts a request adds are its
    series' (one object found by one probe); a flush sums a group's series.

    Most requests have an upstream answer whose time lies in the request's own bucket while
    the gateway's share lies in the first: they count once, in ``fast`` (per request bucket);
    the others count in ``request``, ``upstream`` and ``apisix`` (``_count_apart``)."""

    __slots__ = (
        "apisix",
        "egress",
        "fast",
        "group",
        "ingress",
        "key",
        "labels",
        "request",
        "upstream",
        "written",
    )

    def __init__(self, labels: tuple[str, ...], group: _Group, n_buckets: int) -> None:
        self.labels = labels
        self.group = group
        self.fast = [0] * n_buckets  # per bucket, not cumulative; the last one is +Inf
        self.request = [0] * n_buckets
        self.upstream = [0] * n_buckets
        self.apisix = [0] * n_buckets
        self.ingress = 0  # never 0 once counted: a request has a line (the flush's change test)
        self.egress = 0
        self.written = 0  # ``ingress`` at the last flush
        self.key: str | None = None

    def count(self) -> int:
        return sum(self.fast) + sum(self.request)


class _Group:
    """One (route, service, consumer, node): its series (one per status code), whose counts
    its histograms and bandwidth sum, and its latency sums, added per request in order (so
    the floats are those of one running sum)."""

    __slots__ = ("apisix_sum", "keys", "labels", "request_sum", "series", "upstream_sum")

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.series: list[_Series] = []
        self.request_sum = 0.0
        self.upstream_sum = 0.0
        self.apisix_sum = 0.0
        self.keys: _GroupKeys | None = None

    def totals(self) -> tuple[list[int], list[int], list[int], int, int]:
        """The (request, upstream, apisix) bucket counts, ingress and egress of its series."""
        n = len(self.series[0].fast)
        request, upstream, apisix = [0] * n, [0] * n, [0] * n
        ingress = egress = 0
        for s in self.series:
            fast = s.fast
            for i in range(n):
                request[i] += fast[i] + s.request[i]
                upstream[i] += fast[i] + s.upstream[i]
                apisix[i] += s.apisix[i]
            apisix[0] += sum(fast)
            ingress += s.ingress
            egress += s.egress
        return request, upstream, apisix, ingress, egress


class _GroupKeys:
    """The file keys of a group's samples, made at its first flush."""

    __slots__ = ("apisix", "egress", "ingress", "request", "upstream")

    def __init__(self, names: _Names, labels: tuple[str, ...], bounds: tuple[str, ...]) -> None:
        from prometheus_client.mmap_dict import mmap_key

        def hist(kind: str) -> tuple[list[str], str]:
            values = [kind, *labels]
            name = names.latency
            buckets = [
                mmap_key(name, name + "_bucket", [*GROUP_LABELS, "le"], [*values, le], HELP_LATENCY)
                for le in bounds
            ]
            return buckets, mmap_key(name, name + "_sum", list(GROUP_LABELS), values, HELP_LATENCY)

        def bw(kind: str) -> str:
            name = names.bandwidth
            return mmap_key(name, name, list(GROUP_LABELS), [kind, *labels], HELP_BANDWIDTH)

        self.request = hist("request")
        self.upstream = hist("upstream")
        self.apisix = hist("apisix")
        self.ingress = bw("ingress")
        self.egress = bw("egress")


class _Names:
    __slots__ = ("bandwidth", "latency", "status")

    def __init__(self, prefix: str) -> None:
        self.status = prefix + "http_status"
        self.latency = prefix + "http_latency"
        self.bandwidth = prefix + "bandwidth"


class Recorder:
    """A worker's counts, flushed as totals to ``counter_<pid>.db`` / ``histogram_<pid>.db``
    in ``directory`` (prometheus-client's multiprocess layout, merged by the supervisor)."""

    def __init__(
        self,
        directory: str,
        *,
        prefix: str = "apisix_",
        buckets: tuple[float, ...] = DEFAULT_BUCKETS,
        interval: float = FLUSH_INTERVAL,
    ) -> None:
        from prometheus_client.utils import floatToGoString

        self.directory = directory
        self.names = _Names(prefix)
        self.bounds = tuple(float(b) for b in buckets)
        self.le = (*(floatToGoString(b) for b in self.bounds), "+Inf")
        self.interval = interval
        self.series: dict[tuple[Any, ...], _Series] = {}
        self.seen: dict[tuple[Any, ...], _Series] = {}  # record's memo of series
        self.groups: dict[tuple[str, ...], _Group] = {}
        self.scheduled = False
        self._files: tuple[Any, Any] | None = None
        self._pid = 0
        self._failed = False

    # -- the request path ---------------------------------------------------------------

    def record(self, ctx: RequestContext, prefer_name: bool) -> None:
        """Count a finished request (``log``, for a conf with ``prefer_name`` or not)."""
        self.log(BY_NAME if prefer_name else BY_ID, ctx)

    def log(self, conf: PrometheusConf, ctx: RequestContext) -> None:
        """The plugin's log phase for ``conf`` (the chain calls ``logger``'s function)."""
        self.logger(conf.prefer_name)(conf, ctx)

    def logger(self, prefer_name: bool) -> Callable[[PrometheusConf, RequestContext], None]:
        """The log phase of a conf with ``prefer_name`` or not, made once per conf
        (``Prometheus.phase_method``): one call a request, what the conf decides bound here.

        Per request: one probe finds the series by what its labels are made of (the label
        tuple is made once per series, ``status_key``), then a few integer and float adds to
        that series alone. Measured against appending one row per request and folding the
        rows in bulk with C loops (``map``, ``Counter``): the fold alone cost more (~1.2 us a
        row) than these adds, so the counts are kept up to date here."""
        seen = self.seen
        add_series = self._series
        bounds = self.bounds
        first = bounds[0]
        floors = (-math.inf, *bounds)  # floors[i]: the bound below bucket i

        def log(conf: PrometheusConf, ctx: RequestContext) -> None:
            now = _now()
            key = (
                ctx.resp_status,
                ctx.route_id,
                ctx.matched_uri,
                ctx.service_id,
                ctx.consumer_name,
                ctx.upstream_addr,
                (ctx.route_hosts, ctx.host) if ctx.route_hosts else None,
                ctx.route_name if prefer_name else None,
            )
            s = seen.get(key)
            if s is None:
                s = add_series(ctx, prefer_name, key)
            latency = (now - ctx.start_time) * 1000.0
            i = bisect_left(bounds, latency)
            g = s.group  # (the sums are the group's: added in the requests' order)
            g.request_sum += latency
            up = ctx.upstream_response_time
            if up is None:  # no upstream answer: the gateway's own share is all of it
                s.request[i] += 1
                s.apisix[i] += 1
                g.apisix_sum += latency
            # The upstream's time is part of the request's: above the bucket below the
            # request's, it is in the request's bucket; the gateway's share (APISIX: the
            # request's less the upstream's) is mostly under the first bound (a millisecond
            # by default): one count, no search. (Three comparisons, not a chain: each one
            # then jumps at once, which the interpreter specializes for floats.)
            elif (
                floors[i] < (up := up * 1000.0) and up <= latency and (own := latency - up) <= first
            ):
                s.fast[i] += 1
                g.upstream_sum += up
                g.apisix_sum += own
            else:
                _count_apart(s, bounds, i, latency, up)
            # nginx's $request_length (``request_length``, inline: no call per request)
            n = len(ctx.method) + len(ctx.request_uri) + 14 + ctx.request_body_bytes
            for k, v in ctx.raw_headers:
                n += len(k) + len(v) + 4
            s.ingress += n
            s.egress += ctx.bytes_sent
            if not self.scheduled:
                self._schedule()

        return log

    def _series(self, ctx: RequestContext, prefer_name: bool, seen: tuple[Any, ...]) -> _Series:
        key = status_key(ctx, prefer_name)
        s = self.series.get(key)
        if s is None:
            s = self._add(key)
        if len(self.seen) >= _SEEN_MAX:  # hosts and routes come and go: forget, not grow
            self.seen.clear()
        self.seen[seen] = s
        return s

    def _add(self, key: tuple[Any, ...]) -> _Series:
        code, route, _, _, service, consumer, node = key
        gkey = (route, service, consumer, node)
        group = self.groups.get(gkey)
        if group is None:
            group = self.groups[gkey] = _Group(gkey)
        s = self.series[key] = _Series((str(code), *key[1:]), group, len(self.bounds) + 1)
        group.series.append(s)
        return s

    def _schedule(self) -> None:
        self.scheduled = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (unit tests, interpreter exit): write at once
            self.flush()
            return
        loop.call_later(self.interval, self.flush)

    # -- flushing -----------------------------------------------------------------------

    def flush(self) -> None:
        """Write the totals of every series that changed since the last flush."""
        self.scheduled = False
        changed = [s for s in self.series.values() if s.ingress != s.written]
        if not changed:
            return
        try:
            counters, histograms = self._open()
            groups: dict[int, _Group] = {}
            for s in changed:
                if s.key is None:
                    name = self.names.status
                    s.key = _key(name, name, STATUS_LABELS, s.labels, HELP_STATUS)
                counters.write_value(s.key, float(s.count()), 0.0)
                s.written = s.ingress
                groups[id(s.group)] = s.group
            for g in groups.values():
                self._write_group(g, counters, histograms)
        except OSError as e:  # a full disk must not take requests down; the next flush retries
            if not self._failed:
                log.error("prometheus: cannot write metrics to %s: %s", self.directory, e)
            self._failed = True
            for s in changed:
                s.written = -1
            return
        self._failed = False

    def _write_group(self, g: _Group, counters: Any, histograms: Any) -> None:
        keys = g.keys
        if keys is None:
            keys = g.keys = _GroupKeys(self.names, g.labels, self.le)
        request, upstream, apisix, ingress, egress = g.totals()
        for counts, total, (bucket_keys, sum_key) in (
            (request, g.request_sum, keys.request),
            (upstream, g.upstream_sum, keys.upstream),
            (apisix, g.apisix_sum, keys.apisix),
        ):
            if counts is upstream and not any(counts):
                continue  # APISIX observes the upstream latency only when there was one
            for key, n in zip(bucket_keys, counts, strict=True):
                histograms.write_value(key, float(n), 0.0)
            histograms.write_value(sum_key, total, 0.0)
        counters.write_value(keys.ingress, float(ingress), 0.0)
        counters.write_value(keys.egress, float(egress), 0.0)

    def _open(self) -> tuple[Any, Any]:
        pid = os.getpid()
        if self._files is None or self._pid != pid:
            from prometheus_client.mmap_dict import MmapedDict

            self._pid = pid
            self._files = (
                MmapedDict(os.path.join(self.directory, f"counter_{pid}.db")),
                MmapedDict(os.path.join(self.directory, f"histogram_{pid}.db")),
            )
        return self._files

    def close(self) -> None:
        self.flush()
        if self._files is not None:
            for f in self._files:
                f.close()
            self._files = None


def _count_apart(s: _Series, bounds: tuple[float, ...], i: int, latency: float, up: float) -> None:
    """An answered request whose upstream time is not in its own bucket (``i``), or whose
    gateway share is above the first bound: each histogram's bucket found by a search."""
    own = latency - up if latency > up else 0.0  # APISIX; clocks differ, so never below 0
    s.request[i] += 1
    s.upstream[bisect_left(bounds, up)] += 1
    s.apisix[bisect_left(bounds, own)] += 1
    g = s.group
    g.upstream_sum += up
    g.apisix_sum += own


def _key(metric: str, name: str, labels: tuple[str, ...], values: tuple[str, ...], doc: str) -> str:
    from prometheus_client.mmap_dict import mmap_key

    return mmap_key(metric, name, list(labels), list(values), doc)


# -- what nginx's stub_status gives APISIX ----------------------------------------------------


class ServerStats:
    """A worker's ``http_requests_total`` and ``nginx_http_current_connections{state}``
    (APISIX reads them from nginx's stub_status at each scrape, plugin or not). Written about
    once a second, by the worker's own timer, into its files of the multiprocess directory:
    the request total in a ``sum`` gauge file (kept when the worker exits, so the instance's total
    never goes back), the connection states in a ``livesum`` file (dropped with the worker)."""

    CONNECTION_STATES = ("active", "reading", "writing", "waiting", "accepted", "handled")

    def __init__(self, directory: str, prefix: str) -> None:
        from prometheus_client.mmap_dict import MmapedDict

        pid = os.getpid()
        self._total = MmapedDict(os.path.join(directory, f"gauge_sum_{pid}.db"))
        self._live = MmapedDict(os.path.join(directory, f"gauge_livesum_{pid}.db"))
        name = prefix + "http_requests_total"
        doc = "The total number of client requests since APISIX started"
        self._requests_key = _key(name, name, (), (), doc)
        conn = prefix + "nginx_http_current_connections"
        conn_doc = "Number of HTTP connections"
        self._state_keys = {
            st: _key(conn, conn, ("state",), (st,), conn_doc) for st in self.CONNECTION_STATES
        }

    def write(self, requests: int, connections: dict[str, int]) -> None:
        self._total.write_value(self._requests_key, float(requests), 0.0)
        for st, key in self._state_keys.items():
            self._live.write_value(key, float(connections.get(st, 0)), 0.0)

    def close(self) -> None:
        self._total.close()
        self._live.close()


def server_stats(attr: dict[str, Any]) -> ServerStats | None:
    """The writer for this process, or None when metrics are not exported."""
    directory = os.environ.get(ENV_DIR)
    if not directory:
        return None
    return ServerStats(directory, parse_attr(attr).metric_prefix)


# -- the plugin ------------------------------------------------------------------------------


class Prometheus(Plugin):
    name = "prometheus"
    priority = 500
    schema = PrometheusConf
    run_policy = "prefer_route"  # with both a global rule and the route: only the route's runs

    def __init__(self) -> None:
        self.attr = PrometheusAttr()
        self.recorder: Recorder | None = None

    def init(self, attr: dict[str, Any]) -> None:
        self.attr = parse_attr(attr)
        directory = os.environ.get(ENV_DIR)
        if directory and os.path.isdir(directory):
            self.recorder = Recorder(
                directory, prefix=self.attr.metric_prefix, buckets=self.attr.buckets
            )
            atexit.register(self.recorder.close)  # the last second of counts, at worker exit

    def log(self, conf: PrometheusConf, ctx: RequestContext) -> None:
        rec = self.recorder
        if rec is not None:
            rec.log(conf, ctx)

    def phase_method(self, phase: str, conf: PrometheusConf) -> Any:
        # The recorder counts the request itself (it is made once, at ``init``): no call
        # in between on every request.
        if phase == "log" and self.recorder is not None:
            return self.recorder.logger(conf.prefer_name)
        return getattr(self, phase)

    async def aclose(self) -> None:
        if self.recorder is not None:
            self.recorder.close()


PLUGINS = [Prometheus]
