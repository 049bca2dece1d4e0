"""The supervisor's view of the upstreams: DNS answers and health, kept in step with the config.

The supervisor calls ``sync`` after every full load (``changes=None``) and every applied change,
``passive`` with worker reports, and sends ``greeting()`` to a new worker before its first load
(the worker's tables are looked up live by resource key, so they may arrive before the config).
Messages to workers:

* ``Dns(names={name: [ip, ...]})``: changed answers (``[]``: the name does not resolve);
* ``Health(key=resource_key, unhealthy=[addr, ...])``: an upstream's unhealthy set.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tollway.ipc import Broadcast, Dns, Health, ToWorker
from tollway.upstream.dns import Answers, DnsCache, DnsResolver, Resolver
from tollway.upstream.health import DEFAULT_RECOVER_AFTER
from tollway.upstream.manager import HealthManager
from tollway.upstream.nodes import domain_names
from tollway.upstream.sources import StoreView, all_upstreams, changed_upstreams


class UpstreamMonitor:
    def __init__(
        self,
        broadcast: Broadcast,
        *,
        recover_after: float = DEFAULT_RECOVER_AFTER,
        resolver: Resolver | None = None,
        dns_cache: DnsCache | None = None,
        health_checks: bool = True,
    ) -> None:
        self._broadcast = broadcast
        self.health = HealthManager(broadcast, recover_after=recover_after, enabled=health_checks)
        self.dns = DnsResolver(self._dns_changed, resolver=resolver, cache=dns_cache)
        self._names: dict[str, frozenset[str]] = {}  # resource key -> domains its nodes use

    def sync(self, store: StoreView, changes: Iterable[tuple[str, str, str]] | None = None) -> None:
        full = changes is None
        ups = all_upstreams(store) if changes is None else changed_upstreams(store, changes)
        if full:
            self._names.clear()
        # 100k routes with inline upstreams name the same few node sets: resolve each once.
        seen: dict[tuple[str, ...], frozenset[str]] = {}
        for key, up in ups.items():
            names: frozenset[str] = frozenset()
            if up is not None:
                addrs = tuple(up.nodes) if isinstance(up.nodes, dict) else None
                found = seen.get(addrs) if addrs is not None else None
                if found is None:
                    found = domain_names(n.host for n in up.node_list())
                    if addrs is not None:
                        seen[addrs] = found
                names = found
            if names:
                self._names[key] = names
            else:
                self._names.pop(key, None)
        self.dns.want(frozenset().union(*self._names.values()))
        self.health.sync(ups, self.dns.answers, full=full)

    def passive(self, reports: Iterable[Sequence[Any]]) -> None:
        self.health.passive(reports)

    def _dns_changed(self, changed: Answers) -> None:
        self._broadcast(Dns({n: list(ips) for n, ips in changed.items()}))
        names = set(changed)
        keys = [key for key, used in self._names.items() if used & names]
        self.health.retarget(keys, self.dns.answers)

    def greeting(self) -> list[ToWorker]:
        """What a new worker needs before its first load: all answers, all unhealthy sets."""
        out: list[ToWorker] = []
        answers = self.dns.answers
        if answers:
            out.append(Dns({n: list(ips) for n, ips in answers.items()}))
        for key, unhealthy in self.health.table().items():
            out.append(Health(key, unhealthy))
        return out

    def describe(self, key: str | None = None) -> list[dict[str, Any]]:
        return self.health.describe(key)

    async def aclose(self) -> None:
        await self.health.aclose()
        await self.dns.aclose()
