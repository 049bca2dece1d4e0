"""api-breaker (APISIX priority 1005): stop calling an upstream that keeps failing.

Per host + uri (shared by all workers), as APISIX: every ``unhealthy.failures`` upstream answers
with an unhealthy status open the breaker for ``2^ceil(count/failures)`` seconds (at most
``max_breaker_sec``); meanwhile requests are answered ``break_response_code``. After an opening,
``healthy.successes`` healthy answers in a row reset the state.
"""

from __future__ import annotations

import math
from typing import Annotated

import msgspec
from msgspec import Meta

from tollway.plugins.builtin.interpolate import compile_template
from tollway.plugins.kit import Exit, Plugin, RequestContext
from tollway.plugins.kit_counters import Record, shared_table

COUNT_TTL = 86400.0


class Header(msgspec.Struct):
    key: Annotated[str, Meta(min_length=1)]
    value: Annotated[str, Meta(min_length=1)]


class Unhealthy(msgspec.Struct):
    http_statuses: Annotated[list[Annotated[int, Meta(ge=500, le=599)]], Meta(min_length=1)] = (
        msgspec.field(default_factory=lambda: [500])
    )
    failures: Annotated[int, Meta(ge=1)] = 3


class Healthy(msgspec.Struct):
    http_statuses: Annotated[list[Annotated[int, Meta(ge=200, le=499)]], Meta(min_length=1)] = (
        msgspec.field(default_factory=lambda: [200])
    )
    successes: Annotated[int, Meta(ge=1)] = 3


class Conf(msgspec.Struct):
    break_response_code: Annotated[int, Meta(ge=200, le=599)]
    break_response_body: str | None = None
    break_response_headers: list[Header] | None = None
    max_breaker_sec: Annotated[int, Meta(ge=3)] = 300
    unhealthy: Unhealthy = msgspec.field(default_factory=Unhealthy)
    healthy: Healthy = msgspec.field(default_factory=Healthy)

    def __post_init__(self) -> None:
        for statuses in (self.unhealthy.http_statuses, self.healthy.http_statuses):
            if len(set(statuses)) != len(statuses):
                raise ValueError("http_statuses: expected unique items")


def breaker_seconds(unhealthy_count: float, failures: int, max_sec: int) -> float:
    times = max(1, math.ceil(unhealthy_count / failures))
    return float(min(2**times, max_sec))


# Shared-table steps. Counts record: (expire, unhealthy, healthy); open record: (expire, since).


def _read(
    rec: Record | None, now: float, p: float, q: float
) -> tuple[Record | None, Record | None]:
    return rec, rec


def _unhealthy(rec: Record | None, now: float, failures: float, q: float) -> tuple[Record, float]:
    count = (rec[1] if rec else 0.0) + 1.0
    return (now + COUNT_TTL, count, 0.0), count


def _healthy(rec: Record | None, now: float, p: float, q: float) -> tuple[Record | None, float]:
    if rec is None or rec[1] <= 0:
        return rec, 0.0
    healthy = rec[2] + 1.0
    return (rec[0], rec[1], healthy), healthy


def _open(rec: Record | None, now: float, ttl: float, q: float) -> tuple[Record, None]:
    return (now + ttl, now, 0.0), None


def _drop(rec: Record | None, now: float, p: float, q: float) -> tuple[None, None]:
    return None, None


class ApiBreaker(Plugin):
    name = "api-breaker"
    priority = 1005
    schema = Conf

    @staticmethod
    def _key(ctx: RequestContext) -> str:
        return f"{ctx.host}{ctx.path}"

    def access(self, conf: Conf, ctx: RequestContext) -> Exit:
        table = shared_table("plugin-api-breaker")
        key = self._key(ctx)
        counts = table.update("u:" + key, _read)
        if counts is None or counts[1] <= 0:
            return None
        opened = table.update("t:" + key, _read)
        if opened is None:
            return None
        seconds = breaker_seconds(counts[1], conf.unhealthy.failures, conf.max_breaker_sec)
        if opened[1] + seconds < table.now():
            return None
        if conf.break_response_body is None:
            return conf.break_response_code, None
        headers = {
            h.key: compile_template(h.value)(ctx.var) for h in conf.break_response_headers or ()
        }
        return conf.break_response_code, conf.break_response_body, headers

    def log(self, conf: Conf, ctx: RequestContext) -> None:
        status_text = ctx.upstream_status
        if not status_text:
            return
        try:
            status = int(status_text.rsplit(",", 1)[-1].strip())
        except ValueError:
            return
        table = shared_table("plugin-api-breaker")
        key = self._key(ctx)
        if status in conf.unhealthy.http_statuses:
            count = table.update("u:" + key, _unhealthy)
            if count % conf.unhealthy.failures == 0:
                table.update("t:" + key, _open, conf.max_breaker_sec)
            return
        if status not in conf.healthy.http_statuses:
            return
        healthy = table.update("u:" + key, _healthy)
        if healthy >= conf.healthy.successes:
            table.update("t:" + key, _drop)
            table.update("u:" + key, _drop)


PLUGINS = [ApiBreaker]
