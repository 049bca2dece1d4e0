"""ip-restriction (APISIX priority 3000): allow or deny by client address (IPs and CIDRs)."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
from msgspec import Meta

from tollway.plugins.kit import Exit, Plugin, RequestContext
from tollway.plugins.kit_match import IpMatcher

Addrs = list[str]  # minItems 1 lives in the oneOf branches (checked below)
# What APISIX's ip_def patterns accept: dotted quads of 1-3 digit octets <= 255 (CIDR /0-32),
# or IPv6 text of hex groups and colons (any prefix digits; the range is checked later).
_IP_SHAPE = re.compile(
    r"^((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    r"(/(3[0-2]|[12]?\d))?$|^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(/\d{1,3})?$"
)


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
        if not (self.whitelist or self.blacklist):  # an empty list fails its branch
            raise ValueError("value should match only one schema, but matches none")
        for name in ("whitelist", "blacklist"):
            for addr in getattr(self, name) or ():
                try:
                    IpMatcher([addr])
                except ValueError:
                    # Not even shaped like an IP or CIDR: the schema's oneOf fails (APISIX
                    # ip-restriction.t); shaped like one but out of range: its later check.
                    if not _IP_SHAPE.match(addr):
                        raise ValueError(
                            "value should match only one schema, but matches none"
                        ) from None
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
