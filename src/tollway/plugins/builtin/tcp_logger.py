"""tcp-logger (APISIX priority 405): log entries sent in batches over TCP (optionally TLS).

APISIX's ``tcp-logger``: each batch on a new connection to ``host:port`` (``timeout`` in
milliseconds for the connect, the handshake and the send), one JSON object when
``batch_max_size`` is 1, else a JSON array; a connection or send error is a failure, retried by
the batch processor. ``tls_options`` (OpenSSL cipher options in APISIX) is accepted and not used;
the server certificate is not verified, as APISIX's ``sslhandshake(true, ..., false)``.
"""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta

from tollway.plugins.kit_batch import Sender
from tollway.plugins.kit_log import LogConf, LoggerPlugin, json_batch, send_tcp


class Conf(LogConf, kw_only=True):
    host: str
    port: Annotated[int, Meta(ge=0)]
    tls: bool = False
    tls_options: str | None = None
    timeout: Annotated[int, Meta(ge=1)] = 1000  # ms
    name: str = "tcp logger"


class TcpLogger(LoggerPlugin):
    name = "tcp-logger"
    priority = 405
    schema = Conf

    def sender(self, conf: Conf) -> Sender:
        async def send(batch: list[dict[str, Any]]) -> None:
            data = json_batch(batch, conf.batch_max_size)
            await send_tcp(conf.host, conf.port, data, conf.timeout / 1000, conf.tls)

        return send


PLUGINS = [TcpLogger]
