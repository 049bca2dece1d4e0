"""real-ip (APISIX priority 23000): take the client address from a header or argument.

``source`` names an nginx variable (``http_x_forwarded_for``, ``http_x_real_ip``,
``arg_realip``...). With ``trusted_addresses`` only requests from those peers are rewritten;
for X-Forwarded-For the last address is used, or with ``recursive`` the last one that is not
trusted. An address may carry a port (``1.2.3.4:80``, ``[::1]:80``). Never rejects.
"""

from __future__ import annotations

import socket
from typing import Annotated

import msgspec
from msgspec import Meta

from tollway.plugins.kit import Exit, Plugin, RequestContext
from tollway.plugins.kit_match import IpMatcher


class Conf(msgspec.Struct):
    source: Annotated[str, Meta(min_length=1)]
    trusted_addresses: Annotated[list[str], Meta(min_length=1)] | None = None
    recursive: bool = False

    def __post_init__(self) -> None:
        for i, addr in enumerate(self.trusted_addresses or (), 1):
            try:
                IpMatcher([addr])
            except ValueError:
                # the schema's anyOf ip_def refuses it first (real-ip.t TEST 1)
                raise ValueError(
                    f'property "trusted_addresses" validation failed: failed to validate item '
                    f"{i}: object matches none of the required"
                ) from None


_CACHE: dict[int, tuple[Conf, IpMatcher | None]] = {}


def _matcher(conf: Conf) -> IpMatcher | None:
    hit = _CACHE.get(id(conf))
    if hit is not None and hit[0] is conf:
        return hit[1]
    m = IpMatcher(conf.trusted_addresses) if conf.trusted_addresses else None
    if len(_CACHE) > 10000:
        _CACHE.clear()
    _CACHE[id(conf)] = (conf, m)
    return m


def pick_forwarded(value: str, trusted: IpMatcher | None, recursive: bool) -> str:
    """The client from an X-Forwarded-For list (nginx realip: ``real_ip_recursive``)."""
    addrs = [a.strip() for a in value.split(",") if a.strip()]
    if not addrs:
        return ""
    if recursive and trusted is not None:
        for addr in reversed(addrs):
            host, _ = split_port(addr)
            if host is None or not trusted.match(host):
                return addr
        return addrs[0]
    return addrs[-1]


def split_port(addr: str) -> tuple[str | None, int | None]:
    """(ip, port) of ``ip``, ``ip:port`` or ``[ipv6]:port``; (None, None) if not an address."""
    addr = addr.strip()
    port: int | None = None
    host = addr
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0:
            return None, None
        host, rest = addr[1:end], addr[end + 1 :]
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
        elif rest:
            return None, None
    elif addr.count(":") == 1:
        host, _, p = addr.partition(":")
        if not p.isdigit():
            return None, None
        port = int(p)
    if not _is_ip(host):
        return None, None
    if port is not None and not 0 < port < 65536:
        return None, None  # APISIX drops the whole address (real-ip.t TEST 7 "bad port")
    return host, port


def _is_ip(text: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
            return True
        except (OSError, ValueError):
            continue
    return False


class RealIp(Plugin):
    name = "real-ip"
    priority = 23000
    schema = Conf

    def rewrite(self, conf: Conf, ctx: RequestContext) -> Exit:
        trusted = _matcher(conf)
        if trusted is not None and not trusted.match(ctx.remote_addr):
            return None
        value = ctx.var(conf.source)
        if value is None:
            return None
        text = str(value)
        if conf.source == "http_x_forwarded_for":
            text = pick_forwarded(text, trusted, conf.recursive)
        host, port = split_port(text)
        if host is None:
            return None  # APISIX logs "missing real address" and leaves the peer address
        ctx.remote_addr = host
        if port is not None:
            ctx.remote_port = port
        return None


PLUGINS = [RealIp]
