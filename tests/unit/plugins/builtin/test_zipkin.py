from __future__ import annotations

from typing import Any

import pytest

from tests.unit.plugins.ctx import make_ctx
from tollway.errors import ConfigError
from tollway.plugins.builtin.zipkin import B3Error, Zipkin, parse_b3, valid_context
from tollway.plugins.registry import load_registry

REG = load_registry()
T, S = "463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312"


def test_parse_b3() -> None:
    assert parse_b3("0") == (None, None, "0", None)
    assert parse_b3(f"{T}-{S}") == (T, S, None, None)
    assert parse_b3(f"{T}-{S}-1-{S}") == (T, S, "1", S)
    for bad in (T, f"-{S}", f"{T}-"):
        with pytest.raises(B3Error):
            parse_b3(bad)


def test_valid_context() -> None:
    assert valid_context(T, S, None) and valid_context(T[:16], S, S)
    assert not valid_context(None, S, None)
    assert not valid_context(T[:20], S, None)
    assert not valid_context("x" * 32, S, None)
    assert not valid_context(T, S[:8], None)
    assert not valid_context(T, S, "nothex!!nothex!!")


@pytest.mark.parametrize(
    "raw",
    [
        {"sample_ratio": 1},
        {"endpoint": "http://z.test/api/v2/spans"},
        {"endpoint": "http://z.test", "sample_ratio": 0},
        {"endpoint": "http://z.test", "sample_ratio": 1, "span_version": 3},
        {"endpoint": "http://z.test", "sample_ratio": 1, "server_addr": "host"},
    ],
)
def test_schema_rejects(raw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="plugin zipkin"):
        REG.decode_conf("zipkin", raw)


def test_unsampled_request_tells_the_upstream_its_request_span() -> None:
    plugin = Zipkin()
    conf = REG.decode_conf("zipkin", {"endpoint": "http://z.test", "sample_ratio": 0.00001})
    ctx = make_ctx("/", headers={"x-b3-traceid": T, "x-b3-spanid": S, "x-b3-sampled": "0"})
    assert plugin.rewrite(conf, ctx) is None
    plugin.access(conf, ctx)
    h = ctx.headers
    assert (h["x-b3-traceid"], h["x-b3-parentspanid"], h["x-b3-sampled"]) == (T, S, "0")
    assert h["x-b3-spanid"] != S


def test_set_ngx_var_from_plugin_attr() -> None:
    plugin = Zipkin()
    plugin.init({"set_ngx_var": True})
    conf = REG.decode_conf("zipkin", {"endpoint": "http://z.test", "sample_ratio": 1})
    ctx = make_ctx("/", headers={"x-b3-traceid": T, "x-b3-spanid": S})
    plugin.rewrite(conf, ctx)
    assert ctx.var("zipkin_trace_id") == T
    span = ctx.var("zipkin_span_id")
    assert ctx.var("zipkin_context_traceparent") == f"00-{T}-{span}-01"
