"""What the limit-* plugins count: the request's key and the scope its counter belongs to.

APISIX keys a counter by ``<owner resource key>:<conf version>:<key value>``, so counters are per
owning route, service, consumer or global rule and restart when the plugin's conf changes. A
plugin phase here sees only the decoded conf, so the owner is found by comparing the conf with
the raw confs of the request's consumer and route, and by identity with the route's own chain (a
conf that is neither is a global rule's); see :func:`counter_scope`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from tollway.plugins.kit import PerConf, RequestContext

VarFn = Callable[[str], Any]

# core.utils.resolve_var: "$name" or "${name}"; "\$" is a literal dollar.
_VAR = re.compile(r"(\\?)\$(\{([\w.]+)\}|(\w+))")


class CountingTemplate:
    """A ``$var`` template that also reports how many variables had a value (APISIX's
    ``n_resolved``: a var_combination key with none falls back to the client address)."""

    __slots__ = ("_parts",)

    def __init__(self, text: str) -> None:
        parts: list[str | tuple[str]] = []
        pos = 0
        for m in _VAR.finditer(text):
            if m.group(1):
                parts.append(text[pos : m.start()] + m.group(0)[1:])
            else:
                parts.append(text[pos : m.start()])
                parts.append((m.group(3) or m.group(4),))
            pos = m.end()
        parts.append(text[pos:])
        self._parts = parts

    def render(self, var: VarFn) -> tuple[str, int]:
        out: list[str] = []
        resolved = 0
        for p in self._parts:
            if isinstance(p, tuple):
                v = var(p[0])
                if v is not None:
                    resolved += 1
                    out.append(str(v))
            else:
                out.append(p)
        return "".join(out), resolved


def request_key(ctx: RequestContext, key: str, key_type: str, tpl: CountingTemplate | None) -> str:
    """The value counted: a variable, a combination of variables, or a constant; the client
    address when it has no value (APISIX logs "use client IP instead")."""
    value: Any
    if key_type == "constant":
        value = key
    elif key_type == "var_combination":
        assert tpl is not None
        text, n = tpl.render(ctx.var)
        value = text if n else None
    else:
        value = ctx.var(key)
    if value is None:
        value = ctx.remote_addr
    return str(value)


# -- the owner of a conf --------------------------------------------------------------------

_FP: dict[int, tuple[Any, bytes]] = {}
_enc = msgspec.json.Encoder()


def _fingerprint(obj: Any, decode: Callable[[Any], Any] | None) -> bytes:
    """The canonical encoding of a decoded conf (or of a raw conf once decoded), by identity."""
    hit = _FP.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    try:
        fp = _enc.encode(decode(obj) if decode is not None else obj)
    except (msgspec.ValidationError, ValueError, TypeError):
        fp = b""
    if len(_FP) > 20000:
        _FP.clear()
    _FP[id(obj)] = (obj, fp)
    return fp


def counter_scope(ctx: RequestContext, plugin: str, conf: Any, decode: Callable[[Any], Any]) -> str:
    """The scope of a conf's counters (see :func:`find_scope`), found once per conf, consumer
    and route: a pure function of these three (published consumers and routes are never
    modified), so a request looks it up."""
    memo = _SCOPES(conf)
    owner = (ctx.consumer, ctx.route)  # identity-hashed
    scope = memo.get(owner)
    if scope is None:
        scope = find_scope(ctx, plugin, conf, decode)
        if len(memo) >= _SCOPES_PER_CONF:
            memo.clear()
        memo[owner] = scope
    return scope


_SCOPES: PerConf[Any, dict[tuple[Any, Any], str]] = PerConf(lambda conf: {})
_SCOPES_PER_CONF = 256


def find_scope(ctx: RequestContext, plugin: str, conf: Any, decode: Callable[[Any], Any]) -> str:
    """``<owner>:<conf version>`` for a conf: the consumer's when it came from the consumer, the
    route's (merged with its service and plugin config) when it is the route's own, else a
    global rule's. The version is the conf's content, so editing another part of the route
    keeps the counter and editing the conf restarts it (APISIX ``plugin.conf_version``)."""
    fp = _fingerprint(conf, None)
    version = fp.hex() if len(fp) <= 32 else _digest(fp)
    decode = _without_meta(decode)
    consumer = ctx.consumer
    if consumer is not None:
        raw = _raw(consumer.plugins, plugin)
        if raw is not None and _fingerprint(raw, decode) == fp:
            return f"/apisix/consumers/{consumer.username}:{version}"
    route = ctx.matched_route
    if route is not None:
        raw = _raw(route.plugins, plugin)
        if raw is not None and _fingerprint(raw, decode) == fp and ctx.is_route_conf(conf):
            return f"{route.key}:{version}"
    return f"global:{version}"


def _raw(plugins: Mapping[str, Any] | None, name: str) -> Any:
    return plugins.get(name) if plugins else None


def _without_meta(decode: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def run(raw: Any) -> Any:
        if isinstance(raw, Mapping) and "_meta" in raw:
            raw = {k: v for k, v in raw.items() if k != "_meta"}
        return decode(raw)

    return run


def _digest(data: bytes) -> str:
    from hashlib import blake2b

    return blake2b(data, digest_size=12).hexdigest()
