"""syslog (APISIX priority 401): log entries as RFC 5424 messages over TCP or UDP.

As APISIX's ``syslog``: each entry is JSON in a message ``<46>1 <time> <host> apisix <pid> - -
<json>`` (facility SYSLOG, severity INFO; the time in RFC 3339 UTC with milliseconds, the host
the request's ``$host``), batched by the batch processor and sent to ``host:port`` over
``sock_type`` tcp (a batch in one write, each message ending in a newline: RFC 6587
non-transparent framing) or udp (one datagram per message; APISIX's socket logger may put several
in one). ``timeout`` is in milliseconds. ``flush_limit``, ``drop_limit`` and ``pool_size`` (the
Lua socket logger's buffers) are accepted; the batch processor's limits bound memory instead.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tollway.plugins.kit import RequestContext
from tollway.plugins.kit_batch import Sender
from tollway.plugins.kit_log import LogConf, LoggerPlugin, send_tcp, send_udp

PRI = 5 * 8 + 6  # facility SYSLOG, severity INFO (APISIX utils/rfc5424.lua)


class Conf(LogConf, kw_only=True):
    host: str
    port: int
    flush_limit: Annotated[int, Meta(ge=1)] = 4096
    drop_limit: int = 1048576
    timeout: Annotated[int, Meta(ge=1)] = 3000  # ms
    sock_type: Literal["tcp", "udp"] = "tcp"
    pool_size: Annotated[int, Meta(ge=5)] = 5
    tls: bool = False
    name: str = "sys logger"


def rfc3339(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def rfc5424(host: str, pid: int, msg: bytes, now: float) -> bytes:
    head = f"<{PRI}>1 {rfc3339(now)} {host or '-'} apisix {pid} - - "
    return head.encode() + msg + b"\n"


class Syslog(LoggerPlugin):
    name = "syslog"
    priority = 401
    schema = Conf

    def item(self, conf: Conf, ctx: RequestContext, entry: dict[str, Any]) -> bytes:
        return rfc5424(ctx.host, os.getpid(), msgspec.json.encode(entry), time.time())

    def sender(self, conf: Conf) -> Sender:
        timeout = conf.timeout / 1000

        async def send(batch: list[bytes]) -> None:
            if conf.sock_type == "udp":
                await send_udp(conf.host, conf.port, batch, timeout)
            else:
                await send_tcp(conf.host, conf.port, b"".join(batch), timeout, conf.tls)

        return send


PLUGINS = [Syslog]
