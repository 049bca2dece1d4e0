"""ip-restriction (APISIX priority 3000): allow or deny by client address (IPs and CIDRs)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from tollway.expr import IpMatcher
from tollway.plugins.kit import Exit, Plugin, RequestContext

Addrs = Annotated[list[str], Meta(min_length=1)]


class Conf(msgspec.Struct):
    message: Annotated[str, Meta(min_length=1, max_length=1024)] = "Your IP address is not allowed"
    response_code: Annotated[int, Meta(ge=403, le=404)] = 403
    whitelist: Addrs | None = None
    blacklist: Addrs | None = None

    def __post_init__(self) -> None:
        # JSON schema oneOf: exactly one of the two lists.
        if (self.whitelist is None) == (self.blacklist is None):
            raise ValueError(
                "value should match only one schema, but matches "
                + ("none" if self.whitelist is None else "both schemas 1 and 2")
            )
        for name in ("whitelist", "blacklist"):
            for addr in getattr(self, name) or ():
                try:
                    IpMatcher([addr])
                except ValueError:
                    raise ValueError(f"invalid ip address: {addr}") from None


_CACHE: dict[int, tuple[Conf, IpMatcher]] = {}


def _matcher(conf: Conf) -> IpMatcher:
    hit = _CACHE.get(id(conf))
    if hit is not None and hit[0] is conf:
        return hit[1]
    m = IpMatcher(conf.whitelist or conf.blacklist or ())
    if len(_CACHE) > 10000:
        _CACHE.clear()
    _CACHE[id(conf)] = (conf, m)
    return m


class IpRestriction(Plugin):
    name = "ip-restriction"
    priority = 3000
    schema = Conf

    def access(self, conf: Conf, ctx: RequestContext) -> Exit:
        listed = _matcher(conf).match(ctx.remote_addr)
        blocked = listed if conf.blacklist is not None else not listed
        if blocked:
            return conf.response_code, {"message": conf.message}
        return None


PLUGINS = [IpRestriction]
