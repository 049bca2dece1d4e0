"""The ``redis*`` policies of the limit-* plugins: their fields (APISIX ``utils/redis-schema``)
and the Redis scripts that count.

Each script keeps one key, so it is slot-safe on a cluster, and it reads, decides and writes in
one atomic step, so instances sharing a Redis share one count. Keys and stored values are
APISIX's (``plugin-limit-count:v1:<key>`` a string count with the window as TTL,
``limit_req:<key>`` a hash of ``excess`` and ``last`` in thousandths and milliseconds,
``limit_conn:<key>`` a sorted set of request ids scored by expiry), so an APISIX and a Tollway
instance counting the same key on one Redis agree.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from tollway.plugins.kit_counters import RedisClient, Script

ClusterNode = Annotated[str, Meta(min_length=2, max_length=100)]


class RedisSentinel(msgspec.Struct, forbid_unknown_fields=True):
    host: Annotated[str, Meta(min_length=2)]
    port: Annotated[int, Meta(ge=1, le=65535)]


class RedisFields(msgspec.Struct, kw_only=True):
    """Mixed into a plugin conf; ``redis_missing`` checks APISIX's if/then requirements."""

    # policy "redis"
    redis_host: Annotated[str, Meta(min_length=2)] | None = None
    redis_port: Annotated[int, Meta(ge=1)] = 6379
    redis_username: Annotated[str, Meta(min_length=1)] | None = None
    redis_password: str | None = None
    redis_database: Annotated[int, Meta(ge=0)] = 0
    redis_timeout: Annotated[int, Meta(ge=1)] = 1000
    redis_ssl: bool = False
    redis_ssl_verify: bool = False
    redis_keepalive_pool: Annotated[int, Meta(ge=1)] = 100
    # policy "redis-cluster"
    redis_cluster_nodes: Annotated[list[ClusterNode], Meta(min_length=1)] | None = None
    redis_cluster_name: str | None = None
    redis_cluster_ssl: bool = False
    redis_cluster_ssl_verify: bool = False
    # policy "redis-sentinel"
    redis_sentinels: Annotated[list[RedisSentinel], Meta(min_length=1)] | None = None
    redis_master_name: Annotated[str, Meta(min_length=1)] | None = None
    redis_role: Literal["master", "slave"] = "master"
    redis_connect_timeout: Annotated[int, Meta(ge=1)] = 1000
    redis_read_timeout: Annotated[int, Meta(ge=1)] = 1000
    redis_keepalive_timeout: Annotated[int, Meta(ge=1)] = 60000
    sentinel_username: Annotated[str, Meta(min_length=1)] | None = None
    sentinel_password: str | None = None


def redis_missing(conf: RedisFields, policy: str) -> str | None:
    """The first field the policy requires that is absent (APISIX: ``then clause did not
    match``), or None."""
    required = {
        "redis": ("redis_host",),
        "redis-cluster": ("redis_cluster_nodes", "redis_cluster_name"),
        "redis-sentinel": ("redis_sentinels", "redis_master_name"),
    }.get(policy, ())
    for name in required:
        if getattr(conf, name) is None:
            return name
    return None


def check_redis(conf: RedisFields, policy: str) -> None:
    missing = redis_missing(conf, policy)
    if missing:
        raise ValueError(f'then clause did not match: property "{missing}" is required')


# -- the scripts ----------------------------------------------------------------------------

# limit-count, fixed window (APISIX limit-count/util.lua): add ``cost`` to the key's count; a
# key without a TTL starts a window of ARGV[2] seconds. Reply: {count, ms left in the window}.
# The sliding window's delayed sync commits a delta with it too (ARGV[2] is then the expiry).
FIXED_WINDOW = Script("""
local cost = tonumber(ARGV[3])
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
    redis.call('SET', KEYS[1], cost, 'EX', ARGV[2])
    return {cost, tonumber(ARGV[2]) * 1000}
end
return {redis.call('INCRBY', KEYS[1], cost), left}
""")

