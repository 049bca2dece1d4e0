"""Domain nodes to balancer servers, given the instance's DNS answers. Pure code.

The supervisor (health checks) and the workers (pickers) both call ``expand`` with the same
answers, so a target's ``addr`` is the same string on both sides.

* An IP literal (``10.0.0.1``, ``[::1]``) is used as written; ``localhost`` is 127.0.0.1 without
  any lookup (APISIX does the same through its hosts file).
* A domain with an answer becomes one server per IP, keeping the node's port, weight and priority.
* A domain whose lookup failed (answer ``()``) has no server: the rest of the upstream keeps
  serving, and an upstream left with no server answers 503 (APISIX).
* A domain not looked up yet is kept as written; the connection resolves it itself until the first
  answer arrives, so a new domain node never causes a 503 window.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tollway.balancer import Server

LOCALHOST = "localhost"
LOCALHOST_IPS = ("127.0.0.1",)


def is_ip(host: str) -> bool:
    """``10.0.0.1`` or ``[::1]`` (node hosts bracket IPv6, APISIX)."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif not host[:1].isdigit():
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def domain_of(host: str) -> str | None:
    """The name to look up for a node host, or None when no lookup is needed."""
    if is_ip(host):
        return None
    name = host.lower()
    if name == LOCALHOST:
        return None
    return name


def domain_names(hosts: Iterable[str]) -> frozenset[str]:
    names = set()
    for host in hosts:
        name = domain_of(host)
        if name is not None:
            names.add(name)
    return frozenset(names)


def node_host(ip: str) -> str:
    """An answer's IP as a node host: IPv6 bracketed."""
    return f"[{ip}]" if ":" in ip else ip


@dataclass(frozen=True, slots=True)
class Expanded:
    """``servers`` in config order; ``node_hosts`` maps a server addr to the node's own host
    (domain or ``localhost``) for Host/SNI; ``names`` are the domains this upstream depends on."""

    servers: list[Server]
    node_hosts: dict[str, str]
    names: frozenset[str]


def expand(servers: Sequence[Server], answers: Mapping[str, Sequence[str]]) -> Expanded:
    out: list[Server] = []
    hosts: dict[str, str] = {}
    names: set[str] = set()
    for server in servers:
        host = server.host
        if is_ip(host):
            out.append(server)
            continue
        name = host.lower()
        if name == LOCALHOST:
            ips: Sequence[str] = LOCALHOST_IPS
        else:
            names.add(name)
            answer = answers.get(name)
            if answer is None:
                out.append(server)  # not looked up yet: the connection resolves it
                continue
            ips = answer
        for ip in ips:
            resolved = Server(node_host(ip), server.port, server.weight, server.priority)
            out.append(resolved)
            hosts[resolved.addr] = host
    return Expanded(out, hosts, frozenset(names))
