"""opentelemetry through the real process: an OTLP/HTTP receiver decodes the protobuf batches;
the upstream shows the traceparent it got."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.support.gateway import Gateway, StartGateway, free_port, wait_until
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: r-on
    name: traced
    uri: /on/*
    service_id: svc
    plugins:
      opentelemetry:
        sampler: {name: always_on}
        additional_attributes: [arg_tag]
        additional_header_prefix_attributes: ["x-tenant-*", "x-one"]
  - id: failing
    uri: /status/*
    plugins:
      opentelemetry: {sampler: {name: always_on}}
    upstream: {nodes: {"%(up)s": 1}}
  - id: r-off
    uri: /off
    plugins:
      opentelemetry: {sampler: {name: always_off}}
    upstream: {nodes: {"%(up)s": 1}}
  - id: parent
    uri: /parent
    plugins:
      opentelemetry:
        sampler: {name: parent_base, options: {root: {name: always_off}}}
    upstream: {nodes: {"%(up)s": 1}}
  - id: ratio
    uri: /ratio
    plugins:
      opentelemetry: {sampler: {name: trace_id_ratio, options: {fraction: 0.5}}}
    upstream: {nodes: {"%(up)s": 1}}
services:
  - id: svc
    upstream: {nodes: {"%(up)s": 1}}
plugin_metadata:
  - id: opentelemetry
    trace_id_source: random
    resource: {service.name: edge, deployment.environment: test}
    collector: {address: "%(col)s", request_headers: {Authorization: "Bearer otel"}}
    batch_span_processor: {max_export_batch_size: 2, inactive_timeout: 0.2, batch_timeout: 1}
    set_ngx_var: true
#END
"""

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def collector() -> Iterator[Upstream]:
    up = Upstream("otel").start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream, collector: Upstream) -> Gateway:
    return standalone_gateway(CONFIG % {"up": upstream.addr, "col": collector.addr})


def exports(collector: Upstream) -> list[tuple[dict[str, Any], ExportTraceServiceRequest]]:
    out = []
    for r in list(collector.requests):
        if r["path"] == "/v1/traces":
            req = ExportTraceServiceRequest()
            req.ParseFromString(r["body"].encode("latin-1"))
            out.append((r, req))
    return out


def spans_of(collector: Upstream) -> list[Span]:
    return [
        s
        for _, req in exports(collector)
        for rs in req.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]


def wait_span(collector: Upstream, trace_id: str) -> Span:
    def found() -> Span | None:
        for s in spans_of(collector):
            if s.trace_id.hex() == trace_id:
                return s
        return None

    span: Span = wait_until(found, timeout=10)
    return span


