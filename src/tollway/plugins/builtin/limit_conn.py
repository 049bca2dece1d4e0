"""limit-conn (APISIX priority 1003): at most ``conn`` concurrent requests per key, plus
``burst`` more that are delayed.

resty.limit.conn over the instance-wide shared table: access counts the request in (beyond
``conn + burst`` it is rejected, 503 by default), the log phase counts it out. A request over
``conn`` waits ``default_conn_delay * floor((n - 1) / conn)`` seconds. Deviation: APISIX adapts
the unit delay to observed latencies per worker unless ``only_use_default_delay``; here the
default delay is always used.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tollway.plugins import shared_counters
from tollway.plugins.builtin.interpolate import compile_template
from tollway.plugins.builtin.limit_redis import RedisFields, check_redis
from tollway.plugins.builtin.limit_scope import CountingTemplate, counter_scope, request_key
from tollway.plugins.kit import Exit, PerConf, Plugin, RequestContext
from tollway.plugins.shared_counters import Record, SharedTable

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

    async def access(self, conf: Conf, ctx: RequestContext) -> Exit:
        if conf.policy != "local":
            return None if conf.allow_degradation else (500, None)
        table = shared_counters.table("plugin-limit-conn")
        scope = counter_scope(ctx, self.name, conf, _decode)
        delay = 0.0
        for conn_v, burst_v, key, key_type, tpl in _compiled(conf).items:
            conn, burst = _resolve(conn_v, ctx), _resolve(burst_v, ctx)
            if conn is None or burst is None or conn <= 0:
                log.debug("limit-conn: conn/burst of %s did not resolve", key)
                if conf.allow_degradation:
                    continue
                return 500, None
            if tpl is not None and conf.rules is not None:
                text, n = tpl.render(ctx.var)
                if n == 0:
                    continue
                counted = f"{scope}:{text}:{key}"
            else:
                counted = f"{scope}:{request_key(ctx, key, key_type, tpl)}"
            n_in = table.update(counted, incoming_step, conn, burst)
            if n_in is None:
                if conf.rejected_msg is not None:
                    return conf.rejected_code, {"error_msg": conf.rejected_msg}
                return conf.rejected_code, None
            _remember(ctx, table, counted)
            assert conf.default_conn_delay is not None
            delay = max(delay, conn_delay(n_in, conn, conf.default_conn_delay))
        if delay >= 0.001:
            await asyncio.sleep(delay)
        return None

    def log(self, conf: Conf, ctx: RequestContext) -> None:
        state = ctx.plugin_state
        held = state.pop(self.name, None) if state else None
        for table, key in held or ():
            table.update(key, leaving_step)


def _remember(ctx: RequestContext, table: SharedTable, key: str) -> None:
    state = ctx.plugin_state
    if state is None:
        state = ctx.plugin_state = {}
    state.setdefault("limit-conn", []).append((table, key))


def _decode(raw: object) -> Conf:
    return msgspec.convert(raw, Conf)


PLUGINS = [LimitConn]
