"""The limit-* Redis scripts on a real redis-server: their semantics (APISIX's), atomicity under
concurrency, and the client's failure modes (down, hung, back, script cache flushed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.support.etcd import make_test_pki
from tests.support.gateway import free_port
from tests.support.redis import RedisServer, redis_server
from tollway.plugins.builtin.limit_redis import (
    conn_incoming,
    fixed_window,
    leaky_bucket,
    sliding_window,
)
from tollway.plugins.redis_client import RedisClient, RedisUnavailable, Target

__all__ = ["redis_server"]

T = TypeVar("T")


def run(redis: RedisServer, body: Callable[[RedisClient], Awaitable[T]], timeout: float = 0.3) -> T:
    """Run ``body`` with a fresh client (clients belong to one event loop)."""

    async def main() -> T:
        c = RedisClient(Target("redis", (("127.0.0.1", redis.port),), read_timeout=timeout,
                               connect_timeout=timeout))  # fmt: skip
        try:
            return await body(c)
        finally:
            await c.aclose()

    return asyncio.run(main())


def test_fixed_window_counts_from_the_first_request(redis_server: RedisServer) -> None:
    async def body(c: RedisClient) -> None:
        assert await fixed_window(c, "fw:a", 60, 1) == (1, 60.0)
        used, ttl = await fixed_window(c, "fw:a", 60, 1)
        assert used == 2 and 59 < ttl <= 60
        assert (await fixed_window(c, "fw:a", 60, 3))[0] == 5
        assert (await fixed_window(c, "fw:a", 60, 0))[0] == 5  # a delayed sync's read

    run(redis_server, body)
    assert redis_server.cli("get", "fw:a") == "5"
    # A count without a TTL (someone SET it) starts a new window, as in APISIX's script.
    redis_server.cli("set", "fw:b", "7")
    assert run(redis_server, lambda c: fixed_window(c, "fw:b", 10, 1)) == (1, 10.0)


def test_fixed_window_is_atomic(redis_server: RedisServer) -> None:
    async def body(c: RedisClient) -> list[int]:
        got = await asyncio.gather(*(fixed_window(c, "fw:many", 60, 1) for _ in range(50)))
        return sorted(u for u, _ in got)

    # What is checked is atomicity, not speed: 50 calls at once queue for the pool's
    # connections, so a busy machine may take longer than the 0.3 s the other tests allow.
    assert run(redis_server, body, timeout=5.0) == list(range(1, 51))


def test_sliding_window_counts_only_what_it_admits(redis_server: RedisServer) -> None:
    redis_server.cli("set", "sw:prev2", "4")

    async def body(c: RedisClient) -> None:
        # limit 3 per 10 s, 5 s left in the window, nothing before.
        got = [await sliding_window(c, "sw:cur", "sw:prev", 3, 10, 5.0) for _ in range(4)]
        assert got == [(True, 1, 0), (True, 2, 0), (True, 3, 0), (False, 3, 0)]
        # The previous window's 4 (capped at the limit, 3) weigh 3 * 5/10 = 1.5: 0 and 1 more
        # fit under 3, 2 more do not.
        got = [await sliding_window(c, "sw:cur2", "sw:prev2", 3, 10, 5.0) for _ in range(3)]
        assert got == [(True, 1, 3), (True, 2, 3), (False, 2, 3)]

    run(redis_server, body)
    assert redis_server.cli("get", "sw:cur") == "3"
    assert 19 <= int(redis_server.cli("ttl", "sw:cur")) <= 20  # two windows


def test_leaky_bucket_drains_at_rate(redis_server: RedisServer) -> None:
    t = 1_000_000.0  # ms: the caller's clock, passed in

    async def body(c: RedisClient) -> None:
        # 2/s with a burst of 1.
        assert await leaky_bucket(c, "lr:a", 2, 1, t) == 0.0
        assert await leaky_bucket(c, "lr:a", 2, 1, t) == pytest.approx(0.5)
        assert await leaky_bucket(c, "lr:a", 2, 1, t) is None  # over the burst: not stored
        # 500 ms later one request has drained.
        assert await leaky_bucket(c, "lr:a", 2, 1, t + 500) == pytest.approx(0.5)

    run(redis_server, body)
    fields = redis_server.cli("hgetall", "lr:a").split()
    assert dict(zip(fields[0::2], fields[1::2], strict=True)) == {
        "excess": "1000",
        "last": str(int(t + 500)),
    }
    assert 1 <= int(redis_server.cli("ttl", "lr:a")) <= 2  # ceil(burst / rate) + 1


def test_conn_counts_members_and_forgets_expired_ones(redis_server: RedisServer) -> None:
    now = int(time.time())

    async def body(c: RedisClient) -> None:
        assert await conn_incoming(c, "lc:a", 2, 100, now, "r1") == 1
        assert await conn_incoming(c, "lc:a", 2, 100, now, "r2") == 2
        assert await conn_incoming(c, "lc:a", 2, 100, now, "r3") is None
        await c.zrem("lc:a", "r1")
        assert await conn_incoming(c, "lc:a", 2, 100, now, "r4") == 2
        # key_ttl later the members are forgotten (a worker died without counting out).
        assert await conn_incoming(c, "lc:a", 2, 100, now + 101, "r5") == 1

    run(redis_server, body)
    assert redis_server.cli("zrange", "lc:a", "0", "-1").split() == ["r5"]


def test_script_cache_flushed_falls_back_to_eval(redis_server: RedisServer) -> None:
    redis_server.cli("script", "flush")
    assert run(redis_server, lambda c: fixed_window(c, "fw:flushed", 60, 1)) == (1, 60.0)


def test_down_hung_and_back() -> None:
    with RedisServer() as redis:

        async def body(c: RedisClient) -> None:
            assert (await fixed_window(c, "k", 60, 1))[0] == 1
            redis.kill()
            with pytest.raises(RedisUnavailable):
                await fixed_window(c, "k", 60, 1)
            redis.start()  # the same client works again: nothing to restart
            assert (await fixed_window(c, "k", 60, 1))[0] == 1
            redis.pause()
            try:
                t0 = time.monotonic()
                with pytest.raises(RedisUnavailable):
                    await fixed_window(c, "k", 60, 1)
                assert time.monotonic() - t0 < 0.6  # the 0.3 s deadline, not a hang
            finally:
                redis.resume()
            # The command that timed out ran once Redis woke: it is not sent again.
            assert (await fixed_window(c, "k", 60, 1))[0] == 3

        run(redis, body)


@pytest.mark.parametrize("policy", ["redis-cluster", "redis-sentinel"])
def test_cluster_and_sentinel_unreachable_fail_within_the_deadline(policy: str) -> None:
    async def main() -> float:
        target = Target(
            policy, (("127.0.0.1", free_port()),), connect_timeout=0.2, read_timeout=0.2,
            master_name="m",
        )  # fmt: skip
        c = RedisClient(target)
        t0 = time.monotonic()
        try:
            with pytest.raises(RedisUnavailable):
                await fixed_window(c, "k", 60, 1)
            return time.monotonic() - t0
        finally:
            await c.aclose()

    assert asyncio.run(main()) < 1.0


def test_password_and_acl_user() -> None:
    acl = ["--user", "default", "on", ">s3cret", "~*", "+@all",
           "--user", "alice", "on", ">pw", "~*", "+@all"]  # fmt: skip
    with RedisServer(*acl) as redis:
        addr = (("127.0.0.1", redis.port),)

        async def count(target: Target) -> int:
            c = RedisClient(target)
            try:
                return (await fixed_window(c, "auth", 60, 1))[0]
            finally:
                await c.aclose()

        assert asyncio.run(count(Target("redis", addr, password="s3cret"))) == 1
        assert asyncio.run(count(Target("redis", addr, username="alice", password="pw"))) == 2
        for wrong in (Target("redis", addr), Target("redis", addr, password="nope")):
            with pytest.raises(RedisUnavailable):
                asyncio.run(count(wrong))


def test_tls(tmp_path: Path) -> None:
    make_test_pki(tmp_path)
    tls_port = free_port()
    tls = ["--tls-port", str(tls_port), "--tls-cert-file", str(tmp_path / "server.pem"),
           "--tls-key-file", str(tmp_path / "server.key"),
           "--tls-ca-cert-file", str(tmp_path / "ca.pem"), "--tls-auth-clients", "no"]  # fmt: skip
    with RedisServer(*tls):
        addr = (("127.0.0.1", tls_port),)

        async def count(target: Target) -> int:
            c = RedisClient(target)
            try:
                return (await fixed_window(c, "tls", 60, 1))[0]
            finally:
                await c.aclose()

        # redis_ssl without redis_ssl_verify: encrypted, the certificate is not checked.
        assert asyncio.run(count(Target("redis", addr, ssl=True))) == 1
        # With verification, a certificate from a CA the system does not trust is refused.
        with pytest.raises(RedisUnavailable):
            asyncio.run(count(Target("redis", addr, ssl=True, ssl_verify=True)))
        # Plain text to the TLS port fails too (within the deadline).
        with pytest.raises(RedisUnavailable):
            asyncio.run(count(Target("redis", addr)))