def attrs(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


def sent_traceparent(resp: requests.Response) -> tuple[str, str, str]:
    tp = resp.json()["headers"]["traceparent"]
    version, trace_id, span_id, flags = tp.split("-")
    assert version == "00" and len(span_id) == 16
    return trace_id, span_id, flags


def test_client_traceparent_continues_the_trace(gw: Gateway, collector: Upstream) -> None:
    r = requests.get(
        gw.url("/on/x?tag=blue"),
        headers={
            "traceparent": f"00-{TRACE}-{PARENT}-01",
            "tracestate": "vendor=abc",
            "User-Agent": "otel-test",
            "X-Tenant-Id": "t1",
            "X-Tenant-Zone": "eu",
            "X-One": "1",
        },
        timeout=5,
    )
    assert r.status_code == 200
    trace_id, span_id, flags = sent_traceparent(r)
    assert (trace_id, flags) == (TRACE, "01") and span_id != PARENT
    assert r.json()["headers"]["tracestate"] == "vendor=abc"
    span = wait_span(collector, TRACE)
    assert span.span_id.hex() == span_id  # the span the upstream was told about
    assert span.parent_span_id.hex() == PARENT
    assert span.trace_state == "vendor=abc"
    assert span.kind == Span.SPAN_KIND_SERVER
    assert span.name == "GET /on/*"
    assert span.end_time_unix_nano > span.start_time_unix_nano > 0
    a = attrs(span)
    assert a["http.method"] == "GET" and a["http.request.method"] == "GET"
    assert a["http.target"] == "/on/x?tag=blue" and a["url.path"] == "/on/x"
    assert a["http.route"] == "/on/*"
    assert (a["apisix.route_id"], a["apisix.route_name"], a["apisix.service_id"]) == (
        "r-on",
        "traced",
        "svc",
    )
    assert a["user_agent.original"] == "otel-test"
    assert a["http.status_code"] == 200 and a["http.response.status_code"] == 200
    assert a["apisix.response_source"] == "upstream"
    assert a["arg_tag"] == "blue"
    assert (a["x-tenant-id"], a["x-tenant-zone"], a["x-one"]) == ("t1", "eu", "1")
    post, req = next((p, q) for p, q in exports(collector) if TRACE in q.SerializeToString().hex())
    assert post["headers"]["content-type"] == "application/x-protobuf"
    assert post["headers"]["authorization"] == "Bearer otel"
    res = {kv.key: kv.value.string_value for kv in req.resource_spans[0].resource.attributes}
    assert res["service.name"] == "edge" and res["deployment.environment"] == "test"
    assert res["hostname"]


def test_new_trace_without_traceparent_and_error_status(gw: Gateway, collector: Upstream) -> None:
    r = requests.get(gw.url("/status/503"), timeout=5)
    assert r.status_code == 503
    trace_id, _span_id, flags = sent_traceparent(r)
    assert flags == "01" and trace_id != TRACE
    span = wait_span(collector, trace_id)
    assert span.parent_span_id == b""
    assert span.status.code == Status.STATUS_CODE_ERROR
    assert span.status.message == "upstream error: 503"


def test_samplers_decide(gw: Gateway, collector: Upstream) -> None:
    # always_off: the upstream still gets a trace context, flagged not sampled; nothing exported
    off_trace = "11111111111111111111111111111111"
    r = requests.get(gw.url("/off"), headers={"traceparent": f"00-{off_trace}-{PARENT}-01"})
    assert sent_traceparent(r)[0::2] == (off_trace, "00")
    # parent_base follows the parent's flag, and its root sampler without a parent
    yes, no = "22222222222222222222222222222222", "33333333333333333333333333333333"
    r = requests.get(gw.url("/parent"), headers={"traceparent": f"00-{yes}-{PARENT}-01"})
    assert sent_traceparent(r)[0::2] == (yes, "01")
    r = requests.get(gw.url("/parent"), headers={"traceparent": f"00-{no}-{PARENT}-00"})
    assert sent_traceparent(r)[0::2] == (no, "00")
    r = requests.get(gw.url("/parent"), timeout=5)
    root_trace, _, root_flags = sent_traceparent(r)
    assert root_flags == "00"
    # trace_id_ratio 0.5: decided by the trace id's low 64 bits
    low, high = "0" * 16 + "1" * 16, "f" * 32
    r = requests.get(gw.url("/ratio"), headers={"traceparent": f"00-{low}-{PARENT}-00"})
    assert sent_traceparent(r)[0::2] == (low, "01")
    r = requests.get(gw.url("/ratio"), headers={"traceparent": f"00-{high}-{PARENT}-01"})
    assert sent_traceparent(r)[0::2] == (high, "00")
    wait_span(collector, yes)
    wait_span(collector, low)
    exported = {s.trace_id.hex() for s in spans_of(collector)}
    assert not exported & {off_trace, no, root_trace, high}


def test_invalid_traceparent_starts_a_new_trace(gw: Gateway) -> None:
    for bad in (f"00-{'0' * 32}-{PARENT}-01", f"ff-{TRACE}-{PARENT}-01", "00-xyz-01"):
        r = requests.get(gw.url("/on/a"), headers={"traceparent": bad}, timeout=5)
        trace_id, _, flags = sent_traceparent(r)
        assert trace_id not in (TRACE, "0" * 32) and flags == "01"


def test_batches_hold_max_export_batch_size_spans(gw: Gateway, collector: Upstream) -> None:
    before = len(exports(collector))
    traces = [f"{i:032x}" for i in range(0xA0, 0xA5)]
    for t in traces:
        requests.get(gw.url("/on/b"), headers={"traceparent": f"00-{t}-{PARENT}-01"}, timeout=5)
    for t in traces:
        wait_span(collector, t)
    new = exports(collector)[before:]
    sizes = [sum(len(ss.spans) for rs in q.resource_spans for ss in rs.scope_spans) for _, q in new]
    assert max(sizes) <= 2 and sum(sizes) >= 5


ATTR_CONFIG = """
routes:
  - id: r
    uri: /r
    plugins:
      opentelemetry: {sampler: {name: always_on}}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


def test_plugin_attr_when_there_is_no_metadata(
    tmp_path: Path, upstream: Upstream, collector: Upstream
) -> None:
    # APISIX 2.13+ read plugin_attr.opentelemetry from config.yaml; x-request-id is its default
    # trace id source.
    config = {
        "plugin_attr": {
            "opentelemetry": {
                "collector": {"address": collector.addr},
                "batch_span_processor": {"inactive_timeout": 0.2},
            }
        }
    }
    rid = "abcdefabcdefabcdefabcdefabcdef01"
    text = ATTR_CONFIG % {"up": upstream.addr}
    with Gateway(tmp_path, apisix_yaml=text, config=config) as g:
        r = requests.get(g.url("/r"), headers={"X-Request-Id": rid.upper()}, timeout=5)
        assert sent_traceparent(r)[0] == rid
        span = wait_span(collector, rid)
        assert attrs(span)["apisix.route_id"] == "r"


META_CONFIG = """
routes:
  - id: r
    uri: /r
    plugins:
      opentelemetry: {sampler: {name: always_on}}
    upstream: {nodes: {"%(up)s": 1}}
plugin_metadata:
  - id: opentelemetry
    collector: {address: "%(col)s"}
    resource: {service.name: from-metadata}
    batch_span_processor: {inactive_timeout: 0.2}
#END
"""


def test_metadata_wins_over_plugin_attr_and_changes_at_run_time(
    tmp_path: Path, upstream: Upstream, collector: Upstream
) -> None:
    other = Upstream("otel-attr").start()
    try:
        config = {
            "plugin_attr": {
                "opentelemetry": {
                    "collector": {"address": other.addr},
                    "batch_span_processor": {"inactive_timeout": 0.2},
                }
            }
        }
        routes = ATTR_CONFIG % {"up": upstream.addr}
        with Gateway(tmp_path, apisix_yaml=routes, config=config) as g:
            first = sent_traceparent(requests.get(g.url("/r"), timeout=5))[0]
            wait_span(other, first)  # plugin_attr's collector while there is no metadata
            g.write_yaml(META_CONFIG % {"up": upstream.addr, "col": collector.addr})

            def to_metadata_collector() -> str | None:
                trace = sent_traceparent(requests.get(g.url("/r"), timeout=5))[0]
                try:
                    wait_until(lambda: trace in {s.trace_id.hex() for s in spans_of(collector)}, 1)
                except AssertionError:
                    return None
                return trace

            trace = wait_until(to_metadata_collector, timeout=10)
        req = next(
            q for _, q in exports(collector) if bytes.fromhex(trace) in q.SerializeToString()
        )
        res = {kv.key: kv.value.string_value for kv in req.resource_spans[0].resource.attributes}
        assert res["service.name"] == "from-metadata"
        assert trace not in {s.trace_id.hex() for s in spans_of(other)}
    finally:
        other.stop()


def test_a_dead_collector_never_slows_requests(tmp_path: Path, upstream: Upstream) -> None:
    config = {
        "plugin_attr": {
            "opentelemetry": {
                "collector": {"address": f"127.0.0.1:{free_port()}"},
                "batch_span_processor": {"inactive_timeout": 0.1, "max_export_batch_size": 1},
            }
        }
    }
    with Gateway(tmp_path, apisix_yaml=ATTR_CONFIG % {"up": upstream.addr}, config=config) as g:
        for _ in range(20):
            t0 = time.monotonic()
            assert requests.get(g.url("/r"), timeout=5).status_code == 200
            assert time.monotonic() - t0 < 0.5
        wait_until(lambda: "Batch Processor[opentelemetry] failed to process entries" in g.logs())
