"""referer-restriction (APISIX priority 2990): allow or deny by the Referer's host.

Hosts are exact names or ``*.suffix`` wildcards (matching any host that ends with ``.suffix``).
A missing or unparsable Referer is rejected unless ``bypass_missing``.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
from msgspec import Meta

from tollway.plugins.kit import Exit, Plugin, RequestContext

Host = Annotated[str, Meta(pattern=r"^\*?[0-9a-zA-Z-._\[\]:]+$")]
Hosts = Annotated[list[Host], Meta(min_length=1)]
_HOST = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://(?:[^@/?#]*@)?(\[[^\]]*\]|[^:/?#]*)")


class Conf(msgspec.Struct):
    bypass_missing: bool = False
    whitelist: Hosts | None = None
    blacklist: Hosts | None = None
    message: Annotated[str, Meta(min_length=1, max_length=1024)] = (
        "Your referer host is not allowed"
    )

    def __post_init__(self) -> None:
        if (self.whitelist is None) == (self.blacklist is None):
            raise ValueError(
                "value should match only one schema, but matches "
                + ("none" if self.whitelist is None else "both schemas 1 and 2")
            )


class HostMatcher:
    __slots__ = ("exact", "suffixes")

    def __init__(self, hosts: list[str]) -> None:
        self.exact = {h.lower() for h in hosts if not h.startswith("*")}
        self.suffixes = tuple(h[1:].lower() for h in hosts if h.startswith("*"))

    def match(self, host: str) -> bool:
        host = host.lower()
        return host in self.exact or (bool(self.suffixes) and host.endswith(self.suffixes))


_CACHE: dict[int, tuple[Conf, HostMatcher]] = {}


def _matcher(conf: Conf) -> HostMatcher:
    hit = _CACHE.get(id(conf))
    if hit is not None and hit[0] is conf:
        return hit[1]
    m = HostMatcher(conf.whitelist or conf.blacklist or [])
    if len(_CACHE) > 10000:
        _CACHE.clear()
    _CACHE[id(conf)] = (conf, m)
    return m


def referer_host(referer: str | None) -> str | None:
    if not referer:
        return None
    m = _HOST.match(referer)
    return m.group(1) or None if m else None


def allowed(conf: Conf, referer: str | None) -> bool:
    host = referer_host(referer)
    if host is None:
        return conf.bypass_missing
    listed = _matcher(conf).match(host)
    return listed if conf.whitelist is not None else not listed


class RefererRestriction(Plugin):
    name = "referer-restriction"
    priority = 2990
    schema = Conf

    def access(self, conf: Conf, ctx: RequestContext) -> Exit:
        if allowed(conf, ctx.get_header("referer")):
            return None
        return 403, {"message": conf.message}


PLUGINS = [RefererRestriction]
