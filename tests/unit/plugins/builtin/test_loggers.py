"""The loggers' pure parts: schemas, what one entry becomes, how a batch is encoded."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from tests.unit.plugins.ctx import make_ctx
from tollway.errors import ConfigError
from tollway.plugins.builtin.clickhouse_logger import insert_body
from tollway.plugins.builtin.elasticsearch_logger import ElasticsearchLogger, resolve_index
from tollway.plugins.builtin.loki_logger import LokiLogger, push_body
from tollway.plugins.builtin.syslog import rfc5424
from tollway.plugins.kit_log import resolve_vars
from tollway.plugins.registry import load_registry

REG = load_registry()


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("tcp-logger", {"host": "127.0.0.1"}),
        ("tcp-logger", {"host": "127.0.0.1", "port": 1, "timeout": 0}),
        ("udp-logger", {"port": 1}),
        ("syslog", {"host": "h", "port": 1, "sock_type": "sctp"}),
        ("syslog", {"host": "h", "port": 1, "pool_size": 4}),
        ("loki-logger", {"endpoint_addrs": []}),
        ("loki-logger", {"endpoint_addrs": ["loki:3100"]}),
        ("loki-logger", {"endpoint_addrs": ["http://l"], "timeout": 60001}),
        ("elasticsearch-logger", {"endpoint_addr": "http://es", "field": {}}),
        ("elasticsearch-logger", {"endpoint_addr": "http://es/", "field": {"index": "i"}}),
        ("elasticsearch-logger", {"field": {"index": "i"}}),
        ("clickhouse-logger", {"endpoint_addr": "http://ch", "user": "u"}),
        (
            "clickhouse-logger",
            {"user": "u", "password": "p", "database": "d", "logtable": "t"},
        ),
        ("file-logger", {"path": "/tmp/x", "match": [["arg_a", "nope", "1"]]}),
        ("file-logger", {"path": "/tmp/x", "include_req_body_expr": []}),
        ("tcp-logger", {"host": "h", "port": 1, "batch_max_size": 0}),
    ],
)
def test_schemas_reject(name: str, raw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=f"plugin {name}"):
        REG.decode_conf(name, raw)


def test_batch_field_defaults_carry_each_loggers_name() -> None:
    names = {
        "tcp-logger": ({"host": "h", "port": 1}, "tcp logger"),
        "udp-logger": ({"host": "h", "port": 1}, "udp logger"),
        "syslog": ({"host": "h", "port": 1}, "sys logger"),
        "loki-logger": ({"endpoint_addrs": ["http://l"]}, "loki logger"),
        "elasticsearch-logger": (
            {"endpoint_addr": "http://es", "field": {"index": "i"}},
            "elasticsearch-logger",
        ),
    }
    for plugin, (raw, name) in names.items():
        conf = REG.decode_conf(plugin, raw)
        assert (conf.name, conf.batch_max_size, conf.inactive_timeout) == (name, 1000, 5)
        assert (conf.buffer_duration, conf.max_retry_count, conf.retry_delay) == (60, 0, 1)


def test_resolve_vars() -> None:
    var = make_ctx("/p?a=1").var
    assert resolve_vars("job", var) == "job"
    assert resolve_vars("$uri-${arg_a}-$nope", var) == "/p-1-"


def test_syslog_message_is_rfc5424() -> None:
    msg = rfc5424("gw.test", 42, b'{"a":1}', 1700000000.25)
    assert msg == b'<46>1 2023-11-14T22:13:20.250Z gw.test apisix 42 - - {"a":1}\n'


def test_loki_groups_entries_by_labels() -> None:
    plugin = LokiLogger()
    conf = REG.decode_conf(
        "loki-logger", {"endpoint_addrs": ["http://l"], "log_labels": {"m": "$request_method"}}
    )
    items = [
        plugin.item(conf, make_ctx("/", method=m), {"n": i})
        for i, m in enumerate(["GET", "POST", "GET"])
    ]
    body = json.loads(push_body(items))
    assert [
        (s["stream"], [json.loads(v[1])["n"] for v in s["values"]]) for s in body["streams"]
    ] == [
        ({"m": "GET"}, [0, 2]),
        ({"m": "POST"}, [1]),
    ]
    assert all(re.fullmatch(r"\d+000000", v[0]) for s in body["streams"] for v in s["values"])


def test_elasticsearch_action_and_index() -> None:
    plugin = ElasticsearchLogger()
    conf = REG.decode_conf(
        "elasticsearch-logger",
        {"endpoint_addr": "http://es", "field": {"index": "logs-$host-{%Y}"}},
    )
    ctx = make_ctx("/")
    assert re.fullmatch(r"logs-example\.com-\d{4}", resolve_index(conf.field.index, ctx))
    line = plugin.item(conf, ctx, {"a": 1}).decode()
    action, source, end = line.split("\n")
    assert json.loads(action)["index"]["_index"].startswith("logs-example.com-")
    assert json.loads(source) == {"a": 1} and end == ""


def test_clickhouse_insert_body() -> None:
    rows = [{"a": 1}, {"a": 2}]
    assert insert_body("t", rows, 1000) == b'INSERT INTO t FORMAT JSONEachRow {"a":1} {"a":2}'
    assert insert_body("t", rows[:1], 1) == b'INSERT INTO t FORMAT JSONEachRow {"a":1}'


def test_entries_are_built_in_the_batch_task_from_the_queued_context() -> None:
    plugin = LokiLogger()
    conf = REG.decode_conf("loki-logger", {"endpoint_addrs": ["http://l"]})
    sent: list[Any] = []

    async def capture(batch: list[Any]) -> None:
        sent.extend(batch)

    plugin.sender = lambda conf: capture  # type: ignore[method-assign]

    async def scenario() -> None:
        ctx = make_ctx("/q?x=1")
        ctx.resp_status = 201
        plugin.log(conf, ctx)
        await plugin.aclose()  # flushes

    asyncio.run(scenario())
    labels, _, entry = sent[0]
    assert labels == {"job": "apisix"}
    assert entry["response"]["status"] == 201 and entry["request"]["querystring"] == {"x": "1"}


@pytest.mark.parametrize(
    "raw",
    [
        {"kafka_topic": "t"},  # no brokers
        {"brokers": [{"host": "k"}], "kafka_topic": "t"},
        {"broker_list": {"k": 0}, "kafka_topic": "t"},
        {"broker_list": {"k": 9092}},
        {"broker_list": {"k": 9092}, "kafka_topic": "t", "required_acks": 0},
        {"broker_list": {"k": 9092}, "kafka_topic": "t", "meta_format": "raw"},
        {
            "brokers": [{"host": "k", "port": 1, "sasl_config": {"user": "u"}}],
            "kafka_topic": "t",
        },
    ],
)
def test_kafka_logger_schema_rejects(raw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="plugin kafka-logger"):
        REG.decode_conf("kafka-logger", raw)


def test_kafka_logger_brokers_and_origin() -> None:
    from tollway.plugins.builtin.kafka_logger import bootstrap, message, origin

    conf = REG.decode_conf(
        "kafka-logger",
        {"brokers": [{"host": "a", "port": 1}], "broker_list": {"b": 2}, "kafka_topic": "t"},
    )
    assert conf.name == "kafka logger" and bootstrap(conf) == ["a:1", "b:2"]
    ctx = make_ctx("/p?q=1", headers={"X-A": "1"})
    assert origin(ctx, conf) == "GET /p?q=1 HTTP/1.1\r\nX-A: 1\r\n\r\n"
    assert message(["raw"], 1) == b"raw" and message([{"a": 1}], 1) == b'{"a":1}'
    assert message([{"a": 1}, "raw"], 2) == b'[{"a":1},"raw"]'
