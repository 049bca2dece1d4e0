"""Redis for plugins: one client (one connection pool) per worker per Redis target.

A target is what APISIX's ``redis*`` policy fields name: a single server (``redis``), a cluster
(``redis-cluster``) or a master/replica found through sentinels (``redis-sentinel``). Confs that
name the same target share its client, created in the worker on first use.

Invariants: a call never takes longer than the target's timeout (the client's socket timeouts,
and an asyncio deadline over the whole call, pool wait included); nothing is retried (a counting
script that timed out may have run, and running it again would count a request twice); every
failure is one exception, :class:`RedisUnavailable`, and the next call simply tries again, so a
Redis that comes back is used again without a restart. Clients never block the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from hashlib import sha1
from typing import Any, Protocol, TypeVar

from tollway.errors import TollwayError

log = logging.getLogger("tollway.plugins")

T = TypeVar("T")

_WARN_EVERY = 10.0  # seconds between two "Redis unavailable" warnings for one target


class RedisUnavailable(TollwayError):
    """Redis could not be reached, was slower than the timeout, or answered with an error."""


class RedisConf(Protocol):
    """The Redis fields of a plugin conf (``limit_redis.RedisFields``)."""

    redis_host: str | None
    redis_port: int
    redis_username: str | None
    redis_password: str | None
    redis_database: int
    redis_timeout: int
    redis_ssl: bool
    redis_ssl_verify: bool
    redis_keepalive_pool: int
    redis_cluster_nodes: list[str] | None
    redis_cluster_ssl: bool
    redis_cluster_ssl_verify: bool
    redis_sentinels: Any
    redis_master_name: str | None
    redis_connect_timeout: int
    redis_read_timeout: int
    sentinel_username: str | None
    sentinel_password: str | None

    @property
    def redis_role(self) -> str: ...  # read-only: the conf narrows it to a Literal


@dataclass(frozen=True, slots=True)
class Target:
    """Everything that makes two confs need different connections (APISIX keys its keepalive
    pools by scheme, host, port, database and a digest of the credentials for the same
    reason)."""

    policy: str
    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    database: int = 0
    ssl: bool = False
    ssl_verify: bool = False
    connect_timeout: float = 1.0
    read_timeout: float = 1.0
    pool_size: int = 100
    master_name: str | None = None
    role: str = "master"
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    @property
    def deadline(self) -> float:
        """The longest a call may take: a connect plus a read."""
        if self.policy == "redis-sentinel":
            return self.connect_timeout + self.read_timeout
        return self.read_timeout

    def describe(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.nodes)
        return f"{self.policy} {self.master_name + '@' if self.master_name else ''}{hosts}"


def target_of(conf: RedisConf, policy: str) -> Target:
    """The target a conf's ``policy`` names (its required fields were checked by the schema)."""
    pw = conf.redis_password or None  # APISIX: an empty password means no AUTH
    if policy == "redis":
        assert conf.redis_host is not None
        t = conf.redis_timeout / 1000.0
        return Target(
            policy, ((conf.redis_host, conf.redis_port),), conf.redis_username, pw,
            conf.redis_database, conf.redis_ssl, conf.redis_ssl_verify, t, t,
            conf.redis_keepalive_pool,
        )  # fmt: skip
    if policy == "redis-cluster":
        assert conf.redis_cluster_nodes is not None
        t = conf.redis_timeout / 1000.0
        nodes = tuple(_host_port(n) for n in conf.redis_cluster_nodes)
        return Target(
            policy, nodes, None, pw, 0, conf.redis_cluster_ssl, conf.redis_cluster_ssl_verify,
            t, t, conf.redis_keepalive_pool,
        )  # fmt: skip
    if policy == "redis-sentinel":
        assert conf.redis_sentinels is not None
        return Target(
            policy,
            tuple((s.host, s.port) for s in conf.redis_sentinels),
            conf.redis_username,
            pw,
            conf.redis_database,
            connect_timeout=conf.redis_connect_timeout / 1000.0,
            read_timeout=conf.redis_read_timeout / 1000.0,
            master_name=conf.redis_master_name,
            role=conf.redis_role,
            sentinel_username=conf.sentinel_username,
            sentinel_password=conf.sentinel_password or None,
        )
    raise ValueError(f"not a Redis policy: {policy}")


