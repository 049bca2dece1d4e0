"""loki-logger (APISIX priority 414): log entries pushed to Grafana Loki.

As APISIX's ``loki-logger``: a batch is one ``POST <endpoint_addr><endpoint_uri>`` (an address
picked at random) of Loki's push API JSON ``{"streams": [{"stream": {labels}, "values":
[["<ns>", "<entry JSON>"], ...]}]}``, entries grouped by their labels (``log_labels`` with
``$var``/``${var}`` resolved per request), each timed at the request's start in nanoseconds,
with ``X-Scope-OrgID: <tenant_id>`` and the conf's ``headers``; a status >= 300 is a failure.
``timeout`` is in milliseconds; ``keepalive*`` are accepted (connections are kept alive).
"""

from __future__ import annotations

import random
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from tollway.plugins.kit import RequestContext
from tollway.plugins.kit_batch import Sender
from tollway.plugins.kit_log import HttpLoggerBase as Base
from tollway.plugins.kit_log import LogConf, resolve_vars

_URI = r"^[^\/]+:\/\/([\da-zA-Z.-]+|\[[\da-fA-F:]+\])(:\d+)?"  # APISIX core.schema.uri_def
NonEmpty = Annotated[str, Meta(min_length=1)]


class Conf(LogConf, kw_only=True):
    endpoint_addrs: Annotated[list[Annotated[str, Meta(pattern=_URI)]], Meta(min_length=1)]
    endpoint_uri: NonEmpty = "/loki/api/v1/push"
    tenant_id: str = "fake"
    headers: dict[str, NonEmpty] | None = None
    log_labels: dict[str, NonEmpty] = msgspec.field(default_factory=lambda: {"job": "apisix"})
    ssl_verify: bool = False
    timeout: Annotated[int, Meta(ge=1, le=60000)] = 3000  # ms
    keepalive: bool = True
    keepalive_timeout: Annotated[int, Meta(ge=1000)] = 60000
    keepalive_pool: Annotated[int, Meta(ge=1)] = 5
    name: str = "loki logger"


def push_body(batch: list[tuple[dict[str, str], str, dict[str, Any]]]) -> bytes:
    streams: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for labels, ts, entry in batch:
        key = tuple(sorted(labels.items()))
        stream = streams.get(key)
        if stream is None:
            stream = streams[key] = {"stream": labels, "values": []}
        stream["values"].append([ts, msgspec.json.encode(entry).decode()])
    return msgspec.json.encode({"streams": list(streams.values())})


class LokiLogger(Base):
    name = "loki-logger"
    priority = 414
    schema = Conf

    def item(self, conf: Conf, ctx: RequestContext, entry: dict[str, Any]) -> Any:
        labels = {k: resolve_vars(v, ctx.var) for k, v in conf.log_labels.items()}
        return labels, f"{int(ctx.start_time * 1000)}000000", entry

    def sender(self, conf: Conf) -> Sender:
        headers = [*(conf.headers or {}).items()]
        headers += [("X-Scope-OrgID", conf.tenant_id), ("Content-Type", "application/json")]

        async def send(batch: list[Any]) -> None:
            url = random.choice(conf.endpoint_addrs) + conf.endpoint_uri
            status = await self.post(
                url, headers, push_body(batch), conf.timeout / 1000, conf.ssl_verify
            )
            if status >= 300:
                raise ConnectionError(f"loki server returned status: {status}")

        return send


PLUGINS = [LokiLogger]
