"""limit-count (APISIX priority 1002): at most ``count`` requests per ``time_window`` per key.

A fixed window starts at a key's first request (a counter whose TTL is the window), as APISIX's
local policy (resty.limit.count over a shared dict); a sliding window counts per wall-clock
window and weighs the previous window's count by the part of it still in the last
``time_window`` seconds (APISIX ``sliding-window.lua``). The local policy counts in the
instance-wide shared table, so every worker counts against the same budget, synchronously; the
``redis*`` policies count in Redis (``limit_count_redis``), so every instance on that Redis
does, and their access phase is a coroutine.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import msgspec

from tollway.plugins.builtin.interpolate import compile_template
from tollway.plugins.builtin.limit_count_conf import (
    DEFAULT_HEADERS,
    Conf,
    MetadataConf,
    Window,
)
from tollway.plugins.builtin.limit_count_redis import close_redis_counters, redis_counter
from tollway.plugins.builtin.limit_scope import CountingTemplate, counter_scope, request_key
from tollway.plugins.builtin.limit_windows import count_step, sliding_local
from tollway.plugins.kit import (
    Exit,
    HeaderGroup,
    PerConf,
    Plugin,
    RequestContext,
    UpstreamSource,
    var_getter,
)
from tollway.plugins.kit_counters import RedisUnavailable, SharedTable, Slot, shared_table
from tollway.plugins.kit_head import early_texts

log = logging.getLogger("tollway.plugins")


class QuotaLines:
    """A fixed window's quota headers under one set of names (``plugin_metadata``): their
    group and the constant parts of their lines, encoded once (the limit's line, the other
    two names), so a request encodes only what remains and the seconds to the reset."""

    __slots__ = ("group", "head", "limit_text", "meta", "reset_name", "resets")

    def __init__(self, meta: MetadataConf, limit: str) -> None:
        self.meta = meta
        group = self.group = HeaderGroup(
            (meta.limit_header, meta.remaining_header, meta.reset_header)
        )
        names = group.line_names
        self.limit_text = limit
        self.head = (names[0], SEP, limit.encode(), CRLF, names[1], SEP)
        self.reset_name = names[2]
        # seconds to the reset (a whole float) -> encoded: at most ``time_window`` values,
        # each encoded once
        self.resets: dict[float, bytes] = {}

    def reset_text(self, reset: float) -> bytes:
        """``reset`` encoded, kept for the next request with the same seconds to go."""
        resets = self.resets
        if len(resets) >= 4096:  # a window of more than 4096 s: start over
            resets.clear()
        text = resets[reset] = b"%d" % reset
        return text

    def texts(self, remaining: int, reset: int) -> dict[str, str]:
        """The three headers as a name -> value map (a rejection's answer)."""
        values = (self.limit_text, str(remaining), str(reset))
        return dict(zip(self.group.names, values, strict=True))


SEP = b": "
CRLF = b"\r\n"


class Compiled:
    """What a conf needs per request, found once: its templates, and for the common conf (one
    fixed window, numbers, not ``$vars``, the local policy) the whole request path
    (``access``, ``access_no_quota``: bound methods the chain calls)."""

    __slots__ = (
        "consumer_seen",
        "count",
        "count_text",
        "count_tpl",
        "fixed",
        "incr_at",
        "key_of",
        "key_tpl",
        "lines",
        "metadata_seen",
        "plugin",
        "prefix",
        "route_seen",
        "rules",
        "scoped",
        "scopes",
        "slots",
        "table",
        "window",
        "window_tpl",
    )

    def __init__(self, conf: Conf) -> None:
        # The common conf: its count and window are known here, so a request computes only its
        # key (as floats: the table's counts are, so no conversion per request).
        self.fixed: tuple[int, int] | None = None
        if (
            conf.rules is None
            and conf.window_type == "fixed"
            and isinstance(conf.count, int)
            and isinstance(conf.time_window, int)
        ):
            self.fixed = (conf.count, conf.time_window)
        self.count = float(conf.count) if isinstance(conf.count, int) else 0.0
        self.window = float(conf.time_window) if isinstance(conf.time_window, int) else 0.0
        self.count_text = str(conf.count)
        # The key's getter (a built-in variable's: ``remote_addr`` reads the attribute).
        self.key_of: Callable[[RequestContext], Any] = (
            var_getter(conf.key) if conf.key_type == "var" else partial(_key, conf, self)
        )
        # The quota headers' lines, for the plugin_metadata they were built from.
        self.lines = QuotaLines(DEFAULT_HEADERS, self.count_text)
        # The runtime's plugin_metadata map the lines were checked against (_UNSEEN: none yet).
        self.metadata_seen: Any = _UNSEEN
        self.table: SharedTable | None = None  # opened at the first request (in the worker)
        self.incr_at: Callable[[Slot, float, float], tuple[float, float]] = _unopened
        # (consumer, route) -> the counters' scope: a pure function of the three objects
        self.scopes: dict[tuple[Any, Any], str] = {}
        # The fixed window's request path: the last consumer and route seen (_UNSEEN: none
        # yet), and their scope's key value -> table slot (a keep-alive client's address is
        # the same str object request after request: its hash is cached, no key string is
        # built per request).
        self.consumer_seen: Any = _UNSEEN
        self.route_seen: Any = _UNSEEN
        self.prefix = ""  # that scope
        self.scoped: dict[str, Slot] = {}
        self.slots: dict[str, dict[str, Slot]] = {}  # scope -> its key value -> table slot
        self.plugin: LimitCount | None = None  # set by phase_method
        self.key_tpl = CountingTemplate(conf.key) if conf.key_type == "var_combination" else None
        self.count_tpl = compile_template(conf.count) if isinstance(conf.count, str) else None
        self.window_tpl = (
            compile_template(conf.time_window) if isinstance(conf.time_window, str) else None
        )
        self.rules = [
            (
                rule,
                CountingTemplate(rule.key),
                compile_template(rule.count) if isinstance(rule.count, str) else None,
                compile_template(rule.time_window) if isinstance(rule.time_window, str) else None,
            )
            for rule in conf.rules or ()
        ]

    def scope(self, owner: tuple[Any, Any], scope: str) -> str:
        if len(self.scopes) >= 256:
            self.scopes.clear()
        self.scopes[owner] = scope
        return scope

    def access(self, conf: Conf, ctx: RequestContext) -> Exit:
        """The fixed window of the local policy with the quota headers (the default): what
        runs on every request of a limited route, a bound method the chain calls."""
        # resty.limit.count: incr(key, 1, 0, window); the window starts at the key's first use
        used, ttl = self.incr_at(self._slot(conf, ctx), 1.0, self.window)
        remaining = self.count - used  # a float: b"%d" formats it as the integer it is
        src = ctx.upstream_source
        if src is None or src.plugin_metadata is not self.metadata_seen:
            self._follow_metadata(src)  # plugin_metadata/limit-count renames the headers
        lines = self.lines
        # the seconds to the reset, rounded up (limit_windows.whole), as a float
        reset = -((_WHOLE_SLACK - ttl) // 1.0)
        if remaining < 0:
            return LimitCount._rejected(conf, lines.texts(0, int(reset)))
        # Set in access, as APISIX does: the answer's head writes them, with no header_filter
        # phase for them. Only the two numbers are encoded here (kit_head.EarlyHeaders);
        # a concatenation, not unpacking: one tuple built, not a list turned into one.
        encoded = lines.resets.get(reset)
        if encoded is None:
            encoded = lines.reset_text(reset)
        tail = (b"%d" % remaining, CRLF, lines.reset_name, SEP, encoded, CRLF)
        quota = (lines.group, lines.head + tail)
        ctx.set_early_headers(quota)
        return None

    def access_no_quota(self, conf: Conf, ctx: RequestContext) -> Exit:
        """``access`` for ``show_limit_quota_header: false``: the count only."""
        used, _ = self.incr_at(self._slot(conf, ctx), 1.0, self.window)
        return LimitCount._rejected(conf, {}) if used > self.count else None

    def _slot(self, conf: Conf, ctx: RequestContext) -> Slot:
        """The request's counter: its key in the scope of the route (and consumer) it came by."""
        key = self.key_of(ctx)
        if type(key) is not str:
            key = _key_text(key, ctx)
        if ctx.route is not self.route_seen or ctx.consumer is not self.consumer_seen:
            self._follow(conf, ctx)
        hit = self.scoped.get(key)
        if hit is None:
            hit = self._locate(key)
        return hit

    def _follow(self, conf: Conf, ctx: RequestContext) -> None:
        """The request's consumer and route are not the last ones: their counter scope's key
        -> slot map (found once per consumer and route, then kept while they repeat)."""
        owner = (ctx.consumer, ctx.route)
        prefix = conf.group
        if prefix is None:
            prefix = self.scopes.get(owner)
            if prefix is None:
                prefix = self.scope(owner, counter_scope(ctx, "limit-count", conf, _decode))
        if self.table is None:
            table = self.table = shared_table("plugin-limit-count")
            self.incr_at = table.incr_at
        scoped = self.slots.get(prefix)
        if scoped is None:
            if len(self.slots) >= 256:
                self.slots.clear()
            scoped = self.slots[prefix] = {}
        self.consumer_seen, self.route_seen = owner
        self.prefix = prefix
        self.scoped = scoped

    def _follow_metadata(self, src: UpstreamSource | None) -> None:
        """The quota lines for the request's ``plugin_metadata/limit-count`` (the runtime's:
        checked again only when the runtime's metadata map is another one)."""
        if src is None:  # (no runtime: a unit test) the plugin's latest, looked up each time
            assert self.plugin is not None
            h = self.plugin.metadata
            self.metadata_seen = _UNSEEN
        else:
            h = src.plugin_metadata.get("limit-count")
            self.metadata_seen = src.plugin_metadata
        if h is None:
            h = DEFAULT_HEADERS
        if h is not self.lines.meta:
            self.lines = QuotaLines(h, self.count_text)

    def _locate(self, key: str) -> Slot:
        """The table slot of ``key`` in the current scope, kept for its next request."""
        scoped = self.scoped
        assert self.table is not None
        hit = self.table.locate(f"{self.prefix}:{key}")
        if len(scoped) >= 10_000:
            scoped.clear()
        scoped[key] = hit
        return hit


_UNSEEN = object()  # (no route, consumer or metadata map is this one)
_WHOLE_SLACK = 1e-6  # limit_windows.whole's: a float error above a whole second is not a second


def _unopened(hit: Slot, value: float, ttl: float) -> tuple[float, float]:
    raise AssertionError("the table is opened with the first scope")  # pragma: no cover


def _key(conf: Conf, comp: Compiled, ctx: RequestContext) -> str:
    """A ``var_combination`` or ``constant`` key's value (limit_scope.request_key)."""
    return request_key(ctx, conf.key, conf.key_type, comp.key_tpl)


def _key_text(value: Any, ctx: RequestContext) -> str:
    """A key variable's value that is not a str: the client address when it has none (APISIX
    logs "use client IP instead"), else its text."""
    return str(ctx.remote_addr if value is None else value)


_compiled = PerConf(Compiled)


def _number(value: int | str, tpl: Any, ctx: RequestContext) -> int | None:
    if tpl is None:
        return int(value)
    text = tpl(ctx.var)
    try:
        n = float(text)
    except ValueError:
        return None
    return int(n) if n > 0 and math.isfinite(n) else None


def windows(conf: Conf, ctx: RequestContext) -> list[Window] | None:
    """The windows this request counts against (APISIX ``get_rules``); None when a ``$var``
    count or time_window does not resolve to a number."""
    comp = _compiled(conf)
    if conf.rules is None:
        assert conf.count is not None and conf.time_window is not None
        count = _number(conf.count, comp.count_tpl, ctx)
        window = _number(conf.time_window, comp.window_tpl, ctx)
        if count is None or window is None:
            return None
        key = request_key(ctx, conf.key, conf.key_type, comp.key_tpl)
        return [Window(count, window, key, DEFAULT_HEADERS)]
    out: list[Window] = []
    for rule, key_tpl, count_tpl, window_tpl in comp.rules:
        count = _number(rule.count, count_tpl, ctx)
        window = _number(rule.time_window, window_tpl, ctx)
        key, n = key_tpl.render(ctx.var)
        if count is None or window is None or n == 0:
            continue  # APISIX skips a rule that does not resolve
        headers = DEFAULT_HEADERS
        if rule.header_prefix:
            p = rule.header_prefix
            headers = MetadataConf(
                f"X-{p}-RateLimit-Limit", f"X-{p}-RateLimit-Remaining", f"X-{p}-RateLimit-Reset"
            )
        out.append(Window(count, window, f"{key}:{rule.key}", headers))
    return out


class LimitCount(Plugin):
    name = "limit-count"
    priority = 1002
    version = 0.5
    schema = Conf
    metadata_schema = MetadataConf

    def phase_method(self, phase: str, conf: Conf) -> Any:
        # Only the Redis policies need a coroutine; the local one stays on the synchronous path.
        if phase == "access" and conf.policy != "local":
            return self.access_redis
        if phase == "header_filter" and (
            not conf.show_limit_quota_header
            or (conf.policy == "local" and _compiled(conf).fixed is not None)
        ):
            # no quota headers to set, or set in access (ctx.set_early_headers): the
            # response head is not filtered for them
            return None
        if phase == "access":
            comp = _compiled(conf)
            if comp.fixed is not None:
                comp.plugin = self
                return comp.access if conf.show_limit_quota_header else comp.access_no_quota
        return getattr(self, phase)

    def access(self, conf: Conf, ctx: RequestContext) -> Exit:
        comp = _compiled(conf)
        if comp.fixed is None:
            return self._access_windows(conf, ctx)
        comp.plugin = self
        if not conf.show_limit_quota_header:
            return comp.access_no_quota(conf, ctx)
        out = comp.access(conf, ctx)
        if out is None and ctx.resp_early:
            # The quota as a name -> value map in plugin_state, as the other forms keep
            # theirs, for a caller of this method. The request path calls ``comp.access``
            # (``phase_method``) and nothing there reads it back: the head is written from
            # ctx.resp_early.
            group, pieces = ctx.resp_early[-1]
            self._keep(ctx, dict(zip(group.names, early_texts(pieces), strict=True)))
        return out

    def _access_windows(self, conf: Conf, ctx: RequestContext) -> Exit:
        """Rules, sliding windows, ``$var`` numbers: the windows are resolved per request."""
        wins = windows(conf, ctx)
        if not wins:
            log.debug("limit-count: no rule resolved for %s", ctx.path)
            return None if conf.allow_degradation else (500, None)
        table = shared_table("plugin-limit-count")
        prefix = self._prefix(conf, ctx)
        sliding = conf.window_type == "sliding"
        now = time.time() if sliding else 0.0
        headers: dict[str, str] = {}
        for w in wins:
            key = f"{prefix}:{w.key}"
            if sliding:
                allowed, remaining, reset = sliding_local(table, key, w.count, w.time_window, now)
            else:
                allowed, remaining, reset = table.update(key, count_step, w.count, w.time_window)
            self._quota_headers(ctx, conf, w, (remaining, reset), headers)
            if not allowed:
                return self._rejected(conf, headers)
        self._keep(ctx, headers)
        return None

    async def access_redis(self, conf: Conf, ctx: RequestContext) -> Exit:
        wins = windows(conf, ctx)
        if not wins:
            log.debug("limit-count: no rule resolved for %s", ctx.path)
            return None if conf.allow_degradation else (500, None)
        counter = redis_counter(conf)
        prefix = self._prefix(conf, ctx)
        headers: dict[str, str] = {}
        for w in wins:
            try:
                allowed, remaining, reset = await counter.take(
                    f"{prefix}:{w.key}", w.count, w.time_window
                )
            except RedisUnavailable as e:
                log.debug("limit-count: %s", e)
                if conf.allow_degradation:
                    return None  # APISIX: no limit while Redis is unavailable
                return 500, {"error_msg": "failed to limit count"}
            self._quota_headers(ctx, conf, w, (remaining, reset), headers)
            if not allowed:
                return self._rejected(conf, headers)
        self._keep(ctx, headers)
        return None

    def _prefix(self, conf: Conf, ctx: RequestContext) -> str:
        if conf.group is not None:
            return conf.group
        return counter_scope(ctx, self.name, conf, _decode)

    def _quota_headers(
        self,
        ctx: RequestContext,
        conf: Conf,
        w: Window,
        counted: tuple[int, int],
        headers: dict[str, str],
    ) -> None:
        if conf.show_limit_quota_header:
            remaining, reset = counted
            h = w.headers
            if h is DEFAULT_HEADERS:
                # plugin_metadata/limit-count renames the headers
                h = self.metadata_for(ctx) or DEFAULT_HEADERS
            headers[h.limit_header] = str(w.count)
            headers[h.remaining_header] = str(remaining)
            headers[h.reset_header] = str(reset)

    @staticmethod
    def _rejected(conf: Conf, headers: dict[str, str]) -> Exit:
        body = {"error_msg": conf.rejected_msg} if conf.rejected_msg else None
        return conf.rejected_code, body, headers

    def _keep(self, ctx: RequestContext, headers: dict[str, str]) -> None:
        if headers:
            state = ctx.plugin_state
            if state is None:
                state = ctx.plugin_state = {}
            state[self.name] = headers

    def header_filter(self, conf: Conf, ctx: RequestContext) -> None:
        # APISIX sets the quota headers in access (ngx.header); they reach the response here.
        state = ctx.plugin_state
        headers = state.get(self.name) if state else None
        if headers:
            ctx.set_response_headers(headers)

    async def aclose(self) -> None:
        await close_redis_counters()


def _decode(raw: Any) -> Conf:
    return msgspec.convert(raw, Conf)


PLUGINS = [LimitCount]
