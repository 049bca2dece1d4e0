"""The client address behind a trusted proxy: nginx's realip module as APISIX configures it.

APISIX's defaults (``nginx_config.http``): ``real_ip_header: X-Real-IP``,
``real_ip_from: [127.0.0.1, "unix:"]``, ``real_ip_recursive: off``. A connection from a trusted
address may name the client in that header; ``remote_addr`` (routing, ``remote_addrs``,
ip-restriction, limit keys, X-Forwarded-For, X-Real-IP upstream) is then that address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class RealIp:
    header: bytes  # lowercase name
    trusted: tuple[Network, ...]
    unix: bool  # connections over a unix socket are trusted
    recursive: bool

    @classmethod
    def from_conf(cls, header: str, sources: Iterable[str], recursive: bool | str) -> RealIp:
        """Raises ValueError naming a bad ``real_ip_from`` entry."""
        nets: list[Network] = []
        unix = False
        for src in sources:
            if src == "unix:":
                unix = True
                continue
            try:
                nets.append(ipaddress.ip_network(src, strict=False))
            except ValueError:
                raise ValueError(f"invalid address or CIDR: {src}") from None
        on = recursive is True or (isinstance(recursive, str) and recursive.lower() == "on")
        return cls(header.lower().encode("latin-1"), tuple(nets), unix, on)

    def trusts(self, peer: str | None) -> bool:
        """Whether a connection from ``peer`` (None: a unix socket) may name the client."""
        if peer is None:
            return self.unix
        if not self.trusted:
            return False
        try:
            addr = ipaddress.ip_address(peer.partition("%")[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr.version == n.version and addr in n for n in self.trusted)

    def client(self, value: bytes) -> str | None:
        """The client address a trusted peer's header names, or None if it names none.

        A list (X-Forwarded-For) gives its last address; with ``recursive`` the last one that
        is not itself trusted."""
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            return None
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            return None
        chosen = items[-1]
        if self.recursive:
            for item in reversed(items):
                chosen = item
                if not self.trusts(item):
                    break
        try:
            return str(ipaddress.ip_address(chosen))
        except ValueError:
            return None
