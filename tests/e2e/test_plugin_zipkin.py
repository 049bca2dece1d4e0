"""zipkin through the real process: a Zipkin receiver gets v2 JSON spans; the upstream shows the
B3 headers it got."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway, wait_until
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: v2
    uri: /v2
    plugins:
      zipkin: {endpoint: "http://%(col)s/api/v2/spans", sample_ratio: 1, service_name: edge}
    upstream: {nodes: {"%(up)s": 1}}
  - id: v1
    uri: /v1
    plugins:
      zipkin:
        endpoint: "http://%(col)s/api/v2/spans"
        sample_ratio: 1
        span_version: 1
        server_addr: 10.1.2.3
    upstream: {nodes: {"%(up)s": 1}}
  - id: rare
    uri: /rare
    plugins:
      zipkin: {endpoint: "http://%(col)s/api/v2/spans", sample_ratio: 0.00001}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""

TRACE = "463ac35c9f6413ad48485a3953bb6124"
CLIENT_SPAN = "a2fb4a1d1a96d312"


@pytest.fixture(scope="module")
def collector() -> Iterator[Upstream]:
    up = Upstream("zipkin").start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream, collector: Upstream) -> Gateway:
    return standalone_gateway(CONFIG % {"up": upstream.addr, "col": collector.addr})


def spans_of(collector: Upstream) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in list(collector.requests):
        if r["path"] == "/api/v2/spans":
            assert r["headers"]["content-type"] == "application/json"
            out += json.loads(r["body"])
    return out


def trace_spans(collector: Upstream, trace_id: str, n: int) -> dict[str, dict[str, Any]]:
    def found() -> dict[str, dict[str, Any]] | None:
        got = {s["name"]: s for s in spans_of(collector) if s["traceId"] == trace_id}
        return got if len(got) >= n else None

    spans: dict[str, dict[str, Any]] = wait_until(found, timeout=15)
    return spans


def b3_sent(r: requests.Response) -> dict[str, str]:
    return {k: v for k, v in r.json()["headers"].items() if k.startswith("x-b3-") or k == "b3"}


def test_v2_spans_continue_the_client_trace(gw: Gateway, collector: Upstream) -> None:
    r = requests.get(
        gw.url("/v2?q=1"),
        headers={"X-B3-TraceId": TRACE, "X-B3-SpanId": CLIENT_SPAN, "X-B3-Sampled": "1"},
        timeout=5,
    )
    assert r.status_code == 200
    spans = trace_spans(collector, TRACE, 3)
    assert set(spans) == {"apisix.request", "apisix.proxy", "apisix.response_span"}
    req, proxy = spans["apisix.request"], spans["apisix.proxy"]
    assert req["parentId"] == CLIENT_SPAN and req["kind"] == "SERVER"
    assert proxy["parentId"] == req["id"] == spans["apisix.response_span"]["parentId"]
    assert b3_sent(r) == {
        "x-b3-traceid": TRACE,
        "x-b3-spanid": proxy["id"],
        "x-b3-parentspanid": req["id"],
        "x-b3-sampled": "1",
    }
    assert req["tags"] == {
        "component": "apisix",
        "http.method": "GET",
        "http.url": "/v2?q=1",
        "http.status_code": "200",
        "apisix.response_source": "upstream",
    }
    assert req["localEndpoint"]["serviceName"] == "edge"
    assert req["localEndpoint"]["ipv4"] == "127.0.0.1" and req["localEndpoint"]["port"] == gw.port
    assert req["remoteEndpoint"]["ipv4"] == "127.0.0.1"
    assert isinstance(req["timestamp"], int) and req["duration"] >= proxy["duration"] >= 0
    assert proxy["timestamp"] == req["timestamp"]


def test_v1_spans_and_single_b3_header(gw: Gateway, collector: Upstream) -> None:
    r = requests.get(gw.url("/v1"), headers={"b3": f"{TRACE[:16]}-{CLIENT_SPAN}-d"}, timeout=5)
    assert r.status_code == 200
    sent = b3_sent(r)
    assert "b3" not in sent  # APISIX sends the multi headers instead
    assert sent["x-b3-traceid"] == TRACE[:16] and sent["x-b3-sampled"] == "1"
    assert sent["x-b3-flags"] == "1"  # debug
    spans = trace_spans(collector, TRACE[:16], 5)
    assert set(spans) == {
        "apisix.request",
        "apisix.rewrite",
        "apisix.access",
        "apisix.proxy",
        "apisix.body_filter",
    }
    req = spans["apisix.request"]
    assert req["parentId"] == CLIENT_SPAN
    for name in ("apisix.rewrite", "apisix.access", "apisix.proxy"):
        assert spans[name]["parentId"] == req["id"]
    assert spans["apisix.body_filter"]["parentId"] == spans["apisix.proxy"]["id"]
    assert sent["x-b3-spanid"] == spans["apisix.proxy"]["id"]
    assert req["localEndpoint"]["ipv4"] == "10.1.2.3"


def test_sampling_decisions_and_bad_b3(gw: Gateway, collector: Upstream) -> None:
    # sampled 0 from the client: nothing reported, the upstream is told "0"
    unsampled = "1" * 32
    r = requests.get(gw.url("/v2"), headers={"b3": f"{unsampled}-{CLIENT_SPAN}-0"}, timeout=5)
    sent = b3_sent(r)
    assert sent["x-b3-sampled"] == "0" and sent["x-b3-traceid"] == unsampled
    assert sent["x-b3-parentspanid"] == CLIENT_SPAN  # the request span's parent
    # a tiny ratio samples nothing on its own, X-B3-Flags: 1 forces it
    r = requests.get(gw.url("/rare"), timeout=5)
    assert b3_sent(r)["x-b3-sampled"] == "0"
    forced = "2" * 32
    r = requests.get(
        gw.url("/rare"),
        headers={"X-B3-TraceId": forced, "X-B3-SpanId": CLIENT_SPAN, "X-B3-Flags": "1"},
        timeout=5,
    )
    assert b3_sent(r)["x-b3-sampled"] == "1"
    trace_spans(collector, forced, 3)
    assert not [s for s in spans_of(collector) if s["traceId"] == unsampled]
    # an invalid trace id is ignored (a new trace); a b3 without a span id is a 400
    r = requests.get(gw.url("/v2"), headers={"X-B3-TraceId": "xyz"}, timeout=5)
    assert len(b3_sent(r)["x-b3-traceid"]) == 32
    assert requests.get(gw.url("/v2"), headers={"b3": TRACE}, timeout=5).status_code == 400
