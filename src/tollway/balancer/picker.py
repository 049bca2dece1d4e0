"""What every picker shares: the server value, the per-request context and the health gate.

Invariants: a picker never returns a server whose addr is in ``ctx.tried``, and never an
unhealthy one while any server of the upstream is healthy (APISIX ``fetch_health_nodes``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

HealthCheck = Callable[["Server"], bool]


@dataclass(frozen=True, slots=True)
class Server:
    """One upstream node as the balancer sees it. ``addr`` is ``host:port`` (APISIX's key)."""

    host: str
    port: int
    weight: int
    priority: int = 0
    addr: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "addr", f"{self.host}:{self.port}")


class PickContext:
    """Per-request balancer state, created by the caller once per request.

    ``tried`` holds the addrs that failed in this request at the current priority level;
    ``after_balance(failed=True)`` adds to it and the priority picker clears it when it moves to
    the next level (APISIX ``before_retry_next_priority``). ``level`` is that priority level.
    """

    __slots__ = ("hash_key", "level", "tried")

    def __init__(self, hash_key: str | None = None) -> None:
        self.tried: set[str] = set()
        self.hash_key = hash_key
        self.level = 0


class Picker(Protocol):
    """A compiled balancer for one upstream version (APISIX: ``get`` + ``after_balance``)."""

    def pick(self, ctx: PickContext) -> Server | None:
        """The server for the next attempt, or None when none is left (the caller answers 502)."""
        ...

    def after_balance(
        self, server: Server, ctx: PickContext, *, failed: bool, latency: float | None = None
    ) -> None:
        """Called once per finished attempt with the server ``pick`` returned for it."""
        ...


class HealthGate:
    """Applies APISIX's health rule at pick time instead of rebuilding pickers.

    Only healthy servers may be picked, unless no server of the whole upstream (all priority
    levels) is healthy: then every server may be (APISIX: "all upstream nodes is unhealthy, use
    default"). Checking at pick time means health changes need no picker rebuild and a chash
    ring never moves because of them.
    """

    __slots__ = ("_is_healthy", "_servers")

    def __init__(self, servers: Sequence[Server], is_healthy: HealthCheck | None) -> None:
        self._servers = tuple(servers)
        self._is_healthy = is_healthy

    def check(self) -> HealthCheck | None:
        """The predicate for this pick, or None when every server may be picked."""
        is_healthy = self._is_healthy
        if is_healthy is None:
            return None
        for server in self._servers:
            if is_healthy(server):
                return is_healthy
        return None


def usable(server: Server, tried: set[str], check: HealthCheck | None) -> bool:
    return server.addr not in tried and (check is None or check(server))


def any_usable(servers: Sequence[Server], tried: set[str], check: HealthCheck | None) -> bool:
    for server in servers:
        if server.addr not in tried and (check is None or check(server)):
            return True
    return False


def mark_tried(server: Server, ctx: PickContext, failed: bool) -> None:
    """APISIX ``after_balance(ctx, before_retry)``: a failed server is not tried again."""
    if failed:
        ctx.tried.add(server.addr)


class SingleNodePicker:
    """APISIX: an upstream with one node (type != least_conn) uses it directly, with no weight,
    health or tried check, so a configured retry goes to the same node again."""

    __slots__ = ("_server",)

    def __init__(self, server: Server) -> None:
        self._server = server

    def pick(self, ctx: PickContext) -> Server | None:
        return self._server

    def after_balance(
        self, server: Server, ctx: PickContext, *, failed: bool, latency: float | None = None
    ) -> None:
        return None


class NoServerPicker:
    """An upstream without nodes. Callers answer 503 for empty nodes before picking (APISIX);
    this picker exists so that ``create_picker`` is total."""

    __slots__ = ()

    def pick(self, ctx: PickContext) -> Server | None:
        return None

    def after_balance(
        self, server: Server, ctx: PickContext, *, failed: bool, latency: float | None = None
    ) -> None:
        return None


def default_retries(n_nodes: int) -> int:
    """APISIX ``set_balancer_opts``: ``retries`` unset means one try per node."""
    return max(n_nodes - 1, 0)
