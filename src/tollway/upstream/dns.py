"""DNS for domain nodes: resolved once per instance, in the supervisor, and fanned out.

``DnsCache`` is the pure bookkeeping; ``DnsResolver`` is the async shell that looks names up when
they are due and reports changed answers (``{name: [ip, ...]}``) to its ``on_change`` callback.

Rules (each tested in tests/unit/upstream/test_dns_*.py):
* A name is looked up as soon as the config uses it, then again when its TTL runs out. The TTL is
  clamped to [``min_ttl``, ``max_ttl``] (defaults 1 s and 300 s): TTL 0 does not turn into a
  query storm (Kong #3641), a week-long TTL does not pin an old IP (APISIX #5471).
* A failed lookup keeps the last good answer (stale) and is retried with a backoff from 1 s to
  30 s: a DNS outage does not empty an upstream (APISIX #10093, #12973).
* A name that has never resolved has the answer ``[]``: its nodes are absent, the upstream's other
  nodes keep serving (APISIX #3342); if none is left the upstream answers 503 (APISIX).
* Answers are compared as sorted sets: a server rotating its records causes no change.
* Names the config no longer uses are forgotten.

``SystemResolver`` asks the nameservers of /etc/resolv.conf (dnspython, with the search list),
A records first and AAAA when there is no A; when DNS has no such name it falls back to the
system's ``getaddrinfo`` (/etc/hosts), with a TTL of 30 s.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("tollway.upstream")

DEFAULT_MIN_TTL = 1.0
DEFAULT_MAX_TTL = 300.0
RETRY_MIN = 1.0
RETRY_MAX = 30.0
FALLBACK_TTL = 30.0
LOOKUP_TIMEOUT = 3.0

Answers = dict[str, tuple[str, ...]]


class DnsError(Exception):
    """A lookup failed (no such name, no address, timeout, no nameserver)."""


@dataclass(slots=True)
class _Entry:
    ips: tuple[str, ...] | None = None  # None: no answer yet
    due: float = 0.0
    failures: int = 0
    busy: bool = False


class DnsCache:
    def __init__(
        self,
        min_ttl: float = DEFAULT_MIN_TTL,
        max_ttl: float = DEFAULT_MAX_TTL,
        retry_min: float = RETRY_MIN,
        retry_max: float = RETRY_MAX,
    ) -> None:
        self.min_ttl = min_ttl
        self.max_ttl = max(max_ttl, min_ttl)
        self.retry_min = retry_min
        self.retry_max = retry_max
        self._entries: dict[str, _Entry] = {}

    def want(self, names: Iterable[str], now: float) -> list[str]:
        """The names in use now; returns the new ones (due at once). Others are dropped."""
        wanted = set(names)
        for name in [n for n in self._entries if n not in wanted]:
            del self._entries[name]
        new = sorted(n for n in wanted if n not in self._entries)
        for name in new:
            self._entries[name] = _Entry(due=now)
        return new

    def due(self, now: float) -> list[str]:
        """Names to look up now; they are marked busy until ``answered``/``failed``."""
        out = []
        for name, e in self._entries.items():
            if not e.busy and e.due <= now:
                e.busy = True
                out.append(name)
        return out

    def next_due(self) -> float | None:
        dues = [e.due for e in self._entries.values() if not e.busy]
        return min(dues) if dues else None

    def answered(self, name: str, ips: Iterable[str], ttl: float, now: float) -> bool:
        """A good answer; True when the name's IP set changed."""
        e = self._entries.get(name)
        if e is None:
            return False  # no longer wanted
        new = tuple(sorted(set(ips)))
        if not new:
            return self.failed(name, now)
        changed = new != e.ips
        e.ips = new
        e.busy = False
        e.failures = 0
        e.due = now + min(max(ttl, self.min_ttl), self.max_ttl)
        return changed

    def failed(self, name: str, now: float) -> bool:
        """A failed lookup: keep a stale answer, retry with backoff. True only when the name
        had no answer yet (it now has ``()``)."""
        e = self._entries.get(name)
        if e is None:
            return False
        e.busy = False
        e.failures += 1
        e.due = now + min(self.retry_min * 2 ** (e.failures - 1), self.retry_max)
        if e.ips is None:
            e.ips = ()
            return True
        return False

    def failures(self, name: str) -> int:
        e = self._entries.get(name)
        return e.failures if e is not None else 0

    def answers(self) -> Answers:
        return {n: e.ips for n, e in self._entries.items() if e.ips is not None}


class Resolver(Protocol):
    async def resolve(self, name: str) -> tuple[list[str], float]:
        """IPs and TTL (seconds) of ``name``; raises ``DnsError``."""
        ...


