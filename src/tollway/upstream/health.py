"""Health of upstream targets: the lua-resty-healthcheck state machine, with no I/O.

Each target has one success counter and three failure counters (http, tcp, timeout). A failure
resets only the success counter; a success resets all three failure counters. A counter reaching
its threshold moves the target to ``healthy``/``unhealthy``; a first contrary report moves it to
``mostly_unhealthy``/``mostly_healthy`` (still routed as before). A threshold of 0 disables that
counter. Reports of the state a target is already fully in are not counted (lua-resty-healthcheck
``incr_counter``).

What Tollway does differently from APISIX (each measured by a test):
* ``Checker.set_targets`` keeps the state of targets that stay when the node list changes; APISIX
  rebuilds the checker and every node starts healthy again.
* With passive checks only, an unhealthy target is readmitted after ``recover_after`` seconds
  (default 10 s, like nginx ``fail_timeout``) with its counters cleared; in APISIX it stays out
  until the config changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tollway.balancer import servers_from_upstream
from tollway.model import ActiveCheck, HealthChecks, PassiveCheck, Upstream
from tollway.upstream.nodes import expand

HEALTHY = "healthy"
MOSTLY_HEALTHY = "mostly_healthy"
UNHEALTHY = "unhealthy"
MOSTLY_UNHEALTHY = "mostly_unhealthy"

# What one probe or one proxied attempt said about a target. "http" carries a status (0 = no
# parsable status line, an http failure); "success" is a tcp-probe connect.
Outcome = Literal["success", "http", "tcp", "timeout"]
OUTCOMES: frozenset[str] = frozenset(("success", "http", "tcp", "timeout"))

DEFAULT_RECOVER_AFTER = 10.0
_COUNTER_MAX = 255  # lua-resty-healthcheck packs 8-bit counters; we saturate instead of wrapping


@dataclass(frozen=True, slots=True)
class Thresholds:
    successes: int
    http_failures: int
    tcp_failures: int
    timeouts: int
    healthy_statuses: frozenset[int]
    unhealthy_statuses: frozenset[int]

    @staticmethod
    def of(check: ActiveCheck | PassiveCheck) -> Thresholds:
        return Thresholds(
            check.healthy.successes,
            check.unhealthy.http_failures,
            check.unhealthy.tcp_failures,
            check.unhealthy.timeouts,
            frozenset(check.healthy.http_statuses),
            frozenset(check.unhealthy.http_statuses),
        )


class TargetHealth:
    """State and counters of one target. ``unhealthy_since`` is when it last stopped being
    routable (for passive-only recovery)."""

    __slots__ = (
        "http_failure",
        "state",
        "success",
        "tcp_failure",
        "timeout_failure",
        "unhealthy_since",
    )

    def __init__(self) -> None:
        self.state = HEALTHY
        self.success = 0
        self.http_failure = 0
        self.tcp_failure = 0
        self.timeout_failure = 0
        self.unhealthy_since = 0.0

    @property
    def healthy(self) -> bool:
        return self.state == HEALTHY or self.state == MOSTLY_HEALTHY

    def reset(self, state: str = HEALTHY) -> None:
        """lua-resty-healthcheck ``set_target_status``: force a state, clear the counters."""
        self.state = state
        self.success = self.http_failure = self.tcp_failure = self.timeout_failure = 0

    def counters(self) -> dict[str, int]:
        return {
            "success": self.success,
            "http_failure": self.http_failure,
            "tcp_failure": self.tcp_failure,
            "timeout_failure": self.timeout_failure,
        }


def record(t: TargetHealth, th: Thresholds, outcome: str, status: int, now: float) -> bool:
    """Count one outcome against ``th``; True when the target's routability flipped."""
    if outcome == "http":
        if status in th.healthy_statuses:
            outcome = "success"
        elif not (status in th.unhealthy_statuses or status == 0):
            return False  # in neither list: ignored
    if outcome == "success":
        report, limit = HEALTHY, th.successes
    elif outcome == "http":
        report, limit = UNHEALTHY, th.http_failures
    elif outcome == "tcp":
        report, limit = UNHEALTHY, th.tcp_failures
    elif outcome == "timeout":
        report, limit = UNHEALTHY, th.timeouts
    else:
        return False
    if limit == 0 or t.state == report:
        return False
    was_healthy = t.healthy
    if report == HEALTHY:
        t.success = count = min(t.success + 1, _COUNTER_MAX)
        t.http_failure = t.tcp_failure = t.timeout_failure = 0
    else:
        t.success = 0
        if outcome == "http":
            t.http_failure = count = min(t.http_failure + 1, _COUNTER_MAX)
        elif outcome == "tcp":
            t.tcp_failure = count = min(t.tcp_failure + 1, _COUNTER_MAX)
        else:
            t.timeout_failure = count = min(t.timeout_failure + 1, _COUNTER_MAX)
    if count >= limit:
        t.state = report
    elif t.state == HEALTHY and report == UNHEALTHY:
        t.state = MOSTLY_HEALTHY
    elif t.state == UNHEALTHY and report == HEALTHY:
        t.state = MOSTLY_UNHEALTHY
    flipped = t.healthy != was_healthy
    if flipped and not t.healthy:
        t.unhealthy_since = now
    return flipped


