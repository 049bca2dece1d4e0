"""limit-count's sliding window, the Redis targets and the delayed syncer: pure logic, no
socket (the Redis scripts themselves run on a real redis-server in
tests/integration/test_redis_scripts.py)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.clock import Clock, fake_shared_tables
from tollway.plugins.builtin.limit_count import Conf
from tollway.plugins.builtin.limit_count_redis import DelayedSync
from tollway.plugins.builtin.limit_windows import (
    sliding_answer,
    sliding_keys,
    sliding_local,
    whole,
)
from tollway.plugins.redis_client import RedisUnavailable, Target, target_of
from tollway.plugins.shared_counters import SharedTable


def test_whole_seconds_round_up() -> None:
    assert [whole(60.0), whole(59.2), whole(0.0), whole(0.0000001)] == [60, 60, 0, 0]


def test_sliding_keys_number_windows_by_wall_clock() -> None:
    cur, prev, left = sliding_keys("k", 1000.5, 10)
    assert (cur, prev) == ("k.100.counter", "k.99.counter")
    assert left == pytest.approx(9.5)


def test_sliding_answer_weighs_the_previous_window() -> None:
    # 10 per 10 s; the previous window had 10; 2.5 s into this one 7.5 of them still count.
    assert sliding_answer(True, 1, 10, 10, 10, 7.5) == (True, 1, 8)
    # Rejected while the count alone is at the limit: told to wait for the window's end.
    assert sliding_answer(False, 10, 0, 10, 10, 7.5) == (False, 0, 8)
    # Rejected by the previous share: told when enough of it will have slid out.
    assert sliding_answer(False, 2, 10, 10, 10, 9.0) == (False, 0, 1)
    # The previous count weighs at most the limit.
    assert sliding_answer(True, 1, 500, 10, 10, 5.0) == (True, 4, 5)


def test_sliding_local_counts_only_what_it_admits() -> None:
    clock = Clock(50.0)
    table = SharedTable(None, 1024, clock)
    results = [sliding_local(table, "k", 3, 10, 1000.0) for _ in range(5)]
    assert [r[0] for r in results] == [True, True, True, False, False]
    assert [r[1] for r in results[:3]] == [2, 1, 0]
    # Next window, 1 s in: 2.7 of the previous 3 weigh, so one request fits (0 + 2.7 < 3), not
    # two (a fixed window would admit three).
    clock.now += 11
    assert sliding_local(table, "k", 3, 10, 1011.0)[:2] == (True, 0)
    assert sliding_local(table, "k", 3, 10, 1011.0)[0] is False
    # 5 s in: 1.5 weigh, so one more fits (1 + 1.5 < 3) and then none.
    clock.now += 4
    assert sliding_local(table, "k", 3, 10, 1015.0)[:2] == (True, 0)
    assert sliding_local(table, "k", 3, 10, 1015.0)[0] is False


@given(
    st.integers(1, 50),
    st.integers(1, 60),
    st.lists(st.floats(0, 200, allow_nan=False), min_size=1, max_size=80),
)
def test_sliding_local_never_admits_more_than_limit_per_window(
    limit: int, window: int, gaps: list[float]
) -> None:
    clock = Clock(0.0)
    table = SharedTable(None, 1024, clock)
    now = 0.0
    admitted: dict[int, int] = {}
    for gap in gaps:
        now += gap
        clock.now = now
        ok, remaining, reset = sliding_local(table, "k", limit, window, now)
        assert 0 <= remaining < limit and 0 <= reset <= window
        if ok:
            wid = int(now // window)
            admitted[wid] = admitted.get(wid, 0) + 1
    assert all(n <= limit for n in admitted.values())


def _conf(raw: dict[str, object]) -> Conf:
    return msgspec.convert({"count": 1, "time_window": 60, **raw}, Conf)


def test_targets_name_what_needs_its_own_connections() -> None:
    t = target_of(_conf({"policy": "redis", "redis_host": "h1", "redis_timeout": 250}), "redis")
    assert (t.nodes, t.database, t.deadline, t.password) == ((("h1", 6379),), 0, 0.25, None)
    other_db = target_of(
        _conf({"policy": "redis", "redis_host": "h1", "redis_database": 2}), "redis"
    )
    assert other_db != t
    cluster = target_of(
        _conf(
            {
                "policy": "redis-cluster",
                "redis_cluster_nodes": ["127.0.0.1:7000", "[::1]:7001", "h2"],
                "redis_cluster_name": "c",
                "redis_password": "",
            }
        ),
        "redis-cluster",
    )
    assert cluster.nodes == (("127.0.0.1", 7000), ("::1", 7001), ("h2", 6379))
    assert cluster.password is None  # APISIX: an empty password sends no AUTH
    sentinel = target_of(
        _conf(
            {
                "policy": "redis-sentinel",
                "redis_sentinels": [{"host": "s1", "port": 26379}],
                "redis_master_name": "m",
                "redis_role": "slave",
                "redis_connect_timeout": 100,
                "redis_read_timeout": 200,
            }
        ),
        "redis-sentinel",
    )
    assert isinstance(sentinel, Target)
    assert (sentinel.master_name, sentinel.role) == ("m", "slave")
    assert sentinel.deadline == pytest.approx(0.3)


def test_sync_interval_must_be_shorter_than_the_window() -> None:
    base = {"policy": "redis", "redis_host": "h1", "time_window": 5}
    with pytest.raises(msgspec.ValidationError, match="smaller than time_window"):
        _conf({**base, "sync_interval": 5})
    with pytest.raises(msgspec.ValidationError, match=r"not be smaller than 0\.1"):
        _conf({**base, "sync_interval": 0.05})
    assert _conf({**base, "sync_interval": 1}).sync_interval == 1


class FakeRedis:
    """A fixed-window count per key, as the Redis script keeps it."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.commits: list[tuple[str, int]] = []
        self.down = False

    async def commit(self, key: str, limit: int, window: int, delta: int) -> tuple[int, float]:
        if self.down:
            raise RedisUnavailable("down")
        self.commits.append((key, delta))
        self.counts[key] = self.counts.get(key, 0) + delta
        return limit - self.counts[key], 30.0

    async def incoming(self, key: str, limit: int, window: int) -> tuple[bool, int, int]:
        remaining, ttl = await self.commit(key, limit, window, 1)
        return remaining >= 0, max(remaining, 0), int(ttl)


