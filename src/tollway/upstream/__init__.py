"""Upstream health checks and DNS, done once per instance in the supervisor.

* ``health``: the per-target state machine (lua-resty-healthcheck counters and thresholds), pure.
* ``probe``: active http/https/tcp probes.
* ``manager``: ``HealthManager``, the checkers of the instance, reconciled with the config.
* ``dns``: ``DnsCache`` (pure TTL/stale rules) and ``DnsResolver``.
* ``monitor``: ``UpstreamMonitor``, the supervisor's entry point tying the two together.
* ``nodes``: domain nodes to servers, given the DNS answers (shared by supervisor and workers).
* ``table``: the worker side, ``HealthTable`` and ``PassiveReporter``.
"""

from tollway.upstream.dns import DnsCache, DnsError, DnsResolver, SystemResolver
from tollway.upstream.health import (
    DEFAULT_RECOVER_AFTER,
    HEALTHY,
    MOSTLY_HEALTHY,
    MOSTLY_UNHEALTHY,
    UNHEALTHY,
    Checker,
    Target,
    TargetHealth,
    Thresholds,
    record,
    targets_for,
)
from tollway.upstream.manager import HealthManager
from tollway.upstream.monitor import UpstreamMonitor
from tollway.upstream.nodes import Expanded, domain_names, expand, is_ip
from tollway.upstream.table import HealthTable, PassiveReporter

__all__ = [
    "DEFAULT_RECOVER_AFTER",
    "HEALTHY",
    "MOSTLY_HEALTHY",
    "MOSTLY_UNHEALTHY",
    "UNHEALTHY",
    "Checker",
    "DnsCache",
    "DnsError",
    "DnsResolver",
    "Expanded",
    "HealthManager",
    "HealthTable",
    "PassiveReporter",
    "SystemResolver",
    "Target",
    "TargetHealth",
    "Thresholds",
    "UpstreamMonitor",
    "domain_names",
    "expand",
    "is_ip",
    "record",
    "targets_for",
]
