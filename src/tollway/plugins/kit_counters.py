"""The plugin kit's counters for rate limiting: per-instance tables shared by the workers
(``shared_table(name)``, one mmap file per name) and Redis / Redis Cluster / Sentinel clients
(``redis_client(target_of(conf, policy))``), with ``RedisUnavailable`` when Redis cannot answer.

Plugins import these from here, not from the modules behind them.
"""

from __future__ import annotations

from tollway.plugins.redis_client import (
    RedisClient,
    RedisUnavailable,
    Script,
    Target,
    aclose_all,
    target_of,
)
from tollway.plugins.redis_client import client as redis_client
from tollway.plugins.shared_counters import Record, SharedTable, Slot
from tollway.plugins.shared_counters import table as shared_table

__all__ = [
    "Record",
    "RedisClient",
    "RedisUnavailable",
    "Script",
    "SharedTable",
    "Slot",
    "Target",
    "aclose_all",
    "redis_client",
    "shared_table",
    "target_of",
]
