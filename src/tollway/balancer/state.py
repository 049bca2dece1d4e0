"""Balancer state that outlives pickers: least_conn in-flight counts and EWMA latencies.

One ``BalancerState`` per process, passed to every ``create_picker`` call, plays the role of
APISIX's per-worker ``resource_key#priority`` heaps and the ``balancer-ewma`` shared dict, so a
picker rebuilt for a new config version sees the load the old one handed out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from tollway.balancer.least_conn import LeastConnTable

EWMA_DECAY_TIME = 10.0  # seconds (apisix/balancer/ewma.lua DECAY_TIME)
EWMA_TTL = 60.0  # seconds an EWMA survives without updates (balancer-ewma shm TTL)


class BalancerState:
    __slots__ = ("_ewma", "_least_conn", "now")

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.now = now
        self._least_conn: dict[str, LeastConnTable] = {}
        # addr -> (ewma seconds, last touched). Keyed by addr like APISIX's upstream_addr.
        self._ewma: dict[str, tuple[float, float]] = {}

    # least_conn

    def least_conn_table(self, key: str) -> LeastConnTable:
        """The table of ``resource_key#priority``, created on first use."""
        table = self._least_conn.get(key)
        if table is None:
            table = self._least_conn[key] = LeastConnTable()
        return table

    def inflight(self, key: str) -> dict[str, int]:
        """In-flight counts of ``resource_key#priority``: addr -> count (absent = 0)."""
        table = self._least_conn.get(key)
        return dict(table.counts) if table is not None else {}

    def discard(self, resource_key: str) -> None:
        """Forget the least_conn tables of a deleted upstream."""
        prefix = resource_key + "#"
        for key in [k for k in self._least_conn if k.startswith(prefix)]:
            del self._least_conn[key]

    # ewma

    def ewma(self, addr: str, now: float) -> float:
        """The EWMA decayed towards 0 up to ``now`` (APISIX scores with rtt = 0)."""
        entry = self._ewma.get(addr)
        if entry is None:
            return 0.0
        value, touched = entry
        elapsed = now - touched
        if elapsed > EWMA_TTL:
            return 0.0
        if elapsed <= 0:
            return value
        return value * math.exp(-elapsed / EWMA_DECAY_TIME)

    def record_latency(self, addr: str, rtt: float, now: float) -> None:
        """``ewma = ewma * w + rtt * (1 - w)``, ``w = exp(-dt / 10 s)``. The first sample (or
        one after the TTL) is taken as is: APISIX starts from ``last_touched_at = 0``, which
        makes ``w`` vanish with a real clock."""
        entry = self._ewma.get(addr)
        if entry is None or now - entry[1] > EWMA_TTL:
            value = rtt
        else:
            old, touched = entry
            weight = math.exp(-max(now - touched, 0.0) / EWMA_DECAY_TIME)
            value = old * weight + rtt * (1.0 - weight)
        self._ewma[addr] = (value, now)
        if len(self._ewma) > 4096:
            self._expire_ewma(now)

    def _expire_ewma(self, now: float) -> None:
        for addr in [a for a, (_, t) in self._ewma.items() if now - t > EWMA_TTL]:
            del self._ewma[addr]
