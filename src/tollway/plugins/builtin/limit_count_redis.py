"""limit-count's ``redis``, ``redis-cluster`` and ``redis-sentinel`` policies.

Every request runs one script on Redis (``limit_redis``), so all instances on that Redis share
the count; keys are APISIX's (``plugin-limit-count:v1:<key>`` fixed,
``plugin-limit-count:<key>.<window id>.counter`` sliding).

With ``sync_interval`` (APISIX ``delayed-syncer.lua``) a worker serves a key from the quota it
last read from Redis, counting locally, and adds what it counted to Redis every interval in the
background; once the quota's window is over, the next request reads a fresh one first. When
Redis cannot be reached, the delta is counted in the instance's shared table instead (APISIX's
fallback limiter), so the limit holds per instance until Redis is back. Deviation: APISIX keeps
this state per instance (a shared dict); here each worker keeps its own, so an instance of W
workers may admit up to W deltas of one interval beyond the limit instead of one.

Invariant: a delta is added to Redis (or the fallback) exactly once: a key's quota is refreshed
or flushed under its lock, and the flushed amount is subtracted from the delta only after it
was stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from tollway.plugins import redis_client, shared_counters
from tollway.plugins.builtin.limit_redis import fixed_window, sliding_window
from tollway.plugins.builtin.limit_windows import sliding_answer, sliding_keys, whole
from tollway.plugins.kit import PerConf
from tollway.plugins.redis_client import RedisClient, RedisUnavailable, target_of
from tollway.plugins.shared_counters import Record

log = logging.getLogger("tollway.plugins")

KEY_PREFIX = "plugin-limit-count"
KEY_VERSION = "v1"  # APISIX: the fixed window's key names its storage format


class RedisCounter:
    """One conf's counter: the target's client, and its delayed syncer with ``sync_interval``."""

    __slots__ = ("client", "sliding", "syncer")

    def __init__(self, conf: Any) -> None:
        self.client: RedisClient = redis_client.client(target_of(conf, conf.policy))
        self.sliding: bool = conf.window_type == "sliding"
        interval = conf.sync_interval
        self.syncer = DelayedSync(self, float(interval)) if interval != -1 else None

    async def take(self, key: str, limit: int, window: int) -> tuple[bool, int, int]:
        """Count one request: (allowed, remaining, reset seconds)."""
        syncer = self.syncer
        # APISIX: a window (a $var) no longer than the interval is counted on Redis directly.
        if syncer is not None and window > syncer.interval:
            return await syncer.take(key, limit, window)
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


class _Quota:
    """A key's quota in this worker: ``remaining`` as Redis last said, until ``reset_at``
    (monotonic), less ``delta`` admitted here since."""

    __slots__ = ("delta", "limit", "lock", "remaining", "reset_at", "window")

    def __init__(self, limit: int, window: int) -> None:
        self.limit = limit
        self.window = window
        self.remaining = 0
        self.reset_at = 0.0  # never read: the first request reads it
        self.delta = 0
        self.lock = asyncio.Lock()


class Committer(Protocol):
    async def commit(self, key: str, limit: int, window: int, delta: int) -> tuple[int, float]: ...


class DelayedSync:
    __slots__ = ("clock", "counter", "interval", "quotas", "task")

    def __init__(
        self, counter: Committer, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.counter = counter
        self.interval = interval
        self.clock = clock
        self.quotas: dict[str, _Quota] = {}
        self.task: asyncio.Task[None] | None = None

    async def take(self, key: str, limit: int, window: int) -> tuple[bool, int, int]:
        q = self.quotas.get(key)
        if q is None:
            q = self.quotas[key] = _Quota(limit, window)
        if self.clock() >= q.reset_at:
            async with q.lock:
                if self.clock() >= q.reset_at:  # not refreshed while we waited
                    q.limit, q.window = limit, window
                    await self._sync(key, q)
        left = q.remaining - q.delta - 1
        if left < 0:
            return False, 0, whole(q.reset_at - self.clock())
        q.delta += 1
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())
            _SYNCERS.add(self)
        return True, left, whole(q.reset_at - self.clock())

    async def _sync(self, key: str, q: _Quota) -> None:
        """Store the key's delta (Redis, else the instance's table) and read its quota."""
        delta = q.delta
        try:
            remaining, ttl = await self.counter.commit(key, q.limit, q.window, delta)
        except RedisUnavailable as e:
            log.debug("limit-count: %s; counting in the instance", e)
            table = shared_counters.table("plugin-limit-count")
            remaining, ttl = table.update(key, add_step, q.window, delta)
            remaining = q.limit - remaining
        q.delta -= delta
        q.remaining = remaining
        q.reset_at = self.clock() + ttl

    async def _run(self) -> None:
        """Flush the deltas every interval while there are any."""
        try:
            while True:
                await asyncio.sleep(self.interval)
                if not await self.flush():
                    return
        finally:
            self.task = None
            _SYNCERS.discard(self)

    async def flush(self) -> bool:
        """Store every pending delta; False when none was pending (the flusher stops)."""
        pending = False
        now = self.clock()
        for key, q in list(self.quotas.items()):
            if q.delta > 0:
                pending = True
                async with q.lock:
                    if q.delta > 0:
                        await self._sync(key, q)
            elif now >= q.reset_at + self.interval and not q.lock.locked():
                del self.quotas[key]  # over and nothing to store: forget the key
        return pending


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
    await redis_client.aclose_all()
