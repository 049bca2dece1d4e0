"""prometheus: label building, the worker's counts and what a scrape of its files shows."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.plugins.ctx import make_ctx
from tollway.metrics import MetricsExport, render_text
from tollway.plugins.builtin import prometheus
from tollway.plugins.builtin.prometheus import (
    DEFAULT_BUCKETS,
    PrometheusConf,
    Recorder,
    host_pattern,
    node_ip,
    parse_attr,
    status_key,
)
from tollway.plugins.kit import RequestContext
from tollway.plugins.registry import load_registry


def routed(
    *,
    status: int = 200,
    route: str = "1",
    name: str | None = None,
    service: str | None = None,
    uri: str = "/hello",
    hosts: tuple[str, ...] | None = None,
    host: str = "example.com",
    consumer: str | None = None,
    upstream: str | None = "127.0.0.1:1980",
    start: float = 0.0,
    upstream_time: float | None = None,
) -> RequestContext:
    ctx = make_ctx(uri, host=host, headers={"Host": host, "User-Agent": "t"})
    ctx.route_id = route
    ctx.route_name = name
    ctx.service_id = service
    ctx.matched_uri = uri
    ctx.route_hosts = hosts
    ctx.consumer_name = consumer
    ctx.upstream_addr = upstream
    ctx.resp_status = status
    ctx.start_time = start
    ctx.upstream_response_time = upstream_time
    return ctx


# -- labels ---------------------------------------------------------------------------------


def test_status_labels_of_a_routed_request() -> None:
    ctx = routed(service="s1", consumer="jack", upstream="10.0.0.7:8080")
    assert status_key(ctx, False) == (200, "1", "/hello", "", "s1", "jack", "10.0.0.7")


def test_prefer_name_uses_the_route_name_when_there_is_one() -> None:
    assert status_key(routed(name="hello-route"), True)[1] == "hello-route"
    assert status_key(routed(name=None), True)[1] == "1"
    assert status_key(routed(name="hello-route"), False)[1] == "1"


def test_no_route_gives_empty_labels() -> None:
    ctx = make_ctx("/nope")
    ctx.resp_status = 404
    assert status_key(ctx, False) == (404, "", "", "", "", "", "")


def test_no_status_is_client_closed() -> None:
    assert status_key(routed(status=0), False)[0] == 499


def test_matched_host_is_the_route_pattern() -> None:
    assert host_pattern(None, "a.foo.com") == ""
    assert host_pattern(("foo.com",), "foo.com") == "foo.com"
    assert host_pattern(("bar.com", "*.foo.com"), "a.foo.com") == "*.foo.com"
    assert host_pattern(("*",), "anything.org") == "*"
    assert host_pattern(("foo.com:8080",), "foo.com") == "foo.com:8080"
    ctx = routed(hosts=("*.foo.com",), host="api.foo.com")
    assert status_key(ctx, False)[3] == "*.foo.com"


def test_node_is_the_ip_without_port() -> None:
    assert node_ip("127.0.0.1:1980") == "127.0.0.1"
    assert node_ip("[::1]:80") == "::1"
    assert node_ip("::1:80") == "::1"
    assert node_ip(None) == ""


def test_request_length_counts_line_headers_and_body() -> None:
    ctx = make_ctx("/a?b=1", headers={"Host": "x"})
    # "GET /a?b=1 HTTP/1.1\r\n" + "Host: x\r\n" + "\r\n"
    assert ctx.request_length == 21 + 9 + 2
    ctx.request_body_bytes = 10
    assert ctx.request_length == 42


# -- plugin_attr ----------------------------------------------------------------------------


def test_attr_defaults_are_apisix_defaults() -> None:
    attr = parse_attr(None)
    assert (attr.export_addr.ip, attr.export_addr.port) == ("127.0.0.1", 9091)
    assert attr.export_uri == "/apisix/prometheus/metrics"
    assert attr.metric_prefix == "apisix_"
    assert attr.buckets == tuple(float(b) for b in DEFAULT_BUCKETS)


def test_attr_custom_and_invalid() -> None:
    attr = parse_attr(
        {"export_addr": {"ip": "0.0.0.0", "port": 9092}, "default_buckets": [50, 5, 5]}
    )
    assert attr.export_addr.port == 9092 and attr.buckets == (5.0, 50.0)
    with pytest.raises(ValueError, match=r"plugin_attr\.prometheus"):
        parse_attr({"export_addr": {"port": 0}})


def test_registered_with_apisix_priority_and_policy() -> None:
    reg = load_registry(["prometheus"])
    plugin = reg.get("prometheus")
    assert plugin is not None and plugin.priority == 500 and plugin.run_policy == "prefer_route"
    assert reg.decode_conf("prometheus", {"prefer_name": True}).prefer_name is True


# -- counts through files to a scrape ------------------------------------------------------


class Scrape:
    """The export text of a directory, parsed by prometheus-client's own parser (which names
    counter samples ``*_total``; the text itself has APISIX's names)."""

    def __init__(self, directory: Path) -> None:
        files = [str(p) for p in directory.glob("*.db")]
        self.text = render_text(MultiProcessCollector.merge(files, accumulate=True))
        self.samples = [s for f in text_string_to_metric_families(self.text) for s in f.samples]

    def value(self, sample: str, **labels: str) -> float:
        for s in self.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
        raise AssertionError(f"no {sample} {labels} in:\n{self.text}")


