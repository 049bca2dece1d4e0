"""udp-logger (APISIX priority 400): each batch sent as one UDP datagram to ``host:port``.

APISIX's ``udp-logger``: one JSON object when ``batch_max_size`` is 1, else a JSON array;
``timeout`` in seconds. UDP has no acknowledgement: a batch counts as sent once the datagram
leaves (an ICMP "port unreachable" reported on the socket is a failure).
"""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta

from tollway.plugins.kit_batch import Sender
from tollway.plugins.kit_log import LogConf, LoggerPlugin, json_batch, send_udp


class Conf(LogConf, kw_only=True):
    host: str
    port: Annotated[int, Meta(ge=0)]
    timeout: Annotated[int, Meta(ge=1)] = 3  # s
    name: str = "udp logger"


class UdpLogger(LoggerPlugin):
    name = "udp-logger"
    priority = 400
    schema = Conf

    def sender(self, conf: Conf) -> Sender:
        async def send(batch: list[dict[str, Any]]) -> None:
            data = json_batch(batch, conf.batch_max_size)
            await send_udp(conf.host, conf.port, [data], conf.timeout)

        return send


PLUGINS = [UdpLogger]
