"""traffic-split (APISIX priority 966, access): send a request to one of weighted upstreams.

Rules are tried in order and the first match wins; the ``match`` entries of a rule are OR-ed
and the ``vars`` inside one entry AND-ed (lua-resty-expr). A rule without ``match`` always
matches. The chosen rule picks among its ``weighted_upstreams`` with resty.roundrobin (the LVS
interleaved WRR of the kit's ``WeightedRoundRobin``), so every cycle of ``sum(weights)/gcd``
requests gives each entry exactly ``weight/gcd`` of them, per worker. An entry with neither
``upstream_id`` nor ``upstream`` stands for the route's own upstream.

Matches APISIX ``apisix/plugins/traffic-split.lua`` in these details:

* The picker is built once per rule (per conf version) and keeps its position across requests.
* Entries are keyed as Lua's ``server_list`` table: two entries with the same ``upstream_id``,
  or two weight-only entries, are one server (the last weight wins).
* An inline upstream is rebuilt from ``name, type, hash_on, pass_host, upstream_host, key,
  nodes`` and ``timeout`` only, with a 15 s default for each timeout (APISIX ``set_upstream``);
  other fields (``checks``, ``retries``, ``scheme``...) do not apply.
* ``match: []`` keeps the verdict of the previous rule (APISIX's ``match_passed`` carries over),
  and ``rules: []`` is the 500 that APISIX's Lua error gives.
* An ``upstream_id`` that does not exist is APISIX's 502 from ``handle_upstream``.
"""

from __future__ import annotations

import logging
import random
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from tollway.plugins.kit import Exit, PerConf, Plugin, RequestContext
from tollway.plugins.kit_match import Expr, ExprError, compile_expr
from tollway.plugins.kit_upstream import (
    UpstreamId,
    WeightedRoundRobin,
    error_page,
    upstream_conf_error,
)

log = logging.getLogger("tollway.plugins")

MAX_WEIGHTED_UPSTREAMS = 20
# APISIX set_upstream copies only these fields of an inline upstream.
_INLINE_FIELDS = ("name", "type", "hash_on", "pass_host", "upstream_host", "key", "nodes")
_INLINE_TIMEOUT = 15


class WeightedUpstream(msgspec.Struct):
    upstream_id: UpstreamId | None = None
    upstream: dict[str, Any] | None = None
    weight: Annotated[int, Meta(ge=0)] = 1


class Match(msgspec.Struct):
    vars: list[Any] | None = None


def _default_upstreams() -> list[WeightedUpstream]:
    return [WeightedUpstream()]


class Rule(msgspec.Struct, forbid_unknown_fields=True):
    match: list[Match] | None = None
    weighted_upstreams: Annotated[
        list[WeightedUpstream], Meta(min_length=1, max_length=MAX_WEIGHTED_UPSTREAMS)
    ] = msgspec.field(default_factory=_default_upstreams)


class Conf(msgspec.Struct, forbid_unknown_fields=True):
    rules: list[Rule] | None = None


# -- the pure core --------------------------------------------------------------------------

# What a pick resolves to: the route's own upstream, a configured one, or an inline conf.
ROUTE = ("route",)


def inline_conf(upstream: dict[str, Any]) -> dict[str, Any]:
    """The upstream conf APISIX's ``set_upstream`` builds from an inline one."""
    conf = {k: upstream[k] for k in _INLINE_FIELDS if k in upstream}
    given = upstream.get("timeout") or {}
    conf["timeout"] = {k: given.get(k) or _INLINE_TIMEOUT for k in ("connect", "send", "read")}
    return conf


class Split:
    """One rule's weighted choice. ``pick()`` returns ``ROUTE``, ``("id", upstream_id)`` or
    ``("inline", conf)``."""

    __slots__ = ("_picker", "_targets")

    def __init__(self, entries: list[WeightedUpstream], rng: random.Random) -> None:
        weights: dict[Any, int] = {}  # Lua's server_list: later duplicates replace the weight
        targets: dict[Any, tuple[Any, ...]] = {}
        for i, e in enumerate(entries):
            if e.upstream_id is not None:
                key: Any = ("id", e.upstream_id)
                targets[key] = key
            elif e.upstream is not None:
                key = ("inline", i)
                targets[key] = ("inline", inline_conf(e.upstream))
            else:
                key = ROUTE
                targets[key] = ROUTE
            weights[key] = e.weight
        keys = list(weights)
        self._targets = tuple(targets[k] for k in keys)
        self._picker = WeightedRoundRobin([weights[k] for k in keys], rng)

    def pick(self) -> tuple[Any, ...]:
        return self._targets[self._picker.pick()]


class Compiled:
    """Per conf: each rule's match expressions (None = no ``match``) and its split."""

    __slots__ = ("rules",)

    def __init__(self, conf: Conf, rng: random.Random) -> None:
        self.rules: list[tuple[list[Expr] | None, Split]] = []
        for rule in conf.rules or ():
            exprs = None if rule.match is None else [compile_expr(m.vars) for m in rule.match]
            self.rules.append((exprs, Split(rule.weighted_upstreams, rng)))

    def choose(self, var: Any) -> Split | None:
        """The split of the first matching rule (APISIX's loop, quirks included)."""
        passed = True
        for exprs, split in self.rules:
            if exprs is None:
                return split
            for expr in exprs:
                passed = expr.eval(var)
                if passed:
                    break
            if passed:
                return split
        return None


_RNG = random.Random()


def _compile(conf: Conf) -> Compiled:
    return Compiled(conf, _RNG)


_compiled = PerConf(_compile)


def _check_upstream(ri: int, ui: int, upstream: dict[str, Any]) -> None:
    detail = upstream_conf_error(upstream)
    if detail is not None:
        raise ValueError(
            f'property "rules" validation failed: failed to validate item {ri}: '
            f'property "weighted_upstreams" validation failed: failed to validate item {ui}: '
            f'property "upstream" validation failed: {detail}'
        )


class TrafficSplit(Plugin):
    name = "traffic-split"
    priority = 966
    schema = Conf

    def check(self, conf: Conf) -> None:
        for ri, rule in enumerate(conf.rules or (), 1):
            for ui, entry in enumerate(rule.weighted_upstreams, 1):
                if entry.upstream is not None:
                    _check_upstream(ri, ui, entry.upstream)
        for rule in conf.rules or ():
            for m in rule.match or ():
                try:
                    compile_expr(m.vars)
                except ExprError as e:
                    raise ValueError(f"failed to validate the 'vars' expression: {e}") from None

    def access(self, conf: Conf, ctx: RequestContext) -> Exit:
        if conf.rules is None:
            return None
        comp = _compiled(conf)
        if not comp.rules:
            # APISIX: ``rules: []`` reaches ipairs(nil), a Lua error.
            return 500, error_page(500), {"Content-Type": "text/html"}
        split = comp.choose(ctx.var)
        if split is None:
            return None
        target = split.pick()
        if target is ROUTE:
            return None
        if target[0] == "id":
            if not ctx.set_upstream(upstream_id=str(target[1])):
                log.debug("traffic-split: upstream %s not found", target[1])
                return 502, error_page(502), {"Content-Type": "text/html"}
            return None
        if not ctx.set_upstream(conf=target[1]):
            log.debug("traffic-split: inline upstream rejected: %s", target[1])
            return 500, error_page(500), {"Content-Type": "text/html"}
        return None


PLUGINS = [TrafficSplit]
