"""LVS-style interleaved weighted round robin, as lua-resty-balancer's ``roundrobin.lua``.

Invariant: every cycle of ``sum(weights) / gcd`` picks gives each node exactly
``weight / gcd`` picks; weight-0 nodes are never picked while any weight is positive.
This is not nginx's smooth WRR: with weights 5,1,1 the sequence is a,a,a,a,a,b,c (rotated).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from tollway.balancer.picker import (
    HealthGate,
    PickContext,
    Server,
    any_usable,
    mark_tried,
)


class RoundRobinPicker:
    """Walks nodes in config order keeping a current weight ``cw``.

    A pick returns the next node with ``weight >= cw``; at the end of the list ``cw -= gcd``
    and, once ``cw <= 0``, ``cw = max_weight``. The walk starts after a random node with
    ``cw = max_weight`` (``get_random_node_id``). Tried or unhealthy nodes are skipped by
    walking on, which keeps the cycle shares of the others exact.
    """

    __slots__ = ("_candidates", "_cw", "_gate", "_gcd", "_index", "_max", "_servers", "_weights")

    def __init__(self, servers: Sequence[Server], gate: HealthGate, rng: random.Random) -> None:
        if not servers:
            raise ValueError("RoundRobinPicker needs at least one server")
        self._servers = tuple(servers)
        weights = [s.weight for s in self._servers]
        if not any(weights):
            # lua: gcd = max = 0, so cw = 0 and every node qualifies: plain rotation.
            weights = [1] * len(weights)
        self._weights = tuple(weights)
        self._gcd = math.gcd(*weights)
        self._max = max(weights)
        self._candidates = tuple(s for s, w in zip(self._servers, weights, strict=True) if w > 0)
        self._gate = gate
        self._index = rng.randrange(len(self._servers))
        self._cw = self._max

    def _next(self) -> Server:
        weights = self._weights
        n = len(weights)
        i = self._index
        cw = self._cw
        while True:
            i += 1
            if i >= n:
                i = 0
                cw -= self._gcd
                if cw <= 0:
                    cw = self._max
            if weights[i] >= cw:
                self._index = i
                self._cw = cw
                return self._servers[i]

    def pick(self, ctx: PickContext) -> Server | None:
        check = self._gate.check()
        tried = ctx.tried
        server = self._next()
        if server.addr not in tried and (check is None or check(server)):
            return server
        if not any_usable(self._candidates, tried, check):
            return None
        while True:
            server = self._next()
            if server.addr not in tried and (check is None or check(server)):
                return server

    def after_balance(
        self, server: Server, ctx: PickContext, *, failed: bool, latency: float | None = None
    ) -> None:
        mark_tried(server, ctx, failed)
