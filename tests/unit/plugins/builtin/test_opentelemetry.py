from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.unit.plugins.ctx import make_ctx
from tollway.errors import ConfigError
from tollway.plugins.builtin.opentelemetry import (
    Conf,
    Instance,
    OpenTelemetry,
    Sampler,
    build_span,
    collector_url,
    decide,
    export_request,
    parse_traceparent,
    resource_of,
)
from tollway.plugins.registry import load_registry

REG = load_registry()
T, P = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def test_parse_traceparent() -> None:
    assert parse_traceparent(f"00-{T}-{P}-01") == (T, P, True)
    assert parse_traceparent(f"00-{T}-{P}-00") == (T, P, False)
    assert parse_traceparent(f"01-{T}-{P}-03-extra") == (T, P, True)  # a future version
    for bad in (
        None,
        "",
        f"ff-{T}-{P}-01",
        f"00-{'0' * 32}-{P}-01",
        f"00-{T}-{'0' * 16}-01",
        f"00-{T}-{P}-01-extra",
        f"00-{T[:-1]}-{P}-01",
        f"00-{T.upper()}-{P}-01",  # trace-id is lowercase hex (W3C trace context)
        "garbage",
    ):
        assert parse_traceparent(bad) is None


def sampler(raw: dict[str, Any]) -> Sampler:
    return msgspec.convert(raw, Sampler)


def test_samplers() -> None:
    assert decide(sampler({"name": "always_on"}), T, False)
    assert not decide(sampler({}), T, True)  # APISIX's default: always_off
    ratio = sampler({"name": "trace_id_ratio", "options": {"fraction": 0.5}})
    assert decide(ratio, "f" * 16 + "0" * 16, None)
    assert not decide(ratio, "0" * 16 + "f" * 16, None)
    assert not decide(sampler({"name": "trace_id_ratio"}), "0" * 31 + "1", None)
    parent = sampler({"name": "parent_base", "options": {"root": {"name": "always_on"}}})
    assert decide(parent, T, True) and not decide(parent, T, False)
    assert decide(parent, T, None)  # no parent: the root sampler
    assert not decide(sampler({"name": "parent_base"}), T, None)


@pytest.mark.parametrize(
    "raw",
    [
        {"sampler": {"name": "sometimes"}},
        {"sampler": {"name": "trace_id_ratio", "options": {"fraction": 1.5}}},
        {"additional_attributes": [""]},
    ],
)
def test_schema_rejects(raw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="plugin opentelemetry"):
        REG.decode_conf("opentelemetry", raw)


def test_collector_url() -> None:
    assert collector_url("127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert collector_url("https://otel.test") == "https://otel.test/v1/traces"


def test_rewrite_then_span_round_trips_through_protobuf() -> None:
    plugin = OpenTelemetry()
    conf = msgspec.convert({"sampler": {"name": "always_on"}}, Conf)
    ctx = make_ctx("/a?x=1", headers={"traceparent": f"00-{T}-{P}-01"})
    plugin.rewrite(conf, ctx)
    assert ctx.headers["traceparent"].startswith(f"00-{T}-")
    ctx.resp_status = 502
    start = ctx.plugin_state["opentelemetry"]  # type: ignore[index]
    span = build_span(conf, ctx, start, 10**18)
    body = export_request(resource_of(msgspec.convert({}, Instance)), [span])
    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    got = req.resource_spans[0].scope_spans[0].spans[0]
    assert got.trace_id.hex() == T and got.parent_span_id.hex() == P
    assert got.status.message == "apisix error: 502"


def test_metadata_wins_over_plugin_attr() -> None:
    plugin = OpenTelemetry()
    plugin.init({"collector": {"address": "attr:4318"}})
    assert plugin.instance.collector.address == "attr:4318"
    assert plugin.instance.trace_id_source == "x-request-id"  # config-default's
    meta = msgspec.convert({"collector": {"address": "meta:4318"}}, Instance)
    plugin.set_metadata(meta)
    assert plugin.instance is meta and meta.trace_id_source == "random"  # the metadata default
    plugin.set_metadata(None)
    assert plugin.instance.collector.address == "attr:4318"
    asyncio.run(plugin.aclose())


def test_set_ngx_var_and_trace_id_from_x_request_id() -> None:
    plugin = OpenTelemetry()
    plugin.set_metadata(
        msgspec.convert({"set_ngx_var": True, "trace_id_source": "x-request-id"}, Instance)
    )
    conf = msgspec.convert({"sampler": {"name": "always_off"}}, Conf)
    rid = "0af7651916cd43dd8448eb211c80319c"
    ctx = make_ctx("/", headers={"x-request-id": rid.upper()})
    plugin.rewrite(conf, ctx)
    span = ctx.var("opentelemetry_span_id")
    assert ctx.var("opentelemetry_trace_id") == rid
    assert ctx.var("opentelemetry_context_traceparent") == f"00-{rid}-{span}-00"
    assert ctx.headers["traceparent"] == f"00-{rid}-{span}-00"
    bad = make_ctx("/", headers={"x-request-id": "not-a-trace-id"})
    plugin.rewrite(conf, bad)
    assert len(bad.var("opentelemetry_trace_id")) == 32
    assert bad.var("opentelemetry_trace_id") != rid
