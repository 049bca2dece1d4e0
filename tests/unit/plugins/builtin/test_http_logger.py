from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.unit.plugins.ctx import decode, make_ctx
from tollway.errors import ConfigError
from tollway.plugins.builtin.http_logger import Conf, HttpLogger, encode_batch
from tollway.plugins.kit import Consumer
from tollway.plugins.kit_log import custom_log, full_log, query_args
from tollway.plugins.registry import load_registry

REG = load_registry()


def conf_of(**kw: Any) -> Conf:
    return decode(Conf, {"uri": "http://127.0.0.1:1980/log", **kw})


# -- schema ---------------------------------------------------------------------------------


def test_schema_defaults() -> None:
    c = REG.decode_conf("http-logger", {"uri": "http://127.0.0.1:1980/log"})
    assert (c.timeout, c.concat_method, c.ssl_verify, c.auth_header) == (3, "json", False, None)
    assert (c.name, c.batch_max_size, c.inactive_timeout, c.buffer_duration) == (
        "http logger",
        1000,
        5,
        60,
    )
    assert (c.max_retry_count, c.retry_delay) == (0, 1)


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"uri": "127.0.0.1:1980/log"},
        {"uri": "http://a.test", "timeout": 0},
        {"uri": "http://a.test", "batch_max_size": 0},
        {"uri": "http://a.test", "inactive_timeout": 0},
        {"uri": "http://a.test", "buffer_duration": 0},
        {"uri": "http://a.test", "max_retry_count": -1},
        {"uri": "http://a.test", "retry_delay": 0.5},
        {"uri": "http://a.test", "concat_method": "xml"},
        {"uri": "http://a.test", "include_resp_body_expr": []},
        {"uri": "http://a.test", "include_req_body_expr": [["arg_a", "nope", "1"]]},
    ],
)
def test_schema_rejects(raw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="plugin http-logger"):
        REG.decode_conf("http-logger", raw)


# -- entries --------------------------------------------------------------------------------


def test_query_args_like_ngx() -> None:
    assert query_args("a=1&b&c=&a=2&d=x+y%21") == {
        "a": ["1", "2"],
        "b": True,
        "c": "",
        "d": "x y!",
    }
    assert query_args("") == {}


def test_full_log_shape() -> None:
    ctx = make_ctx("/p?x=1&x=2", method="POST", headers={"Host": "h.test", "X-A": "1"})
    ctx.host = "h.test"
    ctx.start_time = 100.0
    ctx.route = object()
    ctx.route_id = "r1"
    ctx.resp_status = 201
    ctx.resp_headers = [
        ("Content-Type", "application/json"),
        ("Set-Cookie", "a"),
        ("Set-Cookie", "b"),
    ]
    ctx.upstream_addr = "127.0.0.1:1980"
    ctx.upstream_response_time = 0.25
    ctx.attach_consumer(Consumer("jack", None, {}))
    e = full_log(ctx, 100.5)
    assert e["request"]["url"] == "http://h.test:9080/p?x=1&x=2"
    assert e["request"]["uri"] == "/p?x=1&x=2"
    assert e["request"]["method"] == "POST"
    # as the upstream gets them (APISIX logs ngx.req.get_headers() after set_header)
    assert e["request"]["headers"] == {"host": "h.test", "x-a": "1", "x-consumer-username": "jack"}
    assert e["request"]["querystring"] == {"x": ["1", "2"]}
    assert e["response"]["status"] == 201
    assert e["response"]["headers"] == {
        "content-type": "application/json",
        "set-cookie": ["a", "b"],
    }
    assert (e["route_id"], e["service_id"], e["upstream"]) == ("r1", "", "127.0.0.1:1980")
    assert e["consumer"] == {"username": "jack"}
    assert e["client_ip"] == "127.0.0.1"
    assert e["start_time"] == 100000.0
    assert (e["latency"], e["upstream_latency"], e["apisix_latency"]) == (500.0, 250.0, 250.0)
    assert set(e["server"]) == {"hostname", "version"}
    json.dumps(e)  # JSON-ready


