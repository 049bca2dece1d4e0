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
from tollway.plugins.kit import Exit, HeaderGroup, PerConf, Plugin, RequestContext, var_getter
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
        # seconds to the reset -> encoded: at most ``time_window`` values, each encoded once
        self.resets: dict[int, bytes] = {}

    def reset_text(self, reset: int) -> bytes:
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
    __slots__ = (
        "count_text",
        "count_tpl",
        "fixed",
        "key_tpl",
        "key_var",
        "last_owner",
        "lines",
        "plugin",
        "prefix",
        "rules",
        "scoped",
        "scopes",
        "slots",
        "table",
        "window_tpl",
    )

    def __init__(self, conf: Conf) -> None:
        # The common conf (one fixed window, numbers, not $vars): its count and window are
        # known here, so a request computes only its key.
        self.fixed: tuple[int, int] | None = None
        if (
            conf.rules is None
            and conf.window_type == "fixed"
            and isinstance(conf.count, int)
            and isinstance(conf.time_window, int)
        ):
            self.fixed = (conf.count, conf.time_window)
        self.count_text = str(conf.count)
        self.key_var = var_getter(conf.key) if conf.key_type == "var" else None
        # The quota headers' lines, for the plugin_metadata they were built from.
        self.lines = QuotaLines(DEFAULT_HEADERS, self.count_text)
        self.table: SharedTable | None = None  # opened at the first request (in the worker)
        # (consumer, route) -> the counters' scope: a pure function of the three objects
        self.scopes: dict[tuple[Any, Any], str] = {}
        # The fixed window's request path: the last (consumer, route) seen, and its scope's
        # key value -> table slot (a keep-alive client's address is the same str object
        # request after request: its hash is cached, no key string is built per request).
        self.last_owner: tuple[Any, Any] = (None, None)
        self.prefix = ""  # that scope
        self.scoped: dict[str, Slot] | None = None
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

    def quota_lines(self, h: MetadataConf) -> QuotaLines:
        if h is not self.lines.meta:
            self.lines = QuotaLines(h, self.count_text)
        return self.lines

    def scope(self, owner: tuple[Any, Any], scope: str) -> str:
        if len(self.scopes) >= 256:
            self.scopes.clear()
        self.scopes[owner] = scope
        return scope

    def access(self, conf: Conf, ctx: RequestContext) -> Exit:
        """The fixed window of the local policy (count and window are numbers): what runs on
        every request of a limited route, a bound method the chain calls for this conf."""
        fixed = self.fixed
        assert fixed is not None
        get = self.key_var
        if get is not None:
            value = get(ctx)
            key = ctx.remote_addr if value is None else value
            if type(key) is not str:
                key = str(key)
        else:
            key = request_key(ctx, conf.key, conf.key_type, self.key_tpl)
        scoped = self.scoped
        owner = self.last_owner
        if scoped is None or owner[0] is not ctx.consumer or owner[1] is not ctx.route:
            scoped = self._scoped(conf, ctx)
        hit = scoped.get(key)
        table = self.table
        assert table is not None  # opened with ``scoped``
        if hit is None:
            hit = self._locate(key)
        # resty.limit.count: incr(key, 1, 0, window); the window starts at the key's first use
        used, ttl = table.incr_at(hit, 1.0, fixed[1])
        remaining = int(fixed[0] - used)
        if not conf.show_limit_quota_header:
            return LimitCount._rejected(conf, {}) if remaining < 0 else None
        reset = int(ttl)  # whole(ttl), inlined: seconds rounded up
        if ttl - reset > 1e-6:
            reset += 1
        src = ctx.upstream_source  # LimitCount.metadata_for, inlined
        assert self.plugin is not None
        h = self.plugin.metadata if src is None else src.plugin_metadata.get("limit-count")
        if h is None:
            h = DEFAULT_HEADERS
        lines = self.lines
        if h is not lines.meta:
            lines = self.quota_lines(h)
        if remaining < 0:
            return LimitCount._rejected(conf, lines.texts(0, reset))
        # Set in access, as APISIX does: the answer's head writes them, with no header_filter
        # phase for them. Only the two numbers are encoded here (kit_head.EarlyHeaders);
        # a concatenation, not unpacking: one tuple built, not a list turned into one.
        encoded = lines.resets.get(reset)
        if encoded is None:
            encoded = lines.reset_text(reset)
        tail = (b"%d" % remaining, CRLF, lines.reset_name, SEP, encoded, CRLF)
        quota = (lines.group, lines.head + tail)
        early = ctx.resp_early
        if early is None:
            ctx.resp_early = [quota]
        else:
            early.append(quota)
        return None

    def _scoped(self, conf: Conf, ctx: RequestContext) -> dict[str, Slot]:
        """The key -> slot map of the request's counter scope (found once per consumer and
        route, then kept while they repeat)."""
        owner = (ctx.consumer, ctx.route)
        prefix = conf.group
        if prefix is None:
            prefix = self.scopes.get(owner)
            if prefix is None:
                prefix = self.scope(owner, counter_scope(ctx, "limit-count", conf, _decode))
        if self.table is None:
            self.table = shared_table("plugin-limit-count")
        scoped = self.slots.get(prefix)
        if scoped is None:
            if len(self.slots) >= 256:
                self.slots.clear()
            scoped = self.slots[prefix] = {}
        self.last_owner = owner
        self.prefix = prefix
        self.scoped = scoped
        return scoped

    def _locate(self, key: str) -> Slot:
        """The table slot of ``key`` in the current scope, kept for its next request."""
        scoped = self.scoped
        assert scoped is not None and self.table is not None
        hit = self.table.locate(f"{self.prefix}:{key}")
        if len(scoped) >= 10_000:
            scoped.clear()
        scoped[key] = hit
        return hit


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
                return comp.access
        return getattr(self, phase)

    def access(self, conf: Conf, ctx: RequestContext) -> Exit:
        comp = _compiled(conf)
        if comp.fixed is None:
            return self._access_windows(conf, ctx)
        comp.plugin = self
        out = comp.access(conf, ctx)
        if out is None and conf.show_limit_quota_header and ctx.resp_early:
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