def test_recorded_requests_reach_the_export(tmp_path: Path) -> None:
    rec = Recorder(str(tmp_path))
    for _ in range(3):  # 30 ms in all, 20 of them upstream
        ctx = routed(start=time.time() - 0.030, upstream_time=0.020)
        ctx.bytes_sent = 100
        rec.record(ctx, False)
    rec.record(routed(status=502, upstream=None, start=time.time()), False)
    rec.flush()
    m = Scrape(tmp_path)
    text = m.text
    assert (
        'apisix_http_status{code="200",route="1",matched_uri="/hello",matched_host="",'
        'service="",consumer="",node="127.0.0.1"} 3.0\n'
    ) in text
    assert m.value("apisix_http_status_total", code="502", node="") == 1
    req = {"type": "request", "route": "1", "node": "127.0.0.1"}
    assert m.value("apisix_http_latency_count", **req) == 3
    assert m.value("apisix_http_latency_bucket", le="20.0", **req) == 0
    assert m.value("apisix_http_latency_bucket", le="50.0", **req) == 3
    up = {"type": "upstream", "route": "1", "node": "127.0.0.1"}
    assert m.value("apisix_http_latency_bucket", le="20.0", **up) == 3
    own = {"type": "apisix", "route": "1", "node": "127.0.0.1"}
    assert m.value("apisix_http_latency_bucket", le="10.0", **own) == 0
    assert m.value("apisix_http_latency_bucket", le="20.0", **own) == 3
    assert m.value("apisix_http_latency_bucket", le="+Inf", **own) == 3
    assert 29 < m.value("apisix_http_latency_sum", **req) / 3 < 100
    # No upstream answered the 502: no upstream series for its node, as in APISIX.
    assert 'type="upstream",route="1",service="",consumer="",node=""' not in text
    length = routed().request_length
    assert m.value("apisix_bandwidth_total", type="ingress", node="127.0.0.1") == 3 * length
    assert m.value("apisix_bandwidth_total", type="egress", node="127.0.0.1") == 300


def test_flush_writes_totals_so_a_late_flush_loses_nothing(tmp_path: Path) -> None:
    rec = Recorder(str(tmp_path))
    rec.record(routed(), False)
    rec.flush()
    rec.record(routed(), False)
    rec.record(routed(), False)
    rec.flush()
    rec.flush()  # nothing changed: nothing written
    assert Scrape(tmp_path).value("apisix_http_status_total", code="200") == 3


