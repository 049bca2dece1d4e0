"""The plugin kit's outbound side: what loggers and mirrors use to talk to other servers.

* ``OutboundClient(name, PoolLimits(...))``: HTTP/1.1 requests on a keep-alive pool of the
  plugin's own (``await client.send(endpoint, data, ...)`` returns the status or raises
  ``OSError``); ``Endpoint.parse(url)`` and ``request_bytes(...)`` build what it sends.
* ``RateLimitedLog(logger)``: a warning a plugin would repeat on every request or batch, said
  at most once per 30 s (APISIX's rate-limited error log).
* ``GATEWAY_VERSION``: the version a log entry reports as ``server.version``.

Plugins import these from here, not from the modules behind them.
"""

from __future__ import annotations

from tollway import __version__
from tollway.plugins.outbound import Endpoint, OutboundClient, PoolLimits, request_bytes
from tollway.ratelog import RateLimitedLog

GATEWAY_VERSION = __version__

__all__ = [
    "GATEWAY_VERSION",
    "Endpoint",
    "OutboundClient",
    "PoolLimits",
    "RateLimitedLog",
    "request_bytes",
]
