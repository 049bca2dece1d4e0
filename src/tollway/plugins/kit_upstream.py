"""The plugin kit's upstream choices (traffic-split and plugins like it).

* ``WeightedRoundRobin(weights, rng)``: resty.roundrobin's interleaved weighted round robin
  (the balancer's own), over positions: ``pick()`` returns an index into ``weights``; every
  cycle of ``sum(weights)/gcd`` picks gives index ``i`` exactly ``weights[i]/gcd`` of them.
* ``upstream_conf_error(conf)``: why an inline upstream conf (as in a route's ``upstream``) is
  invalid, in APISIX's words, or None. ``ctx.set_upstream(conf=...)`` compiles a valid one.
* ``UpstreamId``: the schema type of an upstream id (a string or a positive integer).
* ``error_page(status)``: nginx's HTML page for an error status, as the gateway sends it.

Plugins import these from here, not from the balancer, model or proxy modules behind them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from tollway.balancer.picker import HealthGate, PickContext, Server
from tollway.balancer.roundrobin import RoundRobinPicker
from tollway.errors import ConfigError
from tollway.model import decode_item
from tollway.model.objects import ID as UpstreamId
from tollway.proxy.http import error_page

__all__ = ["UpstreamId", "WeightedRoundRobin", "error_page", "upstream_conf_error"]


class WeightedRoundRobin:
    """Weighted round robin over positions ``0..len(weights)-1``; keeps its place between
    picks (one per conf version, per worker). All-zero weights rotate plainly (Lua's gcd 0)."""

    __slots__ = ("_ctx", "_picker")

    def __init__(self, weights: Sequence[int], rng: random.Random) -> None:
        # Index-encoded pseudo servers: the balancer sees only weights and positions.
        servers = [Server("weighted", i, w) for i, w in enumerate(weights)]
        self._picker = RoundRobinPicker(servers, HealthGate(servers, None), rng)
        self._ctx = PickContext()  # never marked tried: a choice is not retried

    def pick(self) -> int:
        server = self._picker.pick(self._ctx)
        assert server is not None  # no health gate, no tried set: always a server
        return server.port


def upstream_conf_error(conf: dict[str, Any]) -> str | None:
    """None when ``conf`` is a valid upstream object, else the schema's message."""
    try:
        decode_item("upstreams", conf)
    except ConfigError as e:
        return str(e).removeprefix("invalid configuration: ")
    return None