def test_metric_prefix(tmp_path: Path) -> None:
    rec = Recorder(str(tmp_path), prefix="gw_")
    rec.record(routed(), False)
    rec.flush()
    assert Scrape(tmp_path).value("gw_http_status_total", code="200") == 1


def test_dead_workers_totals_are_folded_into_the_archive(tmp_path: Path) -> None:
    export = MetricsExport(parse_attr(None), tmp_path)
    export.open()
    key = mmap_key("apisix_http_status", "apisix_http_status", ["code"], ["200"], "h")
    for pid, n in ((111, 2.0), (222, 5.0)):
        f = MmapedDict(str(tmp_path / f"counter_{pid}.db"))
        f.write_value(key, n, 0.0)
        f.close()
    export.worker_exited(111)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_222.db", "counter_archive.db"]
    assert Scrape(tmp_path).value("apisix_http_status_total", code="200") == 7
    export.worker_exited(222)
    assert [p.name for p in tmp_path.iterdir()] == ["counter_archive.db"]
    assert Scrape(tmp_path).value("apisix_http_status_total", code="200") == 7
    export.close()
    assert not tmp_path.exists()


def test_a_request_is_counted_in_the_series_of_its_own_labels(tmp_path: Path) -> None:
    """record finds a series by what the labels are made of (memoised): requests that differ
    in any label input land in different series, equal ones in the same."""
    rec = Recorder(str(tmp_path))
    hosts = ("*.foo.com", "bar.com")
    for ctx in (
        routed(hosts=hosts, host="a.foo.com"),
        routed(hosts=hosts, host="b.foo.com"),  # the same pattern: the same series
        routed(hosts=hosts, host="bar.com"),
        routed(status=404),
        routed(consumer="jack"),
        routed(upstream="127.0.0.1:1981"),  # another port, the same node label
        routed(name="r1"),
    ):
        rec.record(ctx, False)
    rec.record(routed(name="r1"), True)
    rec.flush()
    m = Scrape(tmp_path)
    assert m.value("apisix_http_status_total", matched_host="*.foo.com") == 2
    assert m.value("apisix_http_status_total", matched_host="bar.com") == 1
    assert m.value("apisix_http_status_total", code="404") == 1
    assert m.value("apisix_http_status_total", consumer="jack") == 1
    assert m.value("apisix_http_status_total", route="r1") == 1
    plain = {"code": "200", "route": "1", "matched_host": "", "consumer": ""}
    assert m.value("apisix_http_status_total", node="127.0.0.1", **plain) == 2


def test_the_gateways_share_is_never_below_zero(tmp_path: Path) -> None:
    """APISIX: request latency less upstream latency, 0 when the clocks make it negative."""
    rec = Recorder(str(tmp_path))
    rec.record(routed(start=time.time() - 0.005, upstream_time=0.050), False)
    rec.flush()
    own = {"type": "apisix", "route": "1", "node": "127.0.0.1"}
    m = Scrape(tmp_path)
    assert m.value("apisix_http_latency_bucket", le="1.0", **own) == 1
    assert m.value("apisix_http_latency_sum", **own) == 0


