"""fault-injection (APISIX priority 11000): delay and/or abort a share of the requests.

``delay`` sleeps ``duration`` seconds, ``abort`` answers ``http_status`` with ``body`` (``$var``
interpolated) and ``headers``; each applies to ``percentage`` of the requests (all when unset)
and only when one of its ``vars`` expressions matches (when set). The delay comes first.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from tollway.plugins.builtin.interpolate import compile_template
from tollway.plugins.kit import Exit, PerConf, Plugin, RequestContext
from tollway.plugins.kit_match import Expr, compile_expr

Percentage = Annotated[int, Meta(ge=0, le=100)]
VarsList = Annotated[list[list[Any]], Meta(max_length=20)]


class Abort(msgspec.Struct):
    http_status: Annotated[int, Meta(ge=200)]
    body: str | None = None
    headers: Annotated[dict[str, str | int | float], Meta(min_length=1)] | None = None
    percentage: Percentage | None = None
    vars: VarsList | None = None


class Delay(msgspec.Struct):
    duration: Annotated[float, Meta(ge=0)]
    percentage: Percentage | None = None
    vars: VarsList | None = None


class Conf(msgspec.Struct):
    abort: Abort | None = None
    delay: Delay | None = None

    def __post_init__(self) -> None:
        if self.abort is None and self.delay is None:
            raise ValueError("expect object to have at least 1 properties")
        if self.abort is not None and self.abort.headers:
            for name in self.abort.headers:
                if ":" in name or not name:
                    raise ValueError(f'property "abort.headers" has an invalid name: {name}')
        for part in (self.abort, self.delay):
            for rule in (part.vars if part is not None else None) or ():
                compile_expr(rule)  # raises ExprError (a ValueError) with its message


class Compiled:
    __slots__ = ("abort_body", "abort_headers", "abort_vars", "delay_vars")

    def __init__(self, conf: Conf) -> None:
        a, d = conf.abort, conf.delay
        self.abort_vars = [compile_expr(v) for v in a.vars] if a and a.vars else None
        self.delay_vars = [compile_expr(v) for v in d.vars] if d and d.vars else None
        self.abort_body = compile_template(a.body) if a and a.body is not None else None
        self.abort_headers: list[tuple[str, Callable[[Callable[[str], Any]], str]]] = [
            (k, compile_template(str(v))) for k, v in ((a.headers or {}) if a else {}).items()
        ]


_compiled = PerConf(Compiled)


def sample_hit(percentage: int | None, rand: Callable[[int, int], int] = random.randint) -> bool:
    return percentage is None or rand(1, 100) <= percentage


def vars_match(rules: list[Expr] | None, var: Callable[[str], Any]) -> bool:
    """Unset vars match; otherwise any one rule must (OR)."""
    return rules is None or any(r.eval(var) for r in rules)


class FaultInjection(Plugin):
    name = "fault-injection"
    priority = 11000
    schema = Conf

    def phase_method(self, phase: str, conf: Conf) -> Any:
        # Without a delay nothing waits: the pipeline's fast path (no task per request).
        if phase == "rewrite" and conf.delay is None:
            return self.rewrite_now
        return getattr(self, phase)

    def rewrite_now(self, conf: Conf, ctx: RequestContext) -> Exit:
        """``rewrite`` for a conf without ``delay``, as a plain call."""
        abort = conf.abort
        if abort is None:
            return None
        comp = _compiled(conf)
        abort_vars = vars_match(comp.abort_vars, ctx.var)
        if sample_hit(abort.percentage) and abort_vars:
            headers = {k: tpl(ctx.var) for k, tpl in comp.abort_headers}
            body = comp.abort_body(ctx.var) if comp.abort_body is not None else None
            return abort.http_status, body, headers
        return None

    async def rewrite(self, conf: Conf, ctx: RequestContext) -> Exit:
        comp = _compiled(conf)
        abort_vars = vars_match(comp.abort_vars, ctx.var) if conf.abort else False
        delay, abort = conf.delay, conf.abort
        if delay is not None and sample_hit(delay.percentage):
            if vars_match(comp.delay_vars, ctx.var):
                await asyncio.sleep(delay.duration)
        if abort is not None and sample_hit(abort.percentage) and abort_vars:
            headers = {k: tpl(ctx.var) for k, tpl in comp.abort_headers}
            body = comp.abort_body(ctx.var) if comp.abort_body is not None else None
            return abort.http_status, body, headers
        return None


PLUGINS = [FaultInjection]
