"""kafka-logger (APISIX priority 403): log entries produced to a Kafka topic (aiokafka).

As APISIX's ``kafka-logger``: a batch is one message on ``kafka_topic`` with ``key`` (one JSON
object when ``batch_max_size`` is 1, else a JSON array); ``meta_format: origin`` logs the raw
request (request line, headers and, with ``include_req_body``, the body) instead of the entry.
Brokers come from ``brokers`` (with ``sasl_config``: PLAIN, SCRAM-SHA-256/512) and/or
``broker_list``; ``tls`` connects over TLS (``verify`` the certificates or not);
``required_acks`` 1 or -1 (all); ``timeout`` in seconds bounds a send. One producer per conf
and worker, started with the first batch; a failed start or send is a failure the batch
processor retries. The batch processor already makes the batches, so every message is sent and
awaited (``producer_type`` sync and async alike); ``cluster_name``, ``producer_batch_num``,
``producer_max_buffering``, ``meta_refresh_interval`` and ``api_version`` (lua-resty-kafka's
knobs) are accepted; ``producer_batch_size`` and ``producer_time_linger`` tune the producer.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tollway.plugins.kit import RequestContext
from tollway.plugins.kit_batch import Sender
from tollway.plugins.kit_log import LogConf, LoggerPlugin, logged_request_body

log = logging.getLogger("tollway.plugins")
Port = Annotated[int, Meta(ge=1, le=65535)]


class Sasl(msgspec.Struct):
    user: str
    password: str
    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"


class Broker(msgspec.Struct):
    host: str
    port: Port
    sasl_config: Sasl | None = None


class Tls(msgspec.Struct):
    verify: bool = False


class Conf(LogConf, kw_only=True):
    meta_format: Literal["default", "origin"] = "default"
    broker_list: Annotated[dict[str, Port], Meta(min_length=1)] | None = None
    brokers: list[Broker] | None = None
    tls: Tls | None = None
    kafka_topic: str
    producer_type: Literal["async", "sync"] = "async"
    required_acks: Literal[1, -1] = 1
    key: str | None = None
    timeout: Annotated[int, Meta(ge=1)] = 3
    cluster_name: Annotated[int, Meta(ge=1)] = 1
    producer_batch_num: Annotated[int, Meta(ge=1)] = 200
    producer_batch_size: Annotated[int, Meta(ge=0)] = 1048576
    producer_max_buffering: Annotated[int, Meta(ge=1)] = 50000
    producer_time_linger: Annotated[int, Meta(ge=1)] = 1
    meta_refresh_interval: Annotated[int, Meta(ge=1)] = 30
    api_version: Literal[0, 1, 2] = 1
    name: str = "kafka logger"


def bootstrap(conf: Conf) -> list[str]:
    servers = [f"{b.host}:{b.port}" for b in conf.brokers or ()]
    servers += [f"{host}:{port}" for host, port in (conf.broker_list or {}).items()]
    return servers


def origin(ctx: RequestContext, conf: Conf) -> str:
    """APISIX log-util get_req_original: the request as it came (line, headers, body)."""
    parts = [f"{ctx.method} {ctx.request_uri} HTTP/{ctx.http_version}\r\n"]
    parts += [f"{k.decode('latin-1')}: {v.decode('latin-1')}\r\n" for k, v in ctx.raw_headers]
    parts.append("\r\n")
    body = logged_request_body(ctx, "kafka-logger") if conf.include_req_body else None
    if body:
        parts.append(body)
    return "".join(parts)


def message(batch: list[Any], batch_max_size: int) -> bytes:
    if batch_max_size == 1:
        one = batch[0]
        return one.encode() if isinstance(one, str) else msgspec.json.encode(one)
    return msgspec.json.encode(batch)


class KafkaLogger(LoggerPlugin):
    name = "kafka-logger"
    priority = 403
    schema = Conf

    def __init__(self) -> None:
        super().__init__()
        self.producers: dict[int, tuple[Conf, Any]] = {}

    def check(self, conf: Conf) -> None:
        super().check(conf)
        if not conf.brokers and not conf.broker_list:
            raise ValueError("value should match only one schema, but matches none")

    def item(self, conf: Conf, ctx: RequestContext, entry: dict[str, Any]) -> Any:
        return origin(ctx, conf) if conf.meta_format == "origin" else entry

    async def _producer(self, conf: Conf) -> Any:
        hit = self.producers.get(id(conf))
        if hit is not None and hit[0] is conf:
            return hit[1]
        from aiokafka import AIOKafkaProducer  # imported when a conf first sends

        kw: dict[str, Any] = {}
        sasl = next((b.sasl_config for b in conf.brokers or () if b.sasl_config), None)
        if conf.tls is not None:
            ctx = ssl.create_default_context()
            if not conf.tls.verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            kw["ssl_context"] = ctx
        if sasl is not None:
            kw["security_protocol"] = "SASL_SSL" if conf.tls is not None else "SASL_PLAINTEXT"
            kw |= {
                "sasl_mechanism": sasl.mechanism,
                "sasl_plain_username": sasl.user,
                "sasl_plain_password": sasl.password,
            }
        elif conf.tls is not None:
            kw["security_protocol"] = "SSL"
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap(conf),
            client_id="tollway",
            acks="all" if conf.required_acks == -1 else 1,
            request_timeout_ms=conf.timeout * 1000,
            linger_ms=0,
            max_batch_size=max(conf.producer_batch_size, 16384),
            **kw,
        )
        try:
            async with asyncio.timeout(conf.timeout):
                await producer.start()
        except BaseException as e:
            await producer.stop()
            raise ConnectionError(f"failed to connect to the Kafka brokers: {e!r}") from None
        # Producers of confs no processor serves any more (the route changed) are stopped.
        live = self.batches.processors
        for pid in [pid for pid in self.producers if pid not in live or pid == id(conf)]:
            await self.producers.pop(pid)[1].stop()
        self.producers[id(conf)] = (conf, producer)
        return producer

    def sender(self, conf: Conf) -> Sender:
        key = conf.key.encode() if conf.key is not None else None

        async def send(batch: list[Any]) -> None:
            producer = await self._producer(conf)
            value = message(batch, conf.batch_max_size)
            try:
                async with asyncio.timeout(conf.timeout):
                    await producer.send_and_wait(conf.kafka_topic, value, key=key)
            except Exception as e:  # aiokafka's KafkaError and TimeoutError
                raise ConnectionError(
                    f"failed to send data to Kafka topic: {e!r}, brokers: {bootstrap(conf)}"
                ) from None

        return send

    async def aclose(self) -> None:
        await super().aclose()  # the last batches first
        producers, self.producers = list(self.producers.values()), {}
        for _, producer in producers:
            try:
                await producer.stop()
            except Exception:
                log.debug("kafka producer stop failed", exc_info=True)


PLUGINS = [KafkaLogger]
