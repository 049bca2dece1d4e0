"""limit-conn (APISIX priority 1003): at most ``conn`` concurrent requests per key, plus
``burst`` more that are delayed.

resty.limit.conn over the instance-wide shared table (policy ``local``), or in Redis (``redis``,
``redis-cluster``: the requests in flight are members of the sorted set ``limit_conn:<key>``,
shared by every instance on that Redis, each forgotten after ``key_ttl`` seconds should its
instance never count it out): access counts the request in (beyond ``conn + burst`` it is
rejected, 503 by default), the log phase counts it out (on Redis in a background task, as
APISIX's timer). A request over ``conn`` waits ``default_conn_delay * floor((n - 1) / conn)``
seconds. With Redis unavailable or slower than ``redis_timeout``: 500, or no limit with
``allow_degradation``. Deviation: APISIX adapts the unit delay to observed latencies per worker
unless ``only_use_default_delay``; here the default delay is always used.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tollway.plugins.builtin.interpolate import compile_template
from tollway.plugins.builtin.limit_redis import RedisFields, check_redis, conn_incoming
from tollway.plugins.builtin.limit_scope import CountingTemplate, counter_scope, request_key
from tollway.plugins.kit import Exit, PerConf, PhaseResult, Plugin, RequestContext
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

TTL = 3600.0  # a record refreshed by no request for this long is forgotten (a crashed worker)


class Rule(msgspec.Struct):
    conn: Annotated[int, Meta(gt=0)] | str
    burst: Annotated[int, Meta(ge=0)] | str
    key: str


class Conf(RedisFields):
    conn: Annotated[int, Meta(gt=0)] | str | None = None
    burst: Annotated[int, Meta(ge=0)] | str | None = None
    default_conn_delay: Annotated[float, Meta(gt=0)] | None = None
    only_use_default_delay: bool = False
    key: str | None = None
    key_type: Literal["var", "var_combination"] = "var"
    rules: list[Rule] | None = None
    policy: Literal["local", "redis", "redis-cluster"] = "local"
    rejected_code: Annotated[int, Meta(ge=200, le=599)] = 503
    rejected_msg: Annotated[str, Meta(min_length=1)] | None = None
    allow_degradation: bool = False
    key_ttl: int = 3600

    def __post_init__(self) -> None:
        # APISIX's required list, in its order: conn, burst, default_conn_delay, key
        for name in ("conn", "burst", "default_conn_delay", "key"):
            if getattr(self, name) is None and (self.rules is None or name == "default_conn_delay"):
                raise ValueError(f'property "{name}" is required')
        check_redis(self, self.policy)


def incoming_step(
    rec: Record | None, now: float, conn: float, burst: float
) -> tuple[Record | None, int | None]:
    """Count one request in; the number in flight with it, or None when over conn + burst."""
    n = (rec[1] if rec is not None else 0.0) + 1.0
    if n > conn + burst:
        return rec, None
    return (now + TTL, n, 0.0), int(n)


def leaving_step(rec: Record | None, now: float, p: float, q: float) -> tuple[Record | None, int]:
    n = (rec[1] if rec is not None else 1.0) - 1.0
    if n <= 0.0:
        return None, 0
    return (now + TTL, n, 0.0), int(n)


def conn_delay(n: int, conn: int, unit_delay: float) -> float:
    return unit_delay * ((n - 1) // conn) if n > conn else 0.0


class Compiled:
    __slots__ = ("items",)

    def __init__(self, conf: Conf) -> None:
        # (conn, burst, key, key_type, key template) per rule; the plain conf is one rule.
        self.items: list[tuple[Any, Any, str, str, CountingTemplate | None]] = []
        if conf.rules is None:
            assert conf.conn is not None and conf.burst is not None and conf.key is not None
            tpl = CountingTemplate(conf.key) if conf.key_type == "var_combination" else None
            self.items.append((_num(conf.conn), _num(conf.burst), conf.key, conf.key_type, tpl))
        else:
            for r in conf.rules:
                tpl = CountingTemplate(r.key)
                self.items.append((_num(r.conn), _num(r.burst), r.key, "var_combination", tpl))


def _num(v: int | str) -> Any:
    return compile_template(v) if isinstance(v, str) else v


def _resolve(v: Any, ctx: RequestContext) -> int | None:
    if isinstance(v, int):
        return v
    try:
        return int(float(v(ctx.var)))
    except ValueError:
        return None


_compiled = PerConf(Compiled)


class LimitConn(Plugin):
    name = "limit-conn"
    priority = 1003
    version = 0.1
    schema = Conf

    def phase_method(self, phase: str, conf: Conf) -> Any:
        # The local policy counts synchronously and waits only to delay a request: the
        # pipeline's fast path (no task) for every request that is not delayed.
        if phase == "access" and conf.policy == "local":
            return self.access_local
        return getattr(self, phase)

    def access_local(self, conf: Conf, ctx: RequestContext) -> PhaseResult:
        scope = counter_scope(ctx, self.name, conf, _decode)
        delay = 0.0
        table = shared_table("plugin-limit-conn")
        for conn_v, burst_v, key, key_type, tpl in _compiled(conf).items:
            conn, burst = _resolve(conn_v, ctx), _resolve(burst_v, ctx)
            if conn is None or burst is None or conn <= 0:
                log.debug("limit-conn: conn/burst of %s did not resolve", key)
                if conf.allow_degradation:
                    continue
                return 500, None
            counted = _counted(scope, conf, ctx, key, key_type, tpl)
            if counted is None:
                continue
            n_in = table.update(counted, incoming_step, conn, burst)
            if n_in is None:
                return _rejected(conf)
            _remember(ctx, (table, counted))
            assert conf.default_conn_delay is not None
            delay = max(delay, conn_delay(n_in, conn, conf.default_conn_delay))
        if delay >= 0.001:
            return asyncio.sleep(delay)  # an awaitable of None: the request goes on after it
        return None

    async def access(self, conf: Conf, ctx: RequestContext) -> Exit:
        if conf.policy == "local":
            res = self.access_local(conf, ctx)
            return await res if res is not None and not isinstance(res, tuple) else res
        scope = counter_scope(ctx, self.name, conf, _decode)
        delay = 0.0
        for conn_v, burst_v, key, key_type, tpl in _compiled(conf).items:
            conn, burst = _resolve(conn_v, ctx), _resolve(burst_v, ctx)
            if conn is None or burst is None or conn <= 0:
                log.debug("limit-conn: conn/burst of %s did not resolve", key)
                if conf.allow_degradation:
                    continue
                return 500, None
            counted = _counted(scope, conf, ctx, key, key_type, tpl)
            if counted is None:
                continue
            try:
                n_in = await self._incoming(conf, ctx, counted, conn, burst)
            except RedisUnavailable as e:
                log.debug("limit-conn: %s", e)
                return None if conf.allow_degradation else (500, None)
            if n_in is None:
                return _rejected(conf)
            assert conf.default_conn_delay is not None
            delay = max(delay, conn_delay(n_in, conn, conf.default_conn_delay))
        if delay >= 0.001:
            await asyncio.sleep(delay)
        return None

    @staticmethod
    async def _incoming(
        conf: Conf, ctx: RequestContext, counted: str, conn: int, burst: int
    ) -> int | None:
        """Count the request in: the number in flight with it, or None when over the limit."""
        if conf.policy == "local":
            table = shared_table("plugin-limit-conn")
            n_in = table.update(counted, incoming_step, conn, burst)
            if n_in is not None:
                _remember(ctx, (table, counted))
            return n_in
        client = _client(conf)
        key = f"limit_conn:{counted}"
        request_id = uuid.uuid4().hex  # APISIX: the request id, else a v4 uuid
        n_in = await conn_incoming(
            client, key, conn + burst, conf.key_ttl, int(time.time()), request_id
        )
        if n_in is not None:
            _remember(ctx, (client, key, request_id))
        return n_in

    def log(self, conf: Conf, ctx: RequestContext) -> None:
        state = ctx.plugin_state
        held = state.pop(self.name, None) if state else None
        for entry in held or ():
            if len(entry) == 2:
                entry[0].update(entry[1], leaving_step)
            else:
                _leave_later(*entry)

    async def aclose(self) -> None:
        # Count out what is still in flight on Redis, then close the clients.
        if _LEAVING:
            await asyncio.wait(list(_LEAVING), timeout=2.0)
        await aclose_all()


def _counted(
    scope: str,
    conf: Conf,
    ctx: RequestContext,
    key: str,
    key_type: str,
    tpl: CountingTemplate | None,
) -> str | None:
    """The counter of one rule for this request; None when a rule's key does not resolve."""
    if tpl is not None and conf.rules is not None:
        text, n = tpl.render(ctx.var)
        return f"{scope}:{text}:{key}" if n else None
    return f"{scope}:{request_key(ctx, key, key_type, tpl)}"