# limit-count, sliding window (APISIX sliding-window/store/redis.lua): KEYS[1] is the current
# window's counter; the previous window's count (ARGV[6], frozen) weighs by the part of it that
# still overlaps. Counted only when admitted. Reply: {admitted 0/1, count, previous count}.
SLIDING_WINDOW = Script("""
local cost, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local previous = math.min(tonumber(ARGV[6]), limit)
local live = redis.call('PTTL', KEYS[1]) >= 0
local count = 0
if live then
    count = tonumber(redis.call('GET', KEYS[1]) or 0)
end
if count >= limit or count + previous / tonumber(ARGV[3]) * tonumber(ARGV[4]) >= limit then
    return {0, count, previous}
end
if live then
    count = redis.call('INCRBY', KEYS[1], cost)
else
    redis.call('SET', KEYS[1], cost, 'EX', ARGV[5])
    count = cost
end
return {1, count, previous}
""")

# limit-req (APISIX limit-req/util.lua): a leaky bucket in thousandths of a request; the first
# request of a key starts with no excess. A rejected request leaves the bucket as it was.
# Reply: {admitted 0/1, excess} (a string: Redis would truncate a Lua number).
LEAKY_BUCKET = Script("""
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'excess', 'last')
local excess = 0
if state[1] and state[2] then
    excess = tonumber(state[1]) - rate * math.abs(now - tonumber(state[2])) / 1000 + 1000
    if excess < 0 then
        excess = 0
    end
    if excess > burst then
        return {0, tostring(excess)}
    end
end
redis.call('HSET', KEYS[1], 'excess', excess, 'last', now)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {1, tostring(excess)}
""")

# limit-conn (APISIX limit-conn/util.lua): the requests in flight are members of a sorted set
# scored by when they are forgotten (a worker that died never counts them out); at most
# ARGV[1] of them. Reply: {admitted 0/1, requests in flight with this one}.
CONN_INCOMING = Script("""
local now = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, now)
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[1]) then
    return {0, n}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {1, n + 1}
""")


async def fixed_window(c: RedisClient, key: str, window: int, cost: int) -> tuple[int, float]:
    """Count ``cost`` more; (the window's count, seconds until it resets)."""
    res = await c.eval(FIXED_WINDOW, key, 0, window, cost)
    return int(res[0]), int(res[1]) / 1000.0


async def sliding_window(
    c: RedisClient,
    current: str,
    previous: str,
    limit: int,
    window: int,
    remaining_time: float,
) -> tuple[bool, int, int]:
    """Count one request if the weighted count allows it; (admitted, count, previous count)."""
    raw = await c.get(previous)
    try:
        last = int(raw) if raw is not None else 0
    except ValueError:
        last = 0  # not a counter: someone else wrote the key
    res = await c.eval(
        SLIDING_WINDOW, current, 1, limit, window, repr(remaining_time), 2 * window, last
    )
    return bool(res[0]), int(res[1]), int(res[2])


async def leaky_bucket(
    c: RedisClient, key: str, rate: float, burst: float, now_ms: float
) -> float | None:
    """limit-req: the delay in seconds, or None when the request is rejected."""
    r, b = rate * 1000.0, burst * 1000.0
    ttl = math.ceil(b / r) + 1
    res = await c.eval(LEAKY_BUCKET, key, repr(r), repr(b), repr(now_ms), ttl)
    if not int(res[0]):
        return None
    return float(res[1]) / r


async def conn_incoming(
    c: RedisClient, key: str, most: int, ttl: int, now: int, request_id: str
) -> int | None:
    """limit-conn: the requests in flight with this one, or None when over ``most``."""
    res = await c.eval(CONN_INCOMING, key, most, ttl, now, request_id)
    return int(res[1]) if int(res[0]) else None
