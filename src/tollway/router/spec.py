"""The router's inputs and output: what a route asks for, what a request offers, what matched.

Invariant: these are plain values; the router never mutates a RouteSpec or a RequestView.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["DISABLED", "Match", "RequestView", "RouteSpec"]

# The methods of a route with ``status: 0``: no request has this method, so the route matches
# nothing and costs no check, yet keeps its place in the router.
DISABLED: frozenset[str] = frozenset({"<route disabled>"})


@dataclass(slots=True)
class RouteSpec:
    """One route as the router sees it (route fields already merged with its service's hosts).

    Not ``frozen``, though never modified (see the module's invariant): a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, 2.6 us per spec against 1.1 us,
    paid per route at every full build in every worker (issue #17)."""

    id: str
    uris: tuple[str, ...]
    priority: int = 0
    methods: frozenset[str] | None = None  # None or empty: any method
    hosts: tuple[str, ...] | None = None  # lowercased; the route's hosts, else its service's
    remote_addrs: tuple[str, ...] | None = None  # IPv4/IPv6 addresses and CIDRs
    vars: list[Any] | None = None  # raw lua-resty-expr rule
    payload: Any = None  # opaque to the router; handed back in Match


class RequestView(Protocol):
    """What matching reads from a request.

    ``path`` is the normalised, decoded path (see :func:`normalize_path`) and ``host`` the
    lowercased Host without port. ``var(name)`` returns a request variable (``arg_x``,
    ``http_x``, ``cookie_x``, ``uri``...) or None; it is only called for routes with ``vars``
    (and for hosts that contain ``:``, which are compared with ``http_host`` like APISIX).
    """

    method: str
    path: str
    host: str
    remote_addr: str

    def var(self, name: str) -> Any: ...


@dataclass(slots=True)
class Match:
    """The winning route (its id and the payload its spec carried) and the uri parameters
    captured for it (None when it captures none). The router keeps no RouteSpec once a route is
    placed (issue #17: at 100k routes, one object less per route): what a request needs of the
    route beyond its id is in the payload."""

    id: str
    payload: Any
    params: dict[str, str] | None
