from __future__ import annotations

import gzip
from typing import Any

import pytest

from tests.support.clock import Clock, fake_shared_tables
from tests.unit.plugins.ctx import decode, make_ctx
from tollway.errors import ConfigError
from tollway.plugins.builtin import api_breaker as ab
from tollway.plugins.builtin import gzip_compress as gz
from tollway.plugins.kit import RequestContext
from tollway.plugins.registry import load_registry

REG = load_registry()


# -- gzip ---------------------------------------------------------------------------------


def response_ctx(
    headers: dict[str, str], resp: list[tuple[str, str]], status: int = 200
) -> RequestContext:
    ctx = make_ctx(headers=headers)
    ctx.resp_status = status
    ctx.resp_headers = list(resp)
    return ctx


def test_gzip_schema() -> None:
    conf = REG.decode_conf("gzip", {})
    assert (conf.types, conf.min_length, conf.comp_level, conf.http_version) == (
        ["text/html"],
        20,
        1,
        1.1,
    )
    assert REG.decode_conf("gzip", {"types": "*"}).types == "*"
    for bad in (
        {"types": []},
        {"types": "text"},
        {"comp_level": 10},
        {"http_version": 2},
        {"min_length": 0},
    ):
        with pytest.raises(ConfigError, match="plugin gzip err"):
            REG.decode_conf("gzip", bad)


def test_gzip_compresses_streamed_body() -> None:
    plugin, conf = gz.Gzip(), decode(gz.Conf, {"vary": True})
    ctx = response_ctx(
        {"Accept-Encoding": "gzip, br"},
        [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", "100")],
    )
    plugin.header_filter(conf, ctx)
    assert ctx.get_response_header("Content-Encoding") == "gzip"
    assert ctx.get_response_header("Content-Length") is None
    assert ctx.get_response_header("Vary") == "Accept-Encoding"
    body = plugin.body_filter(conf, ctx, b"<p>" * 50, False) + plugin.body_filter(
        conf, ctx, b"end", True
    )
    assert gzip.decompress(body) == b"<p>" * 50 + b"end"


@pytest.mark.parametrize(
    ("req", "resp", "status"),
    [
        ({}, [("Content-Type", "text/html")], 200),
        ({"Accept-Encoding": "gzip;q=0"}, [("Content-Type", "text/html")], 200),
        ({"Accept-Encoding": "gzip"}, [("Content-Type", "application/json")], 200),
        (
            {"Accept-Encoding": "gzip"},
            [("Content-Type", "text/html"), ("Content-Length", "5")],
            200,
        ),
        (
            {"Accept-Encoding": "gzip"},
            [("Content-Type", "text/html"), ("Content-Encoding", "br")],
            200,
        ),
        ({"Accept-Encoding": "gzip"}, [("Content-Type", "text/html")], 500),
        ({"Accept-Encoding": "gzip", "Via": "1.1 proxy"}, [("Content-Type", "text/html")], 200),
    ],
)
def test_gzip_skips(req: dict[str, str], resp: list[tuple[str, str]], status: int) -> None:
    plugin, conf = gz.Gzip(), decode(gz.Conf, {})
    ctx = response_ctx(req, resp, status)
    plugin.header_filter(conf, ctx)
    assert ctx.get_response_header("Content-Encoding") in (None, "br")
    assert plugin.body_filter(conf, ctx, b"x", True) == b"x"


def test_gzip_needs_the_clients_http_version() -> None:
    # gzip.t TEST 9: http_version 1.1 (the default) leaves an HTTP/1.0 client's answer alone
    plugin, conf = gz.Gzip(), decode(gz.Conf, {})
    ctx = response_ctx({"Accept-Encoding": "gzip"}, [("Content-Type", "text/html")], 200)
    ctx.http_version = "1.0"
    plugin.header_filter(conf, ctx)
    assert ctx.get_response_header("Content-Encoding") is None
    ctx.http_version = "1.1"
    plugin.header_filter(conf, ctx)
    assert ctx.get_response_header("Content-Encoding") == "gzip"


# -- api-breaker --------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return fake_shared_tables(monkeypatch, "plugin-api-breaker", now=1000.0)


def request(plugin: ab.ApiBreaker, conf: ab.Conf, upstream_status: str | None) -> Any:
    ctx = make_ctx("/api")
    res = plugin.access(conf, ctx)
    if res is None:
        ctx.upstream_status = upstream_status
        plugin.log(conf, ctx)
    return res


def test_api_breaker_schema() -> None:
    conf = REG.decode_conf("api-breaker", {"break_response_code": 502})
    assert (conf.max_breaker_sec, conf.unhealthy.http_statuses, conf.unhealthy.failures) == (
        300,
        [500],
        3,
    )
    assert (conf.healthy.http_statuses, conf.healthy.successes) == ([200], 3)
    for bad in (
        {},
        {"break_response_code": 199},
        {"break_response_code": 502, "max_breaker_sec": 2},
        {"break_response_code": 502, "unhealthy": {"http_statuses": [404]}},
    ):
        with pytest.raises(ConfigError, match="plugin api-breaker err"):
            REG.decode_conf("api-breaker", bad)


def test_breaker_seconds() -> None:
    assert [ab.breaker_seconds(n, 3, 300) for n in (1, 3, 6, 9)] == [2, 2, 4, 8]
    assert ab.breaker_seconds(100, 1, 300) == 300


def test_api_breaker_opens_and_recovers(clock: Clock) -> None:
    plugin = ab.ApiBreaker()
    conf = decode(
        ab.Conf,
        {
            "break_response_code": 502,
            "break_response_body": "broken\n",
            "break_response_headers": [{"key": "X-Breaker", "value": "$host"}],
            "unhealthy": {"failures": 2},
            "healthy": {"successes": 2},
        },
    )
    assert request(plugin, conf, "500") is None
    assert request(plugin, conf, "500") is None  # second failure opens for 2^1 s
    assert request(plugin, conf, "200") == (502, "broken\n", {"X-Breaker": "example.com"})
    clock.now += 3  # closed again, half-healthy
    assert request(plugin, conf, "200") is None
    assert request(plugin, conf, "200") is None  # two successes: reset
    assert request(plugin, conf, "500") is None  # one failure after reset does not open
    assert request(plugin, conf, "200") is None


# -- accept-only --------------------------------------------------------------------------


def test_accept_only_schemas() -> None:
    assert REG.decode_conf("prometheus", {}).prefer_name is False
    assert REG.get("prometheus").run_policy == "prefer_route"  # type: ignore[union-attr]
    mirror = REG.decode_conf("proxy-mirror", {"host": "http://127.0.0.1:9797"})
    assert (mirror.sample_ratio, mirror.path_concat_mode) == (1.0, "replace")
    with pytest.raises(ConfigError):
        REG.decode_conf("proxy-mirror", {"host": "127.0.0.1:9797"})
    logger = REG.decode_conf("http-logger", {"uri": "http://127.0.0.1:1980/log"})
    assert (logger.timeout, logger.batch_max_size, logger.concat_method) == (3, 1000, "json")
    with pytest.raises(ConfigError):
        REG.decode_conf("http-logger", {})


@pytest.mark.parametrize("name", ["serverless-pre-function", "serverless-post-function"])
def test_serverless_is_refused_with_a_reason(name: str) -> None:
    with pytest.raises(ConfigError, match="runs Lua functions, which Tollway cannot execute"):
        REG.decode_conf(name, {"functions": ["return function() end"]})
