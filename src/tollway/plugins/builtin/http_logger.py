"""http-logger (APISIX priority 410): log entries POSTed in batches to an HTTP(S) endpoint.

The entry is APISIX log-util's (``tollway.plugins.kit_log``), batched by the shared batch
processor (``tollway.plugins.kit_batch``: ``batch_max_size``, ``inactive_timeout``,
``buffer_duration``, ``max_retry_count``, ``retry_delay``, bounded backlog, flushed on graceful
stop). A batch is one JSON object when ``batch_max_size`` is 1, else a JSON array
(``concat_method: json``) or one JSON object per line (``new_line``), POSTed with
``Content-Type`` application/json or text/plain and ``Authorization: <auth_header>``; a
connection error or a status >= 400 is a failure (retried as the batch processor says).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tollway.plugins.kit import PerConf
from tollway.plugins.kit_batch import Sender
from tollway.plugins.kit_log import LogConf, LoggerPlugin
from tollway.plugins.kit_outbound import Endpoint, OutboundClient, request_bytes

_URI = r"^[^\/]+:\/\/([\da-zA-Z.-]+|\[[\da-fA-F:]+\])(:\d+)?"  # APISIX core.schema.uri_def


class Conf(LogConf, kw_only=True):
    uri: Annotated[str, Meta(pattern=_URI)]
    auth_header: str | None = None
    timeout: Annotated[int, Meta(ge=1)] = 3
    concat_method: Literal["json", "new_line"] = "json"
    ssl_verify: bool = False
    name: str = "http logger"


def encode_batch(entries: list[dict[str, Any]], concat_method: str, batch_max_size: int) -> bytes:
    """APISIX http-logger: one object when batches hold one entry, else a JSON array or one
    object per line."""
    if batch_max_size == 1:
        return msgspec.json.encode(entries[0])
    if concat_method == "json":
        return msgspec.json.encode(entries)
    return b"\n".join(msgspec.json.encode(e) for e in entries)


def _parse(conf: Conf) -> tuple[Endpoint, str]:
    return Endpoint.parse(conf.uri)


_endpoint = PerConf(_parse)


class HttpLogger(LoggerPlugin):
    name = "http-logger"
    priority = 410
    schema = Conf

    def __init__(self) -> None:
        super().__init__()
        self.client = OutboundClient("http-logger")

    def sender(self, conf: Conf) -> Sender:
        endpoint, target = _endpoint(conf)
        headers = [
            ("Host", endpoint.host),
            ("Content-Type", "application/json" if conf.concat_method == "json" else "text/plain"),
        ]
        if conf.auth_header is not None:
            headers.append(("Authorization", conf.auth_header))

        async def send(batch: list[dict[str, Any]]) -> None:
            body = encode_batch(batch, conf.concat_method, conf.batch_max_size)
            status = await self.client.send(
                endpoint,
                request_bytes("POST", target, headers, body),
                connect_timeout=conf.timeout,
                timeout=conf.timeout * 2,
                verify=conf.ssl_verify,
            )
            if status >= 400:
                raise ConnectionError(
                    f"server returned status code[{status}] host[{endpoint.host}] "
                    f"port[{endpoint.port}]"
                )

        return send

    async def aclose(self) -> None:
        await super().aclose()
        self.client.close()


PLUGINS = [HttpLogger]