@dataclass(frozen=True, slots=True)
class Target:
    """One node to check. ``addr`` is the balancer's key (``host:port`` of the node after DNS);
    probes go to ``ip``:``port`` (``checks.active.port`` or the node's port) with ``host_header``.
    ``hostname`` is the node's host as configured (a domain, or the IP)."""

    addr: str
    ip: str
    port: int
    node_port: int
    hostname: str
    host_header: str


def targets_for(up: Upstream, answers: Mapping[str, Sequence[str]]) -> list[Target]:
    """The targets of an upstream's nodes after DNS (see ``tollway.upstream.nodes``).

    The probe's Host is APISIX's (healthcheck_manager ``create_checker``): ``upstream_host`` with
    ``pass_host: rewrite``, the node's domain with ``pass_host: node``, else ``checks.active.host``,
    else the IP.
    """
    ex = expand(servers_from_upstream(up), answers)
    active = up.checks.active if up.checks is not None else None
    out = []
    for s in ex.servers:
        original = ex.node_hosts.get(s.addr)
        if up.pass_host == "rewrite" and up.upstream_host:
            header = up.upstream_host
        elif up.pass_host == "node" and original is not None:
            header = original
        elif active is not None and active.host:
            header = active.host
        else:
            header = s.host
        port = active.port if active is not None and active.port else s.port
        ip = s.host[1:-1] if s.host.startswith("[") else s.host
        out.append(Target(s.addr, ip, port, s.port, original or s.host, header))
    return out


class Checker:
    """The checks of one upstream (APISIX: one checker per ``resource_key``)."""

    def __init__(
        self, key: str, conf: HealthChecks, recover_after: float = DEFAULT_RECOVER_AFTER
    ) -> None:
        self.key = key
        self.recover_after = recover_after
        self.targets: dict[str, Target] = {}
        self.health: dict[str, TargetHealth] = {}
        self.conf = conf
        self.active: Thresholds | None = None
        self.passive: Thresholds | None = None
        self.set_conf(conf)

    def set_conf(self, conf: HealthChecks) -> None:
        """New check settings; target states stay (APISIX would start over)."""
        self.conf = conf
        self.active = Thresholds.of(conf.active) if conf.active is not None else None
        self.passive = Thresholds.of(conf.passive) if conf.passive is not None else None

    @property
    def passive_only(self) -> bool:
        return self.active is None and self.passive is not None

    @property
    def type(self) -> str:
        conf = self.conf.active or self.conf.passive
        return conf.type if conf is not None else "http"

    def set_targets(self, targets: Iterable[Target]) -> bool:
        """Replace the target list; True when the unhealthy set changed.

        A target whose addr stays keeps its state and counters; a new one starts healthy
        (lua-resty-healthcheck ``add_target``); a removed one is forgotten.
        """
        before = self.unhealthy()
        new = {t.addr: t for t in targets}
        self.health = {addr: self.health.get(addr) or TargetHealth() for addr in new}
        self.targets = new
        return self.unhealthy() != before

    def report(self, addr: str, outcome: str, status: int, now: float, *, active: bool) -> bool:
        """One outcome for ``addr``; True when the unhealthy set changed. Unknown targets and
        outcomes of a check kind that is not configured are ignored."""
        th = self.active if active else self.passive
        t = self.health.get(addr)
        if th is None or t is None:
            return False
        return record(t, th, outcome, status, now)

    def recover(self, now: float) -> bool:
        """Passive-only checks: readmit targets unhealthy for ``recover_after`` seconds."""
        if not self.passive_only:
            return False
        changed = False
        for t in self.health.values():
            if not t.healthy and now - t.unhealthy_since >= self.recover_after:
                t.reset(HEALTHY)
                changed = True
        return changed

    def next_recovery(self) -> float | None:
        """When ``recover`` has something to do next, or None."""
        if not self.passive_only:
            return None
        times = [t.unhealthy_since for t in self.health.values() if not t.healthy]
        return min(times) + self.recover_after if times else None

    def unhealthy(self) -> list[str]:
        return sorted(addr for addr, t in self.health.items() if not t.healthy)

    def group(self, healthy: bool) -> list[Target]:
        """Targets checked at ``healthy.interval`` (True) or ``unhealthy.interval`` (False)."""
        return [self.targets[a] for a, t in self.health.items() if t.healthy == healthy]

    def describe(self) -> dict[str, Any]:
        """The APISIX control API shape (``GET /v1/healthcheck``). APISIX's checker targets are
        (node IP, ``checks.active.port`` or the node's port, ``checks.active.host``): the port
        shown is the probed one, ``hostname`` is ``checks.active.host`` or the node's IP, and
        nodes probed at the same address show once."""
        active = self.conf.active
        host = active.host if active is not None else None
        nodes = []
        seen: set[tuple[str, int]] = set()
        for addr, target in self.targets.items():
            if (target.ip, target.port) in seen:
                continue
            seen.add((target.ip, target.port))
            t = self.health[addr]
            node: dict[str, Any] = {"ip": target.ip, "port": target.port}
            node["hostname"] = host or target.ip
            node["status"] = t.state
            node["counter"] = t.counters()
            nodes.append(node)
        return {"name": self.key, "type": self.type, "nodes": nodes}
