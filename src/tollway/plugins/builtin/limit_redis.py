"""The Redis fields of the limit-* plugins (APISIX ``utils/redis-schema``), accepted and checked.

Tollway has no Redis client: a conf with a ``redis*`` policy loads, and the plugin answers as
APISIX does when Redis is unreachable (500, or no limit with ``allow_degradation``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

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
