"""Least connections (APISIX ``balancer/least_conn.lua``): lowest ``(1 + inflight) / weight``.

Invariant: the in-flight counts of ``resource_key#priority`` live in one ``LeastConnTable``
held by ``BalancerState``; pick increments, ``after_balance`` decrements, whichever picker
version handed the server out, so rebuilt pickers see the load of the old ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from heapq import heapify, heappop, heappush

from tollway.balancer.picker import HealthGate, PickContext, Server, mark_tried

_Entry = tuple[float, int, str]  # (score, seq, addr)


class LeastConnTable:
    """In-flight counts plus a lazy min-heap of scores over the newest configuration.

    Every count change of a configured addr pushes a fresh entry and records its ``seq`` in
    ``current``; an entry whose seq is not current is stale and dropped when it surfaces. Ties
    go to the older entry, so equally loaded nodes take turns instead of the first one always
    winning (APISIX's binary heap has no such rule). ``configure`` is called by each new
    picker; pickers of older configurations see ``generation`` moved on and fall back to a scan.
    """

    __slots__ = ("counts", "current", "generation", "heap", "inverse", "seq")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.inverse: dict[str, float] = {}  # configured addr -> 1 / weight (inf for 0)
        self.heap: list[_Entry] = []
        self.current: dict[str, int] = {}
        self.seq = 0
        self.generation = 0

    def configure(self, servers: Sequence[Server]) -> int:
        self.generation += 1
        self.inverse = {s.addr: inverse_weight(s.weight) for s in servers}
        self.heap = []
        self.current = {}
        for addr in self.inverse:
            self._push(addr)
        return self.generation

    def acquire(self, addr: str) -> None:
        self.counts[addr] = self.counts.get(addr, 0) + 1
        if addr in self.inverse:
            self._push(addr)

    def release(self, addr: str) -> None:
        count = self.counts.get(addr, 0) - 1
        if count > 0:
            self.counts[addr] = count
        else:
            self.counts.pop(addr, None)
        if addr in self.inverse:
            self._push(addr)

    def _push(self, addr: str) -> None:
        self.seq += 1
        self.current[addr] = self.seq
        score = (1 + self.counts.get(addr, 0)) * self.inverse[addr]
        heappush(self.heap, (score, self.seq, addr))
        if len(self.heap) > 2 * len(self.inverse) + 64:
            current = self.current
            self.heap = [e for e in self.heap if current.get(e[2]) == e[1]]
            heapify(self.heap)


def inverse_weight(weight: int) -> float:
    # Weight 0 scores infinity, as Lua's 1/0: such a node is used only when nothing else is.
    return 1.0 / weight if weight > 0 else math.inf


class LeastConnPicker:
    __slots__ = ("_by_addr", "_gate", "_generation", "_servers", "_table")

    def __init__(self, servers: Sequence[Server], gate: HealthGate, table: LeastConnTable) -> None:
        if not servers:
            raise ValueError("LeastConnPicker needs at least one server")
        self._servers = tuple(servers)
        self._by_addr = {s.addr: s for s in servers}
        self._gate = gate
        self._table = table
        self._generation = table.configure(servers)

    def pick(self, ctx: PickContext) -> Server | None:
        table = self._table
        if table.generation != self._generation:
            return self._scan(ctx)
        check = self._gate.check()
        tried = ctx.tried
        heap = table.heap
        current = table.current
        skipped: list[_Entry] = []
        server = None
        while heap:
            entry = heap[0]
            addr = entry[2]
            if current.get(addr) != entry[1]:
                heappop(heap)
                continue
            candidate = self._by_addr[addr]
            if addr in tried or (check is not None and not check(candidate)):
                skipped.append(heappop(heap))
                continue
            server = candidate
            break
        for entry in skipped:
            heappush(heap, entry)
        if server is not None:
            table.acquire(server.addr)
        return server

    def _scan(self, ctx: PickContext) -> Server | None:
        """A picker of an older configuration (a request retrying after a rebuild): the same
        rule over its own servers, scored with the shared counts."""
        check = self._gate.check()
        counts = self._table.counts
        best: Server | None = None
        best_score = math.inf
        for server in self._servers:
            if server.addr in ctx.tried or (check is not None and not check(server)):
                continue
            score = (1 + counts.get(server.addr, 0)) * inverse_weight(server.weight)
            if best is None or score < best_score:
                best, best_score = server, score
        if best is not None:
            self._table.acquire(best.addr)
        return best

    def after_balance(
        self, server: Server, ctx: PickContext, *, failed: bool, latency: float | None = None
    ) -> None:
        self._table.release(server.addr)
        mark_tried(server, ctx, failed)
