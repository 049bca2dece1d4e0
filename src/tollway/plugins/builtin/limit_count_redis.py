"""limit-count's ``redis``, ``redis-cluster`` and ``redis-sentinel`` policies.

Every request runs one script on Redis (``limit_redis``), so all instances on that Redis share
the count; keys are APISIX's (``plugin-limit-count:v1:<key>`` fixed,
``plugin-limit-count:<key>.<window id>.counter`` sliding).

With ``sync_interval`` (APISIX ``delayed-syncer.lua``) the instance serves a key from the quota
it last read from Redis, counting locally in the instance-wide shared table (so all workers
spend one quota), and adds what it counted to Redis every interval in the background; once the
quota's window is over, the next request reads a fresh one first. When Redis cannot be reached,
the delta is counted in the local policy's table instead (APISIX's fallback limiter), so the
limit holds per instance until Redis is back.

A key's record in the ``plugin-limit-count-sync`` table is (reset + window, remaining as Redis
last said, delta counted here since): it outlives its quota by a window so that a delta counted
just before the reset is still there to be stored.

Invariant: a delta is added to Redis (or the fallback) exactly once: whoever stores it takes it
out of the record atomically first (a concurrent refresh then takes nothing and only reads).
It is not lost as long as the worker that counted it flushes within a window (it flushes every
``sync_interval``, which is shorter).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from tollway.plugins.builtin.limit_redis import fixed_window, sliding_window
from tollway.plugins.builtin.limit_windows import sliding_answer, sliding_keys, whole
from tollway.plugins.kit import PerConf
from tollway.plugins.kit_counters import (
    Record,
    RedisClient,
    RedisUnavailable,
    SharedTable,
    aclose_all,
    redis_client,
    shared_table,
    target_of,
)

log = logging.getLogger("tollway.plugins")

KEY_PREFIX = "plugin-limit-count"
KEY_VERSION = "v1"  # APISIX: the fixed window's key names its storage format


class RedisCounter:
    """One conf's counter: the target's client, and its delayed syncer with ``sync_interval``."""

    __slots__ = ("client", "sliding", "syncer")

    def __init__(self, conf: Any) -> None:
        self.client: RedisClient = redis_client(target_of(conf, conf.policy))
        self.sliding: bool = conf.window_type == "sliding"
        interval = conf.sync_interval
        self.syncer = DelayedSync(self, float(interval)) if interval != -1 else None

    async def take(self, key: str, limit: int, window: int) -> tuple[bool, int, int]:
        """Count one request: (allowed, remaining, reset seconds)."""
        syncer = self.syncer
        # APISIX: a window (a $var) no longer than the interval is counted on Redis directly.
        if syncer is not None and window > syncer.interval:
            return await syncer.take(key, limit, window)
        return await self.incoming(key, limit, window)

    async def incoming(self, key: str, limit: int, window: int) -> tuple[bool, int, int]:
        """Count one request on Redis."""
        if self.sliding:
            current, previous, left = sliding_keys(f"{KEY_PREFIX}:{key}", time.time(), window)
            admitted, count, prev = await sliding_window(
                self.client, current, previous, limit, window, left
            )
            return sliding_answer(admitted, count, prev, limit, window, left)
        used, ttl = await fixed_window(self.client, f"{KEY_PREFIX}:{KEY_VERSION}:{key}", window, 1)
        remaining = limit - used
        return remaining >= 0, remaining if remaining > 0 else 0, whole(ttl)

    async def commit(self, key: str, limit: int, window: int, delta: int) -> tuple[int, float]:
        """Add ``delta`` requests already admitted; (remaining, seconds the quota holds)."""
        if not self.sliding:
            used, ttl = await fixed_window(
                self.client, f"{KEY_PREFIX}:{KEY_VERSION}:{key}", window, delta
            )
            return limit - used, ttl
        current, previous, left = sliding_keys(f"{KEY_PREFIX}:{key}", time.time(), window)
        count, _ = await fixed_window(self.client, current, 2 * window, delta)
        raw = await self.client.get(previous)
        prev = int(raw) if raw is not None and raw.isdigit() else 0
        share = min(prev, limit) / window * left
        return int(limit - count - share), left


# -- the shared record's steps (pure) -------------------------------------------------------


def quota_step(
    rec: Record | None, now: float, grace: float, _: float
) -> tuple[Record | None, tuple[bool, int, float] | None]:
    """Take one from the key's quota: (allowed, remaining, seconds to reset), or None when
    there is no live quota (read one from Redis first)."""
    if rec is None or now >= rec[0] - grace:
        return rec, None
    expire, remaining, delta = rec
    left = int(remaining - delta - 1.0)
    reset = expire - grace - now
    if left < 0:
        return rec, (False, 0, reset)
    return (expire, remaining, delta + 1.0), (True, left, reset)


def take_delta_step(
    rec: Record | None, now: float, p: float, q: float
) -> tuple[Record | None, int]:
    """Take the delta out of the record, to be stored elsewhere."""
    if rec is None:
        return None, 0
    return (rec[0], rec[1], 0.0), int(rec[2])


def store_quota_step(
    rec: Record | None, now: float, expire: float, remaining: float
) -> tuple[Record, None]:
    """A quota read from Redis; what was counted meanwhile stays to be stored."""
    return (expire, remaining, rec[2] if rec is not None else 0.0), None


class Committer(Protocol):
    async def commit(self, key: str, limit: int, window: int, delta: int) -> tuple[int, float]: ...

    async def incoming(self, key: str, limit: int, window: int) -> tuple[bool, int, int]: ...


class DelayedSync:
    """A conf's syncer in this worker: it stores the deltas of the keys this worker counted."""

    __slots__ = ("counter", "interval", "pending", "table", "task")

    def __init__(
        self, counter: Committer, interval: float, table: SharedTable | None = None
    ) -> None:
        self.counter = counter
        self.interval = interval
        self.table = table
        self.pending: dict[str, tuple[int, int]] = {}  # key -> (limit, window)
        self.task: asyncio.Task[None] | None = None

    def _table(self) -> SharedTable:
        if self.table is None:
            self.table = shared_table("plugin-limit-count-sync")
        return self.table

    async def take(self, key: str, limit: int, window: int) -> tuple[bool, int, int]:
        table = self._table()
        res = table.update(key, quota_step, window)
        if res is None:
            await self._sync(key, limit, window)
            res = table.update(key, quota_step, window)
            if res is None:  # the window ended while we read it: count on Redis directly
                return await self.counter.incoming(key, limit, window)
        allowed, left, reset = res
        if allowed:
            self.pending[key] = (limit, window)
            if self.task is None:
                self.task = asyncio.get_running_loop().create_task(self._run())
                _SYNCERS.add(self)
        return allowed, left, whole(reset)

    async def _sync(self, key: str, limit: int, window: int) -> None:
        """Store the key's delta (Redis, else the local policy's table) and read its quota."""
        table = self._table()
        delta = table.update(key, take_delta_step)
        try:
            remaining, ttl = await self.counter.commit(key, limit, window, delta)
        except RedisUnavailable as e:
            log.debug("limit-count: %s; counting in the instance", e)
            fallback = shared_table("plugin-limit-count")
            used, ttl = fallback.update(key, add_step, window, delta)
            remaining = limit - used
        expire = table.now() + max(ttl, 0.0) + window
        table.update(key, store_quota_step, expire, remaining)

    async def _run(self) -> None:
        """Flush the deltas every interval while this worker counted any."""
        try:
            while True:
                await asyncio.sleep(self.interval)
                if not await self.flush():
                    return
        finally:
            self.task = None
            _SYNCERS.discard(self)

    async def flush(self) -> bool:
        """Store the deltas of the keys counted here; False when there were none."""
        pending, self.pending = self.pending, {}
        for key, (limit, window) in pending.items():
            await self._sync(key, limit, window)
        return bool(pending)


def add_step(rec: Record | None, now: float, window: float, cost: float) -> tuple[Record, Any]:
    """The fallback's step: add ``cost`` to a fixed window; (count, seconds left)."""
    expire, used = (rec[0], rec[1] + cost) if rec is not None else (now + window, cost)
    return (expire, used, 0.0), (int(used), expire - now)


redis_counter = PerConf(RedisCounter)
_SYNCERS: set[DelayedSync] = set()


async def close_redis_counters() -> None:
    """Worker stop: store what the syncers still hold (bounded by the Redis timeout), then
    close the clients."""
    for syncer in list(_SYNCERS):
        task = syncer.task
        if task is not None:
            task.cancel()
        try:
            await syncer.flush()
        except Exception:
            log.debug("limit-count: final sync failed", exc_info=True)
    _SYNCERS.clear()
    await aclose_all()
