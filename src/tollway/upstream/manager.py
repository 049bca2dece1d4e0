"""The HealthManager: the instance's health checkers, run once in the supervisor.

Checkers exist from config load (``sync``), not from a first request. Active probes run here
once per instance, at ``healthy.interval`` for routable targets and ``unhealthy.interval`` for the
others, ``concurrency`` at a time; workers send passive outcomes here (``passive``). Every change
of an upstream's unhealthy set is published as ``Health(key, unhealthy=[addr])`` (``tollway.ipc``).
Removing an upstream or its checks stops its probes and publishes an empty set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from tollway.ipc import Broadcast, Health
from tollway.model import Upstream
from tollway.upstream.health import (
    DEFAULT_RECOVER_AFTER,
    OUTCOMES,
    Checker,
    Target,
    targets_for,
)
from tollway.upstream.probe import ProbeSpec, probe

log = logging.getLogger("tollway.upstream")

Prober = Callable[[ProbeSpec, Target], Awaitable[tuple[str, int]]]


class HealthManager:
    def __init__(
        self,
        broadcast: Broadcast,
        *,
        recover_after: float = DEFAULT_RECOVER_AFTER,
        prober: Prober = probe,
        clock: Callable[[], float] | None = None,
        enabled: bool = True,
    ) -> None:
        self._broadcast = broadcast
        self.enabled = enabled  # apisix.disable_upstream_healthcheck: no checker at all
        self._recover_after = recover_after
        self._prober = prober
        self._clock = clock
        self.checkers: dict[str, Checker] = {}
        self._confs: dict[str, Upstream] = {}
        self._specs: dict[str, ProbeSpec] = {}
        self._loops: dict[str, list[asyncio.Task[None]]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._answers: Mapping[str, Sequence[str]] = {}

    def now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    # -- config --------------------------------------------------------------------------

    def sync(
        self,
        upstreams: Mapping[str, Upstream | None],
        answers: Mapping[str, Sequence[str]],
        *,
        full: bool,
    ) -> None:
        """Reconcile with the config: ``upstreams`` is every upstream (``full``) or the changed
        keys only (None: gone)."""
        self._answers = answers
        if full:
            for key in [k for k in self.checkers if upstreams.get(k) is None]:
                self._drop(key)
        for key, up in upstreams.items():
            if up is None or up.checks is None or not self.enabled:
                self._drop(key)
            else:
                self._upsert(key, up)

    def retarget(self, keys: Iterable[str], answers: Mapping[str, Sequence[str]]) -> None:
        """DNS answers changed for these upstreams: recompute their targets."""
        self._answers = answers
        for key in keys:
            up = self._confs.get(key)
            if up is not None:
                self._upsert(key, up)

    def _upsert(self, key: str, up: Upstream) -> None:
        checks = up.checks
        assert checks is not None
        checker = self.checkers.get(key)
        before = checker.unhealthy() if checker is not None else []
        if checker is None:
            checker = Checker(key, checks, self._recover_after)
            self.checkers[key] = checker
        else:
            checker.set_conf(checks)
        self._confs[key] = up
        checker.set_targets(targets_for(up, self._answers))
        if checks.active is not None:
            self._specs[key] = ProbeSpec.of(checks.active)
            if key not in self._loops:
                loop = asyncio.get_running_loop()
                self._loops[key] = [
                    loop.create_task(self._probe_loop(key, checker, healthy=True)),
                    loop.create_task(self._probe_loop(key, checker, healthy=False)),
                ]
        else:
            self._specs.pop(key, None)
            self._stop_loops(key)
        self._changed(checker, before)

    def _drop(self, key: str) -> None:
        checker = self.checkers.pop(key, None)
        self._confs.pop(key, None)
        self._specs.pop(key, None)
        self._stop_loops(key)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if checker is not None and checker.unhealthy():
            self._broadcast(Health(key, []))

    def _stop_loops(self, key: str) -> None:
        for task in self._loops.pop(key, ()):
            task.cancel()

    # -- reports -------------------------------------------------------------------------

    def passive(self, reports: Iterable[Sequence[Any]]) -> None:
        """Outcomes of proxied attempts from the workers: ``[key, addr, outcome, status]``."""
        now = self.now()
        befores: dict[str, list[str]] = {}
        changed: set[str] = set()
        for report in reports:
            if len(report) != 4:
                continue
            key, addr, outcome, status = report
            checker = self.checkers.get(key)
            if checker is None or checker.passive is None or outcome not in OUTCOMES:
                continue
            if key not in befores:
                befores[key] = checker.unhealthy()
            status = status if isinstance(status, int) else 0
            if checker.report(addr, outcome, status, now, active=False):
                changed.add(key)
        for key in changed:
            self._changed(self.checkers[key], befores[key])

    def _changed(self, checker: Checker, before: list[str]) -> None:
        after = checker.unhealthy()
        if after != before:
            for addr in sorted(set(after) - set(before)):
                log.warning("upstream %s: node %s is unhealthy", checker.key, addr)
            for addr in sorted(set(before) - set(after)):
                log.info("upstream %s: node %s is healthy again", checker.key, addr)
            self._broadcast(Health(checker.key, after))
        self._schedule_recovery(checker)

    def _schedule_recovery(self, checker: Checker) -> None:
        when = checker.next_recovery()
        timer = self._timers.pop(checker.key, None)
        if timer is not None:
            timer.cancel()
        if when is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(when - self.now(), 0.0)
        self._timers[checker.key] = loop.call_later(delay, self._recover, checker)

    def _recover(self, checker: Checker) -> None:
        self._timers.pop(checker.key, None)
        if self.checkers.get(checker.key) is not checker:
            return
        before = checker.unhealthy()
        checker.recover(self.now())
        self._changed(checker, before)

    # -- active probes -------------------------------------------------------------------

    async def _probe_loop(self, key: str, checker: Checker, *, healthy: bool) -> None:
        """One group of one checker: a round of probes every interval (the first right away;
        lua-resty-healthcheck waits one interval first)."""
        while self.checkers.get(key) is checker:
            active = checker.conf.active
            spec = self._specs.get(key)
            if active is None or spec is None:
                return
            started = self.now()
            targets = checker.group(healthy)
            if targets:
                await self._round(checker, spec, targets, active.concurrency)
            interval = active.healthy.interval if healthy else active.unhealthy.interval
            await asyncio.sleep(max(started + interval - self.now(), 0.0))

    async def _round(
        self, checker: Checker, spec: ProbeSpec, targets: list[Target], concurrency: int
    ) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(target: Target) -> None:
            async with sem:
                try:
                    outcome, status = await self._prober(spec, target)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("health probe of %s failed unexpectedly", target.addr)
                    return
            if self.checkers.get(checker.key) is not checker:
                return
            before = checker.unhealthy()
            if checker.report(target.addr, outcome, status, self.now(), active=True):
                self._changed(checker, before)

        await asyncio.gather(*(one(t) for t in targets))

    # -- views ---------------------------------------------------------------------------

    def table(self) -> dict[str, list[str]]:
        """Every upstream with unhealthy nodes, for a worker that just started."""
        out = {}
        for key, checker in self.checkers.items():
            unhealthy = checker.unhealthy()
            if unhealthy:
                out[key] = unhealthy
        return out

    def describe(self, key: str | None = None) -> list[dict[str, Any]]:
        if key is not None:
            checker = self.checkers.get(key)
            return [checker.describe()] if checker is not None else []
        return [c.describe() for c in self.checkers.values()]

    async def aclose(self) -> None:
        tasks = [t for ts in self._loops.values() for t in ts]
        self._loops.clear()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.checkers.clear()
