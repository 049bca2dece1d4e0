"""Former home of the upstream pool and connection, now :mod:`tollway.upstream.pool`.

Kept so that existing imports (``plugins.outbound``, the ``proxy-mirror`` plugin) go on working
until they import ``tollway.upstream.pool`` (or the plugin kit).
"""

from __future__ import annotations

from tollway.upstream.pool import Pool, PoolLimits, ResponseSink, UpstreamConnection

__all__ = ["Pool", "PoolLimits", "ResponseSink", "UpstreamConnection"]
