"""Priority groups (APISIX ``balancer/priority.lua``): levels from the highest priority down.

Invariant: a lower level is used only when the current level's picker returns None (all its
nodes tried or unhealthy); moving down clears ``ctx.tried``, so the same host:port may be
tried again at another level.
"""

from __future__ import annotations

from collections.abc import Sequence

from tollway.balancer.picker import PickContext, Picker, Server


class PriorityPicker:
    __slots__ = ("_by_priority", "_levels", "_priorities")

    def __init__(self, levels: Sequence[tuple[int, Picker]]) -> None:
        """``levels``: (priority, picker) pairs, highest priority first."""
        self._priorities = tuple(p for p, _ in levels)
        self._levels = tuple(picker for _, picker in levels)
        self._by_priority = dict(levels)

    @property
    def priorities(self) -> tuple[int, ...]:
        return self._priorities

    def pick(self, ctx: PickContext) -> Server | None:
        levels = self._levels
        level = ctx.level
        while level < len(levels):
            server = levels[level].pick(ctx)
            if server is not None:
                ctx.level = level
                return server
            ctx.tried.clear()  # before_retry_next_priority
            level += 1
        ctx.level = level
        return None

    def after_balance(
        self, server: Server, ctx: PickContext, *, failed: bool, latency: float | None = None
    ) -> None:
        picker = self._by_priority.get(server.priority)
        if picker is not None:
            picker.after_balance(server, ctx, failed=failed, latency=latency)
