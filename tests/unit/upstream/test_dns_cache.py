"""DNS bookkeeping: TTL clamp, stale answers on error, backoff, change detection (no I/O)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from tests.support.wait import until

from tollway.upstream.dns import DnsCache, DnsError, DnsResolver


def test_new_names_are_due_at_once_and_unused_ones_dropped() -> None:
    c = DnsCache()
    assert c.want(["a.example", "b.example"], 5.0) == ["a.example", "b.example"]
    assert c.due(5.0) == ["a.example", "b.example"]
    assert c.due(5.0) == []  # busy until answered
    assert c.want(["a.example"], 6.0) == []
    assert c.answered("b.example", ["10.0.0.1"], 60, 6.0) is False  # no longer wanted
    assert c.answers() == {}


def test_ttl_is_clamped() -> None:
    c = DnsCache(min_ttl=1.0, max_ttl=300.0)
    c.want(["zero", "week", "mid"], 0.0)
    c.due(0.0)
    c.answered("zero", ["10.0.0.1"], 0, 100.0)
    c.answered("week", ["10.0.0.2"], 7 * 86400, 100.0)
    c.answered("mid", ["10.0.0.3"], 42, 100.0)
    assert c.next_due() == 101.0
    assert c.due(101.0) == ["zero"]
    assert c.due(142.0) == ["mid"]
    assert c.due(399.0) == []
    assert c.due(400.0) == ["week"]


def test_changes_compare_sorted_sets() -> None:
    c = DnsCache()
    c.want(["a"], 0)
    c.due(0)
    assert c.answered("a", ["10.0.0.2", "10.0.0.1"], 5, 0) is True
    c.due(10)
    assert c.answered("a", ["10.0.0.1", "10.0.0.2", "10.0.0.1"], 5, 10) is False
    c.due(20)
    assert c.answered("a", ["10.0.0.3"], 5, 20) is True
    assert c.answers() == {"a": ("10.0.0.3",)}


def test_errors_keep_the_stale_answer_and_back_off() -> None:
    c = DnsCache(retry_min=1.0, retry_max=30.0)
    c.want(["a"], 0)
    c.due(0)
    c.answered("a", ["10.0.0.1"], 10, 0)
    dues = []
    now = 10.0
    for _ in range(7):
        assert c.due(now) == ["a"]
        assert c.failed("a", now) is False  # stale answer kept: nothing changes
        assert c.answers() == {"a": ("10.0.0.1",)}
        nxt = c.next_due()
        assert nxt is not None
        dues.append(nxt - now)
        now = nxt
    assert dues == [1, 2, 4, 8, 16, 30, 30]
    c.due(now)
    assert c.answered("a", ["10.0.0.1"], 10, now) is False
    assert c.failures("a") == 0


def test_a_name_that_never_resolved_gets_an_empty_answer() -> None:
    c = DnsCache()
    c.want(["gone.invalid"], 0)
    c.due(0)
    assert c.failed("gone.invalid", 0) is True
    assert c.answers() == {"gone.invalid": ()}
    c.due(5)
    assert c.failed("gone.invalid", 5) is False  # still nothing: no new message
    c.due(10)
    assert c.answered("gone.invalid", [], 5, 10) is False  # an empty answer is a failure
    c.due(20)
    assert c.answered("gone.invalid", ["10.0.0.1"], 5, 20) is True


class FakeResolver:
    def __init__(self) -> None:
        self.table: dict[str, list[str] | None] = {}
        self.calls: list[str] = []

    async def resolve(self, name: str) -> tuple[list[str], float]:
        self.calls.append(name)
        ips = self.table.get(name)
        if ips is None:
            raise DnsError(f"{name}: no such name")
        return ips, 0.0  # TTL 0: clamped to min_ttl


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())


def test_resolver_looks_up_new_names_and_follows_ttl() -> None:
    async def body() -> None:
        changes: list[dict[str, Any]] = []
        fake = FakeResolver()
        fake.table = {"a.example": ["10.0.0.1"]}
        r = DnsResolver(changes.append, resolver=fake, cache=DnsCache(min_ttl=0.05))
        r.want(["a.example"])
        await until(lambda: bool(changes))
        assert changes == [{"a.example": ("10.0.0.1",)}]
        fake.table["a.example"] = ["10.0.0.2"]
        await until(lambda: len(changes) == 2)
        assert changes[1] == {"a.example": ("10.0.0.2",)}
        # An outage keeps the last answer: no change is reported.
        fake.table["a.example"] = None
        n = len(fake.calls)
        await until(lambda: len(fake.calls) >= n + 2)
        assert len(changes) == 2 and r.answers == {"a.example": ("10.0.0.2",)}
        await r.aclose()

    run(body)


def test_one_failing_name_does_not_hold_the_others() -> None:
    async def body() -> None:
        changes: list[dict[str, Any]] = []
        fake = FakeResolver()
        fake.table = {"ok.example": ["10.0.0.1"]}
        r = DnsResolver(changes.append, resolver=fake)
        r.want(["ok.example", "bad.invalid"])
        await until(lambda: len(changes) == 2)
        assert r.answers == {"ok.example": ("10.0.0.1",), "bad.invalid": ()}
        r.want(["ok.example"])
        assert r.answers == {"ok.example": ("10.0.0.1",)}
        await r.aclose()

    run(body)
