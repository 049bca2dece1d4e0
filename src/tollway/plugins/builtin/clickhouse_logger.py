"""clickhouse-logger (APISIX priority 398): log entries inserted through ClickHouse's HTTP
interface.

As APISIX's ``clickhouse-logger``: a batch is one ``POST`` to ``endpoint_addr`` (or one of
``endpoint_addrs`` at random) whose body is ``INSERT INTO <logtable> FORMAT JSONEachRow``
followed by the entries (one JSON object, or objects separated by spaces), with
``X-ClickHouse-User``, ``X-ClickHouse-Key`` and ``X-ClickHouse-Database``; a status >= 400 is a
failure. ``timeout`` is in seconds.
"""

from __future__ import annotations

import random
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from tollway.plugins.kit_batch import Sender
from tollway.plugins.kit_log import HttpLoggerBase as Base
from tollway.plugins.kit_log import LogConf

_URI = r"^[^\/]+:\/\/([\da-zA-Z.-]+|\[[\da-fA-F:]+\])(:\d+)?"  # APISIX core.schema.uri_def
Uri = Annotated[str, Meta(pattern=_URI)]


class Conf(LogConf, kw_only=True):
    endpoint_addr: Uri | None = None
    endpoint_addrs: list[Uri] | None = None
    user: str
    password: str
    database: str
    logtable: str
    timeout: Annotated[int, Meta(ge=1)] = 3
    ssl_verify: bool = True
    name: str = "clickhouse logger"


def insert_body(logtable: str, batch: list[dict[str, Any]], batch_max_size: int) -> bytes:
    if batch_max_size == 1:
        rows = msgspec.json.encode(batch[0])
    else:
        rows = b" ".join(msgspec.json.encode(e) for e in batch)
    return f"INSERT INTO {logtable} FORMAT JSONEachRow ".encode() + rows


class ClickhouseLogger(Base):
    name = "clickhouse-logger"
    priority = 398
    schema = Conf

    def check(self, conf: Conf) -> None:
        super().check(conf)
        if (conf.endpoint_addr is None) == (not conf.endpoint_addrs):
            raise ValueError("value should match only one schema, but matches none")

    def sender(self, conf: Conf) -> Sender:
        headers = [
            ("Content-Type", "application/json"),
            ("X-ClickHouse-User", conf.user),
            ("X-ClickHouse-Key", conf.password),
            ("X-ClickHouse-Database", conf.database),
        ]
        addrs = [conf.endpoint_addr] if conf.endpoint_addr else conf.endpoint_addrs or []

        async def send(batch: list[dict[str, Any]]) -> None:
            body = insert_body(conf.logtable, batch, conf.batch_max_size)
            url = random.choice(addrs)
            status = await self.post(url, headers, body, conf.timeout, conf.ssl_verify)
            if status >= 400:
                raise ConnectionError(f"server returned status code[{status}]")

        return send


PLUGINS = [ClickhouseLogger]