class SystemResolver:
    """The system's nameservers through dnspython, then ``getaddrinfo``; see the module doc."""

    def __init__(
        self,
        timeout: float = LOOKUP_TIMEOUT,
        fallback_ttl: float = FALLBACK_TTL,
        *,
        nameservers: list[str] | None = None,
        port: int = 53,
    ) -> None:
        self.timeout = timeout
        self.fallback_ttl = fallback_ttl
        self._dns: object | None = None
        try:
            import dns.asyncresolver

            resolver = dns.asyncresolver.Resolver(configure=nameservers is None)
            if nameservers is not None:
                resolver.nameservers = nameservers
                resolver.port = port
            self._dns = resolver
        except Exception as e:  # no /etc/resolv.conf, or no nameserver in it
            log.warning("no DNS resolver configuration (%s); using getaddrinfo only", e)

    async def resolve(self, name: str) -> tuple[list[str], float]:
        if self._dns is not None:
            found = await self._query(name)
            if found is not None:
                return found
        return await self._getaddrinfo(name)

    async def _query(self, name: str) -> tuple[list[str], float] | None:
        """From DNS; None when DNS does not know the name (try the hosts file)."""
        import dns.asyncresolver
        import dns.exception
        import dns.resolver

        assert isinstance(self._dns, dns.asyncresolver.Resolver)
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._dns.resolve(name, rdtype, search=True, lifetime=self.timeout)
            except dns.resolver.NoAnswer:
                continue  # no A record: try AAAA
            except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers):
                return None
            except dns.exception.Timeout as e:
                raise DnsError(f"{name}: timeout") from e
            except dns.exception.DNSException as e:
                raise DnsError(f"{name}: {e}") from e
            ips = [str(r.address) for r in answer]
            if ips:
                ttl = float(answer.rrset.ttl) if answer.rrset is not None else self.fallback_ttl
                return ips, ttl
        return None

    async def _getaddrinfo(self, name: str) -> tuple[list[str], float]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as e:
            raise DnsError(f"{name}: {e}") from e
        ips = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not ips:
            raise DnsError(f"{name}: no address")
        return ips, self.fallback_ttl


class DnsResolver:
    """Looks names up when due, ``concurrency`` at a time, and reports changed answers."""

    def __init__(
        self,
        on_change: Callable[[Answers], None],
        *,
        resolver: Resolver | None = None,
        cache: DnsCache | None = None,
        concurrency: int = 16,
    ) -> None:
        self._on_change = on_change
        self._resolver = resolver
        self.cache = cache if cache is not None else DnsCache()
        self._concurrency = concurrency
        self._sem: asyncio.Semaphore | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._lookups: set[asyncio.Task[None]] = set()

    @property
    def answers(self) -> Answers:
        return self.cache.answers()

    def want(self, names: Iterable[str]) -> None:
        """The complete set of domain names the config uses now."""
        loop = asyncio.get_running_loop()
        new = self.cache.want(names, loop.time())
        if self._task is None:
            if not new:
                return
            self._wake = asyncio.Event()
            self._sem = asyncio.Semaphore(self._concurrency)
            self._task = loop.create_task(self._run())
        if new and self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        if self._resolver is None:
            self._resolver = SystemResolver()
        while True:
            self._wake.clear()
            now = loop.time()
            for name in self.cache.due(now):
                task = loop.create_task(self._lookup(name))
                self._lookups.add(task)
                task.add_done_callback(self._lookups.discard)
            due = self.cache.next_due()
            timeout = None if due is None else max(due - now, 0.0)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _lookup(self, name: str) -> None:
        assert self._sem is not None and self._resolver is not None
        error: str | None = None
        async with self._sem:
            try:
                ips, ttl = await self._resolver.resolve(name)
            except DnsError as e:
                error = str(e)
            except Exception as e:
                log.exception("DNS lookup of %s failed unexpectedly", name)
                error = repr(e)
        now = asyncio.get_running_loop().time()
        stale = bool(self.cache.answers().get(name))
        if error is None:
            recovered = self.cache.failures(name) > 0
            changed = self.cache.answered(name, ips, ttl, now)
            if recovered:
                log.warning("DNS lookup of %s works again: %s", name, ", ".join(ips))
        else:
            changed = self.cache.failed(name, now)
            if self.cache.failures(name) == 1:
                log.warning(
                    "DNS lookup failed: %s; %s",
                    error,
                    "keeping the last answer" if stale else "its nodes are left out",
                )
        if changed:
            answer = self.cache.answers().get(name)
            if answer is not None:
                self._on_change({name: answer})
        if self._wake is not None:
            self._wake.set()

    async def aclose(self) -> None:
        tasks = list(self._lookups)
        if self._task is not None:
            tasks.append(self._task)
            self._task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