def _host_port(node: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (APISIX ``core.utils.parse_addr``; 6379 by default)."""
    host, sep, port = node.rpartition(":")
    if not sep or not port.isdigit() or (host.count(":") and not host.startswith("[")):
        return node.strip("[]"), 6379
    return host.strip("[]"), int(port)


class Script:
    """A Lua script run by its SHA1 (EVALSHA), loaded on the first NOSCRIPT (EVAL)."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = sha1(text.encode()).hexdigest()


class RedisClient:
    """A target's client in this worker."""

    __slots__ = ("_failures", "_last_warning", "_no_script", "_redis", "target")

    def __init__(self, target: Target) -> None:
        # redis-py is imported with the first client: importing it costs every process ~90 ms
        # at start, and most configs use no Redis.
        from redis import exceptions as rx

        self.target = target
        self._redis: Any = _connect(target)
        self._last_warning = 0.0
        self._no_script: type[Exception] = rx.NoScriptError
        self._failures: tuple[type[BaseException], ...] = (
            rx.RedisError,
            rx.RedisClusterException,
            OSError,
            TimeoutError,
        )

    async def eval(self, script: Script, key: str, *args: Any) -> Any:
        """Run ``script`` on one key (a single key is slot-safe on a cluster)."""
        return await self._bounded(self._eval(script, key, args))

    async def _eval(self, script: Script, key: str, args: Sequence[Any]) -> Any:
        try:
            return await self._redis.evalsha(script.sha, 1, key, *args)
        except self._no_script:
            return await self._redis.eval(script.text, 1, key, *args)

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._bounded(self._redis.get(key))
        return value

    async def zrem(self, key: str, member: str) -> None:
        await self._bounded(self._redis.zrem(key, member))

    async def _bounded(self, call: Awaitable[T]) -> T:
        try:
            # asyncio.timeout, not wait_for: no task per call (Python 3.11's wait_for makes one)
            async with asyncio.timeout(self.target.deadline):
                return await call
        except self._failures as e:
            self._warn(e)
            raise RedisUnavailable(f"{type(e).__name__}: {e}") from None

    def _warn(self, e: BaseException) -> None:
        # What operators act on is "Redis is down"; once per interval, not once per request.
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            log.warning("redis %s: %s: %s", self.target.describe(), type(e).__name__, e)

    async def aclose(self) -> None:
        await self._redis.aclose()


def _connect(t: Target) -> Any:
    """The redis-py client for a target; it connects lazily, on the first command."""
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel
    from redis.backoff import NoBackoff

    common: dict[str, Any] = {
        "socket_timeout": t.read_timeout,
        "socket_connect_timeout": t.connect_timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if t.policy == "redis-cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in t.nodes],
            password=t.password,
            ssl=t.ssl,
            ssl_cert_reqs="required" if t.ssl_verify else "none",
            ssl_check_hostname=t.ssl_verify,
            max_connections=t.pool_size,
            **common,
        )
    if t.policy == "redis-sentinel":
        sentinel_kwargs = {
            "username": t.sentinel_username,
            "password": t.sentinel_password,
            "socket_timeout": t.read_timeout,
            "socket_connect_timeout": t.connect_timeout,
        }
        sentinel = Sentinel(list(t.nodes), sentinel_kwargs=sentinel_kwargs)
        assert t.master_name is not None
        pick = sentinel.master_for if t.role == "master" else sentinel.slave_for
        return pick(
            t.master_name, username=t.username, password=t.password, db=t.database, **common
        )
    host, port = t.nodes[0]
    ssl_kwargs: dict[str, Any] = {}
    if t.ssl:
        from redis.asyncio.connection import SSLConnection

        ssl_kwargs = {
            "connection_class": SSLConnection,
            "ssl_cert_reqs": "required" if t.ssl_verify else "none",
            "ssl_check_hostname": t.ssl_verify,
        }
    pool = BlockingConnectionPool(
        host=host,
        port=port,
        db=t.database,
        username=t.username,
        password=t.password,
        max_connections=t.pool_size,
        timeout=t.read_timeout,
        **common,
        **ssl_kwargs,
    )
    return Redis(connection_pool=pool)


_CLIENTS: dict[Target, RedisClient] = {}


def client(target: Target) -> RedisClient:
    """The worker's client for ``target`` (created on first use)."""
    c = _CLIENTS.get(target)
    if c is None:
        c = _CLIENTS[target] = RedisClient(target)
    return c


async def aclose_all() -> None:
    """Close every client of this worker (idempotent: each plugin that uses Redis calls it)."""
    clients = list(_CLIENTS.values())
    _CLIENTS.clear()
    for c in clients:
        try:
            await c.aclose()
        except Exception:  # a client already broken has nothing left to release
            log.debug("closing redis client %s", c.target.describe(), exc_info=True)
