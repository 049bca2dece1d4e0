"""limit-req (APISIX priority 1001): a leaky bucket of ``rate`` requests/s with ``burst``.

resty.limit.req's algorithm over the instance-wide shared table (policy ``local``) or in Redis
(``redis``, ``redis-cluster``: one script per request on the key ``limit_req:<key>``, shared by
every instance on that Redis): each request adds one to the key's excess, which drains at
``rate`` per second; beyond ``burst`` the request is rejected (``rejected_code``, default 503)
and not counted; otherwise it is delayed by ``excess / rate`` seconds unless ``nodelay``. With
Redis unavailable or slower than ``redis_timeout``: 500, or no limit with ``allow_degradation``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tollway.plugins.builtin.limit_redis import RedisFields, check_redis, leaky_bucket
from tollway.plugins.builtin.limit_scope import CountingTemplate, counter_scope, request_key
from tollway.plugins.kit import Exit, PerConf, PhaseResult, Plugin, RequestContext
from tollway.plugins.kit_counters import (
    Record,
    RedisClient,
    RedisUnavailable,
    aclose_all,
    redis_client,
    shared_table,
    target_of,
)

log = logging.getLogger("tollway.plugins")


class Conf(RedisFields):
    rate: Annotated[float, Meta(gt=0)]
    burst: Annotated[float, Meta(ge=0)]
    key: str
    key_type: Literal["var", "var_combination"] = "var"
    policy: Literal["local", "redis", "redis-cluster"] = "local"
    rejected_code: Annotated[int, Meta(ge=200, le=599)] = 503
    rejected_msg: Annotated[str, Meta(min_length=1)] | None = None
    nodelay: bool = False
    allow_degradation: bool = False

    def __post_init__(self) -> None:
        check_redis(self, self.policy)


def leaky_step(
    rec: Record | None, now: float, rate: float, burst: float
) -> tuple[Record | None, float | None]:
    """resty.limit.req ``incoming(key, commit=true)``: the delay in seconds, or None when the
    request is rejected (then the bucket is left as it was). The record is (expire, excess,
    last); it expires once the excess has drained."""
    excess = 0.0
    if rec is not None:
        excess = rec[1] - rate * abs(now - rec[2]) + 1.0
        if excess < 0.0:
            excess = 0.0
        if excess > burst:
            return rec, None
    return (now + (excess + 1.0) / rate + 1.0, excess, now), excess / rate


_TEMPLATES: dict[int, tuple[Conf, CountingTemplate | None]] = {}


def _template(conf: Conf) -> CountingTemplate | None:
    hit = _TEMPLATES.get(id(conf))
    if hit is not None and hit[0] is conf:
        return hit[1]
    tpl = CountingTemplate(conf.key) if conf.key_type == "var_combination" else None
    if len(_TEMPLATES) > 10000:
        _TEMPLATES.clear()
    _TEMPLATES[id(conf)] = (conf, tpl)
    return tpl


class LimitReq(Plugin):
    name = "limit-req"
    priority = 1001
    version = 0.1
    schema = Conf

    def phase_method(self, phase: str, conf: Conf) -> Any:
        # The local policy counts synchronously and waits only to delay a request: the
        # pipeline's fast path (no task) for every request that is not delayed.
        if phase == "access" and conf.policy == "local":
            return self.access_local
        return getattr(self, phase)

    def access_local(self, conf: Conf, ctx: RequestContext) -> PhaseResult:
        key = request_key(ctx, conf.key, conf.key_type, _template(conf))
        counted = f"{counter_scope(ctx, self.name, conf, _decode)}:{key}"
        delay = shared_table("plugin-limit-req").update(counted, leaky_step, conf.rate, conf.burst)
        if delay is None:
            return self._rejected(conf)
        if delay >= 0.001 and not conf.nodelay:
            return asyncio.sleep(delay)  # an awaitable of None: the request goes on after it
        return None

    async def access(self, conf: Conf, ctx: RequestContext) -> Exit:
        if conf.policy == "local":
            res = self.access_local(conf, ctx)
            return await res if res is not None and not isinstance(res, tuple) else res
        key = request_key(ctx, conf.key, conf.key_type, _template(conf))
        counted = f"{counter_scope(ctx, self.name, conf, _decode)}:{key}"
        try:
            delay = await leaky_bucket(
                _client(conf), f"limit_req:{counted}", conf.rate, conf.burst, time.time() * 1e3
            )
        except RedisUnavailable as e:
            log.debug("limit-req: %s", e)
            return None if conf.allow_degradation else (500, None)
        if delay is None:
            return self._rejected(conf)
        if delay >= 0.001 and not conf.nodelay:
            await asyncio.sleep(delay)
        return None

    @staticmethod
    def _rejected(conf: Conf) -> Exit:
        if conf.rejected_msg is not None:
            return conf.rejected_code, {"error_msg": conf.rejected_msg}
        return conf.rejected_code, None

    async def aclose(self) -> None:
        await aclose_all()


def _client_of(conf: Conf) -> RedisClient:
    return redis_client(target_of(conf, conf.policy))


_client = PerConf(_client_of)


def _decode(raw: object) -> Conf:
    return msgspec.convert(raw, Conf)


PLUGINS = [LimitReq]