def _rejected(conf: Conf) -> Exit:
    if conf.rejected_msg is not None:
        return conf.rejected_code, {"error_msg": conf.rejected_msg}
    return conf.rejected_code, None


_LEAVING: set[asyncio.Task[None]] = set()


def _leave_later(client: RedisClient, key: str, request_id: str) -> None:
    """The log phase cannot wait for Redis: the request is counted out in a tracked task."""
    task = asyncio.get_running_loop().create_task(_leave(client, key, request_id))
    _LEAVING.add(task)
    task.add_done_callback(_LEAVING.discard)


async def _leave(client: RedisClient, key: str, request_id: str) -> None:
    try:
        await client.zrem(key, request_id)
    except RedisUnavailable as e:
        # Forgotten by Redis after key_ttl (the member's score), as in APISIX.
        log.debug("limit-conn: counting out %s: %s", key, e)


def _client_of(conf: Conf) -> RedisClient:
    return redis_client(target_of(conf, conf.policy))


_client = PerConf(_client_of)


def _remember(
    ctx: RequestContext, entry: tuple[SharedTable, str] | tuple[RedisClient, str, str]
) -> None:
    state = ctx.plugin_state
    if state is None:
        state = ctx.plugin_state = {}
    state.setdefault("limit-conn", []).append(entry)


def _decode(raw: object) -> Conf:
    return msgspec.convert(raw, Conf)


PLUGINS = [LimitConn]