def test_full_log_without_route_or_upstream() -> None:
    ctx = make_ctx("/nothing")
    ctx.start_time = 10.0
    e = full_log(ctx, 10.1)
    assert "upstream_latency" not in e and "upstream" not in e and "consumer" not in e
    assert e["service_id"] == "example.com" and "route_id" not in e
    assert HttpLogger().entry(conf_of(), ctx, 10.1)["route_id"] == "no-matched"


def test_custom_log_format() -> None:
    ctx = make_ctx("/c?k=v", headers={"X-Id": "7"})
    ctx.route = object()
    ctx.route_id = "r2"
    entry = custom_log({"host": "$host", "id": "$http_x_id", "const": "lit", "n": 1}, ctx)
    assert entry == {"host": "example.com", "id": "7", "const": "lit", "n": 1, "route_id": "r2"}


def test_encode_batch() -> None:
    a, b = {"a": 1}, {"b": 2}
    assert encode_batch([a], "json", 1) == b'{"a":1}'
    assert encode_batch([a], "new_line", 1) == b'{"a":1}'
    assert encode_batch([a, b], "json", 10) == b'[{"a":1},{"b":2}]'
    assert encode_batch([a], "json", 10) == b'[{"a":1}]'
    assert encode_batch([a, b], "new_line", 10) == b'{"a":1}\n{"b":2}'


# -- the log phase -------------------------------------------------------------------------


def test_log_phase_bounds_pending_entries() -> None:
    async def scenario() -> HttpLogger:
        plugin = HttpLogger()
        plugin.batches.max_pending = 2  # plugin_metadata's max_pending_entries
        conf = conf_of()  # batch_max_size 1000: entries stay buffered
        for _ in range(3):
            plugin.log(conf, make_ctx("/"))
        for proc in plugin.batches.processors.values():
            if proc.timer is not None:
                proc.timer.cancel()
        return plugin

    plugin = asyncio.run(scenario())
    assert (plugin.batches.pending, plugin.batches.dropped) == (2, 1)


def test_bodies_only_for_confs_that_log_them() -> None:
    plugin = HttpLogger()
    plain = conf_of()
    assert plugin.phase_method("rewrite", plain) is None
    assert plugin.phase_method("body_filter", plain) is None
    both = conf_of(include_req_body=True, include_resp_body=True)
    assert asyncio.iscoroutinefunction(plugin.phase_method("rewrite", both))
    ctx = make_ctx("/b", method="POST")

    async def reader(limit: int) -> bytes:
        return b'{"in":1}'

    ctx.body_reader = reader
    asyncio.run(plugin.rewrite(both, ctx))
    plugin.body_filter(both, ctx, b"out-", False)
    plugin.body_filter(both, ctx, b"put", True)
    entry = plugin.entry(both, ctx, 0.0)
    assert entry["request"]["body"] == '{"in":1}'
    assert entry["response"]["body"] == "out-put"
    # the expressions decide per request
    cond = conf_of(
        include_req_body=True,
        include_req_body_expr=[["arg_log", "==", "yes"]],
        include_resp_body=True,
        include_resp_body_expr=[["arg_log", "==", "yes"]],
    )
    ctx = make_ctx("/b?log=no")
    ctx.body_reader = reader
    asyncio.run(plugin.rewrite(cond, ctx))
    plugin.body_filter(cond, ctx, b"x", True)
    entry = plugin.entry(cond, ctx, 0.0)
    assert "body" not in entry["request"] and "body" not in entry["response"]


def test_header_filter_only_when_the_entry_may_hold_response_headers() -> None:
    plugin = HttpLogger()
    assert plugin.phase_method("header_filter", conf_of()) is not None
    # the conf's log_format wins over the metadata's: no response headers are logged
    assert plugin.phase_method("header_filter", conf_of(log_format={"h": "$host"})) is None