def test_answered_and_unanswered_requests_of_one_group(tmp_path: Path) -> None:
    """Requests with and without an upstream answer in one group (same route and node): the
    upstream histogram counts the answered ones; the gateway's own share is the request's
    latency less the upstream's, or all of it when no upstream answered."""
    rec = Recorder(str(tmp_path))
    now = time.time()
    rec.scheduled = True  # (a worker with its flush timer pending: no flush per request)
    n = 30
    for i in range(n):
        up = None if i % 3 == 0 else 0.0015
        ctx = routed(start=now - 0.030, upstream_time=up, status=200 if up else 502)
        ctx.bytes_sent = 7
        rec.record(ctx, False)
    rec.flush()
    m = Scrape(tmp_path)
    local = len(range(0, n, 3))
    req = {"type": "request", "route": "1", "node": "127.0.0.1"}
    assert m.value("apisix_http_latency_count", **req) == n
    assert m.value("apisix_http_latency_bucket", le="20.0", **req) == 0
    up = {"type": "upstream", "route": "1", "node": "127.0.0.1"}
    assert m.value("apisix_http_latency_count", **up) == n - local
    assert m.value("apisix_http_latency_bucket", le="1.0", **up) == 0
    assert m.value("apisix_http_latency_bucket", le="2.0", **up) == n - local
    assert m.value("apisix_http_latency_sum", **up) == pytest.approx(1.5 * (n - local))
    own = {"type": "apisix", "route": "1", "node": "127.0.0.1"}
    assert m.value("apisix_http_latency_count", **own) == n
    assert m.value("apisix_http_latency_bucket", le="20.0", **own) == 0
    # own share: 30 ms (and the test's time) less the upstream's 1.5 when it answered
    least = 28.5 * (n - local) + 30 * local
    assert least <= m.value("apisix_http_latency_sum", **own) < least + 20 * n
    assert m.value("apisix_http_status_total", code="502") == local
    assert m.value("apisix_bandwidth_total", type="egress", node="127.0.0.1") == 7 * n
    length = routed().request_length
    assert m.value("apisix_bandwidth_total", type="ingress", node="127.0.0.1") == length * n


def test_buckets_are_those_of_a_search_whatever_the_latencies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upstream's and the gateway's buckets are taken from the request's when they must be
    the same (``Recorder.logger``): every one is what a search of the bounds gives, on the
    bounds themselves, between them, an upstream slower than the request (clocks) and none."""
    from bisect import bisect_left

    rec = Recorder(str(tmp_path))
    rec.scheduled = True
    bounds = tuple(float(b) for b in DEFAULT_BUCKETS)
    values = [0.0, 0.4, 1.0, 1.5, 2.0, 4.99, 5.0, 19.0, 20.0, 20.5, 999.0, 60000.0, 70000.0]
    want: dict[str, list[int]] = {k: [0] * (len(bounds) + 1) for k in ("req", "up", "own")}
    now = time.time()
    monkeypatch.setattr(prometheus, "_now", lambda: now)
    log = rec.logger(False)
    for total in values:
        for up in (None, *values):
            ctx = routed(upstream_time=None if up is None else up / 1000.0)
            ctx.start_time = now - total / 1000.0
            log(PrometheusConf(), ctx)
            latency = (now - ctx.start_time) * 1000.0  # as the recorder computed it
            want["req"][bisect_left(bounds, latency)] += 1
            if up is None:
                want["own"][bisect_left(bounds, latency)] += 1
            else:
                u = ctx.upstream_response_time * 1000.0  # type: ignore[operator]
                want["up"][bisect_left(bounds, u)] += 1
                want["own"][bisect_left(bounds, latency - u if latency > u else 0.0)] += 1
    (g,) = rec.groups.values()
    request, upstream, apisix, *_ = g.totals()
    assert (request, upstream, apisix) == (want["req"], want["up"], want["own"])


def test_a_flush_that_fails_is_made_good_by_the_next(tmp_path: Path) -> None:
    """The directory is gone at the first flush (a full or lost disk): nothing is lost, the
    next flush writes every total, the request's body bytes in its ingress too."""
    directory = tmp_path / "later"
    rec = Recorder(str(directory))
    rec.scheduled = True
    ctx = routed(upstream_time=0.0001, start=time.time() - 0.0002)
    ctx.request_body_bytes = 10
    ctx.bytes_sent = 5
    rec.record(ctx, False)
    rec.flush()  # fails: no directory
    assert not directory.exists()
    directory.mkdir()
    rec.flush()  # no request since: the failed flush's series are written now
    m = Scrape(directory)
    assert m.value("apisix_http_status_total", code="200") == 1
    length = routed().request_length + 10
    assert m.value("apisix_bandwidth_total", type="ingress", node="127.0.0.1") == length
    assert m.value("apisix_bandwidth_total", type="egress", node="127.0.0.1") == 5
    assert m.value("apisix_http_latency_count", type="upstream", node="127.0.0.1") == 1