def test_delayed_sync_counts_locally_and_stores_each_delta_once() -> None:
    async def run() -> None:
        redis, clock = FakeRedis(), Clock(0.0)
        table = SharedTable(None, 1024, clock)
        # Two workers of one instance: one shared table, a syncer each.
        w1, w2 = DelayedSync(redis, 1.0, table), DelayedSync(redis, 1.0, table)
        redis.counts["k"] = 2  # another instance already counted 2 of 6
        results = [await w.take("k", 6, 60) for w in (w1, w2, w1, w2, w1)]
        assert [r[:2] for r in results] == [(True, 3), (True, 2), (True, 1), (True, 0), (False, 0)]
        assert redis.commits == [("k", 0)]  # one read, then counting in the instance
        assert await w1.flush() is True
        assert redis.commits[-1] == ("k", 4) and redis.counts["k"] == 6  # both workers' deltas
        assert await w2.flush() is True  # its keys: the delta was taken already, nothing added
        assert redis.commits[-1] == ("k", 0) and redis.counts["k"] == 6
        assert await w1.flush() is False
        # The quota's window is over: the next request reads a fresh quota first.
        redis.counts["k"] = 0
        clock.now = 31.0
        assert (await w2.take("k", 6, 60))[:2] == (True, 5)
        for w in (w1, w2):
            if w.task is not None:
                w.task.cancel()

    asyncio.run(run())


def test_delayed_sync_keeps_a_delta_counted_just_before_the_reset() -> None:
    async def run() -> None:
        redis, clock = FakeRedis(), Clock(0.0)
        syncer = DelayedSync(redis, 1.0, SharedTable(None, 1024, clock))
        assert (await syncer.take("k", 5, 60))[0] is True
        clock.now = 30.5  # the quota (30 s) is over before the flush
        assert (await syncer.take("k", 5, 60))[0] is True
        assert redis.commits == [("k", 0), ("k", 1)]  # the old delta went with the refresh
        if syncer.task is not None:
            syncer.task.cancel()

    asyncio.run(run())


def test_delayed_sync_falls_back_to_the_instance_while_redis_is_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_shared_tables(monkeypatch, "plugin-limit-count", "plugin-limit-count-sync", now=0.0)

    async def run() -> None:
        redis = FakeRedis()
        redis.down = True
        syncer = DelayedSync(redis, 1.0)
        results = [await syncer.take("k", 2, 60) for _ in range(3)]
        assert [r[0] for r in results] == [True, True, False]
        assert await syncer.flush() is True  # the delta goes to the local policy's table
        assert (await syncer.take("k", 2, 60))[0] is False
        if syncer.task is not None:
            syncer.task.cancel()

    asyncio.run(run())


@given(
    st.lists(st.tuples(st.sampled_from(["take", "flush", "tick"]), st.integers(0, 1)), max_size=60)
)
def test_delayed_sync_stores_every_admitted_request_exactly_once(
    ops: list[tuple[str, int]],
) -> None:
    async def run() -> None:
        redis, clock = FakeRedis(), Clock(0.0)
        table = SharedTable(None, 1024, clock)
        workers = [DelayedSync(redis, 1.0, table), DelayedSync(redis, 1.0, table)]
        admitted = 0
        for op, w in ops:
            if op == "take":
                admitted += (await workers[w].take("k", 10**6, 60))[0]
            elif op == "flush":
                await workers[w].flush()
            else:
                # Quotas last 30 s, so runs pass resets; at most 60 ticks stay within the 60 s
                # a record outlives its quota (the background flush runs every interval).
                clock.now += 1.4
        for w in workers:
            await w.flush()
            if w.task is not None:
                w.task.cancel()
        assert redis.counts.get("k", 0) == admitted

    asyncio.run(run())
