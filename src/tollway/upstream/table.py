"""What a worker knows about upstream health: the supervisor's verdicts, looked up at pick time.

``HealthTable`` maps a resource key to the frozenset of its unhealthy addrs, replaced whole by each
``health`` message. Pickers get ``predicate(key)``, which reads the table live: a health change
needs no recompile and no picker rebuild. ``PassiveReporter`` batches the outcomes of proxied
attempts into ``passive`` messages to the supervisor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from tollway.balancer import Server
from tollway.ipc import Passive

_EMPTY: frozenset[str] = frozenset()


class HealthTable:
    __slots__ = ("_sets",)

    def __init__(self) -> None:
        self._sets: dict[str, frozenset[str]] = {}

    def update(self, key: str, unhealthy: Iterable[str]) -> None:
        addrs = frozenset(unhealthy)
        if addrs:
            self._sets[key] = addrs
        else:
            self._sets.pop(key, None)

    def get(self, key: str) -> frozenset[str]:
        return self._sets.get(key, _EMPTY)

    def predicate(self, key: str) -> Callable[[Server], bool]:
        get = self._sets.get

        def is_healthy(server: Server) -> bool:
            return server.addr not in get(key, _EMPTY)

        return is_healthy


class PassiveReporter:
    """Collects ``(key, addr, outcome, status)`` and sends them in batches: every ``interval``
    (100 ms), or after ``urgent_interval`` (10 ms) once a failure is pending (a connect error,
    a timeout, a status >= 400), so a failing node is ejected after ~10 ms of traffic, not 100 ms,
    while a failure storm still costs at most one message per 10 ms."""

    __slots__ = (
        "_handle",
        "_pending",
        "_send",
        "_urgent",
        "interval",
        "max_pending",
        "urgent_interval",
    )

    def __init__(
        self,
        send: Callable[[Passive], None] | None = None,
        *,
        interval: float = 0.1,
        urgent_interval: float = 0.01,
        max_pending: int = 50_000,
    ) -> None:
        self._send = send
        self._pending: list[tuple[str, str, str, int]] = []
        self._handle: asyncio.TimerHandle | None = None
        self._urgent = False
        self.interval = interval
        self.urgent_interval = urgent_interval
        self.max_pending = max_pending

    def attach(self, send: Callable[[Passive], None]) -> None:
        self._send = send

    def report(self, key: str, addr: str, outcome: str, status: int) -> None:
        """O(1) on the request path; outcome is "http" (with status), "tcp" or "timeout"."""
        pending = self._pending
        if len(pending) >= self.max_pending:
            return  # the supervisor is not reading: drop rather than grow
        pending.append((key, addr, outcome, status))
        if self._urgent:
            return
        if outcome != "http" or status >= 400:
            self._urgent = True
            if self._handle is not None:
                self._handle.cancel()
            self._handle = asyncio.get_running_loop().call_later(self.urgent_interval, self.flush)
        elif self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.interval, self.flush)

    def flush(self) -> None:
        self._handle = None
        self._urgent = False
        if not self._pending or self._send is None:
            return
        batch, self._pending = self._pending, []
        self._send(Passive(batch))
