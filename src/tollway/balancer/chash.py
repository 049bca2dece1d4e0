"""Consistent hashing, point for point the ring of lua-resty-balancer ``chash.c``/``chash.lua``
as APISIX's ``balancer/chash.lua`` builds it.

Invariants: the ring depends only on the configured nodes and weights (never on health), so a
key maps to the same node until the node list changes; adding or removing one of n equal nodes
moves about 1/n of the keys.
"""

from __future__ import annotations

import math
import zlib
from bisect import bisect_left
from collections.abc import Sequence

from tollway.balancer.picker import HealthGate, PickContext, Server, any_usable, mark_tried

POINTS_PER_WEIGHT = 160  # resty.chash CONSISTENT_POINTS


def node_id(server: Server) -> bytes:
    """APISIX: ``str_gsub("host:port", ":", "\\0")``. Every colon is replaced, also those of a
    bracketed IPv6 host, exactly like the Lua code."""
    return server.addr.replace(":", "\0").encode()


def key_hash(key: str) -> int:
    """``ngx.crc32_short(tostring(key))``. Keys are encoded as UTF-8; surrogate escapes map
    back to the raw bytes a client sent."""
    return zlib.crc32(key.encode("utf-8", "surrogateescape"))


def node_points(server_id: bytes, count: int) -> list[int]:
    """``chash_point_init``: point i is ``crc32(id ++ LE32(point i-1))`` with point -1 = 0.

    lua-resty-balancer passes ``crc32(id) ^ 0xffffffff`` (the raw CRC register after the id)
    as ``base_hash`` and continues it over the 4 bytes, which is plain CRC32 of the
    concatenation; ``zlib.crc32(data, crc32(id))`` continues it the same way.
    """
    base = zlib.crc32(server_id)
    points = []
    prev = 0
    for _ in range(count):
        prev = zlib.crc32(prev.to_bytes(4, "little"), base)
        points.append(prev)
    return points


class ChashRing:
    """The sorted points and the server owning each one. Weights are divided by their GCD
    first (APISIX), so 2:4 and 1:2 build the same ring."""

    __slots__ = ("hashes", "owners")

    def __init__(self, servers: Sequence[Server]) -> None:
        weights = [s.weight for s in servers]
        gcd = math.gcd(*weights) or 1
        points: list[tuple[int, Server]] = []
        for server, weight in zip(servers, weights, strict=True):
            count = weight // gcd * POINTS_PER_WEIGHT
            points.extend((h, server) for h in node_points(node_id(server), count))
        # Stable sort on the hash: equal hashes keep node order, as chash_point_sort does.
        points.sort(key=_point_hash)
        self.hashes = [h for h, _ in points]
        self.owners = [s for _, s in points]

    def __len__(self) -> int:
        return len(self.hashes)

    def find(self, hash_value: int) -> int:
        """Index of the first point with ``hash >= hash_value``, wrapping to 0 (``_find_id``)."""
        index = bisect_left(self.hashes, hash_value)
        return 0 if index == len(self.hashes) else index


def _point_hash(point: tuple[int, Server]) -> int:
    return point[0]


class ChashPicker:
    """Picks the owner of the key's point; a tried or unhealthy owner means walking on to the
    next point (APISIX ``picker:next(index)``). The walk always restarts from the key's point:
    every point skipped before was skipped for the same reasons, so the result is the same as
    continuing from the last index, with no per-request index to keep."""

    __slots__ = ("_candidates", "_gate", "_ring")

    def __init__(self, servers: Sequence[Server], gate: HealthGate) -> None:
        self._ring = ChashRing(servers)
        self._candidates = tuple(s for s in servers if s.weight > 0)
        self._gate = gate

    @property
    def ring(self) -> ChashRing:
        return self._ring

    def pick(self, ctx: PickContext) -> Server | None:
        ring = self._ring
        owners = ring.owners
        if not owners:
            return None  # all weights 0: "no valid upstream node"
        check = self._gate.check()
        tried = ctx.tried
        index = ring.find(key_hash(ctx.hash_key or ""))
        server = owners[index]
        if server.addr not in tried and (check is None or check(server)):
            return server
        if not any_usable(self._candidates, tried, check):
            return None
        n = len(owners)
        while True:
            index += 1
            if index == n:
                index = 0
            server = owners[index]
            if server.addr not in tried and (check is None or check(server)):
                return server

    def after_balance(
        self, server: Server, ctx: PickContext, *, failed: bool, latency: float | None = None
    ) -> None:
        mark_tried(server, ctx, failed)
