"""Peak-EWMA with power of two choices (APISIX ``balancer/ewma.lua``). Weights are ignored.

Invariant: two distinct random peers among those not tried (and healthy), keep the lower
EWMA of latency; a lone peer is returned as is.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from tollway.balancer.picker import HealthGate, PickContext, Server, mark_tried, usable
from tollway.balancer.state import BalancerState


class EwmaPicker:
    __slots__ = ("_gate", "_rng", "_servers", "_state")

    def __init__(
        self,
        servers: Sequence[Server],
        gate: HealthGate,
        state: BalancerState,
        rng: random.Random,
    ) -> None:
        if not servers:
            raise ValueError("EwmaPicker needs at least one server")
        self._servers = tuple(servers)
        self._gate = gate
        self._state = state
        self._rng = rng

    def pick(self, ctx: PickContext) -> Server | None:
        check = self._gate.check()
        tried = ctx.tried
        peers = self._servers
        if tried or check is not None:
            # Two draws from the whole list that both pass are distributed like two draws
            # from the filtered list; only on a miss do we pay for building that list.
            first, second = self._two(peers)
            if not usable(first, tried, check) or not usable(second, tried, check):
                peers = tuple(s for s in peers if usable(s, tried, check))
                if not peers:
                    return None
                if len(peers) == 1:
                    return peers[0]
                first, second = self._two(peers)
        elif len(peers) == 1:
            return peers[0]
        else:
            first, second = self._two(peers)
        state = self._state
        now = state.now()
        if state.ewma(first.addr, now) > state.ewma(second.addr, now):
            return second
        return first

    def _two(self, peers: Sequence[Server]) -> tuple[Server, Server]:
        n = len(peers)
        if n == 1:
            return peers[0], peers[0]
        a = self._rng.randrange(n)
        b = self._rng.randrange(n - 1)
        if b >= a:
            b += 1
        return peers[a], peers[b]

    def after_balance(
        self, server: Server, ctx: PickContext, *, failed: bool, latency: float | None = None
    ) -> None:
        """Records ``latency`` (connect + response time, seconds) when the caller measured it;
        APISIX records it for the final attempt of a request, failed or not."""
        if latency is not None:
            self._state.record_latency(server.addr, latency, self._state.now())
        mark_tried(server, ctx, failed)
