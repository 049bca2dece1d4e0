"""EtcdSource recovery after an outage: the backoff ends as soon as etcd answers (a probe, or a
request of another task through the same client), and a watch that moves to another member of a
cluster says so. Real etcd, no mocks."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from functools import partial
from itertools import pairwise

import pytest

from tests.integration.test_etcd_source import PREFIX, RecordingSink, running
from tests.support.etcd import EtcdServer, arun, etcd  # noqa: F401
from tests.support.etcd_cluster import EtcdCluster
from tests.support.wait import until, wait_until
from tollway.config.etcd import EtcdClient
from tollway.config.etcd_source import EtcdSource

# A backoff long enough that sleeping it out would fail every assertion below.
LONG_BACKOFF = 30.0


def slow_backoff_source(client: EtcdClient, *, probe_interval: float) -> EtcdSource:
    src = EtcdSource(client, PREFIX, resync_delay=0.2, health_check_interval=0.3, probe_timeout=0.5)
    src.backoff_initial = src.backoff_max = LONG_BACKOFF
    src.recovery_probe_interval = probe_interval
    return src


async def _outage(etcd: EtcdServer, source: EtcdSource) -> None:  # noqa: F811
    """Kill etcd and wait until the source sits in its (long) backoff."""
    etcd.kill()
    await until(lambda: not source.connected and source._failures >= 1, timeout=5)


def test_backoff_ends_when_the_probe_gets_an_answer(etcd: EtcdServer) -> None:  # noqa: F811
    async def body() -> float:
        client = EtcdClient([etcd.endpoint], timeout=1)
        sink = RecordingSink()
        source = slow_backoff_source(client, probe_interval=0.25)
        async with running(source, sink):
            await until(lambda: source.connected)
            await _outage(etcd, source)
            await asyncio.to_thread(etcd.start)
            t0 = time.monotonic()  # etcd answers /health
            rev = await asyncio.to_thread(etcd.put, f"{PREFIX}/routes/after", "{}")
            await until(lambda: source.revision >= rev, timeout=5)
            return time.monotonic() - t0

    took = arun(body())
    print(f"caught up {took:.2f} s after etcd answered again (backoff was {LONG_BACKOFF} s)")
    assert took < 1.5


def test_a_request_through_the_client_ends_the_backoff(etcd: EtcdServer) -> None:  # noqa: F811
    """The Admin API writes through the source's client: its answer wakes the watch, with no
    probe at all (the probe interval is longer than the test)."""

    async def body() -> float:
        client = EtcdClient([etcd.endpoint], timeout=1)
        sink = RecordingSink()
        source = slow_backoff_source(client, probe_interval=LONG_BACKOFF)
        async with running(source, sink):
            await until(lambda: source.connected)
            await _outage(etcd, source)
            await asyncio.to_thread(etcd.start)
            t0 = time.monotonic()
            rev, _ = await client.put(f"{PREFIX}/routes/after", b"{}")
            await until(lambda: source.revision >= rev, timeout=5)
            return time.monotonic() - t0

    took = arun(body())
    print(f"caught up {took:.2f} s after the client's write")
    assert took < 1.0


def test_watch_moves_to_another_member_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tollway.config")
    with EtcdCluster() as cluster:

        async def body() -> tuple[str, str | None]:
            client = EtcdClient(cluster.endpoints, timeout=1)
            sink = RecordingSink()
            source = slow_backoff_source(client, probe_interval=0.25)
            source.backoff_initial = source.backoff_max = 0.2
            async with running(source, sink):
                await until(lambda: source.connected and source.endpoint is not None)
                first = source.endpoint
                member = next(m for m in cluster.members if m.endpoint == first)
                await asyncio.to_thread(cluster.kill, member)
                # Retried: the killed member may have been the leader (a put fails meanwhile).
                put = partial(cluster.put, f"{PREFIX}/routes/moved", "{}")
                rev = await asyncio.to_thread(wait_until, put, 15)
                await until(lambda: source.revision >= rev, timeout=10)
                assert sink.state == {f"{PREFIX}/routes/moved": b"{}"}
                return first or "", source.endpoint

        first, now = arun(body())
    assert now is not None and now != first
    # Once per move: a chain from the killed member to the current one (an election may make
    # the watch move more than once).
    moves = [
        re.fullmatch(r"etcd: the watch moved from (\S+) to (\S+)", r.getMessage())
        for r in caplog.records
        if "moved" in r.getMessage()
    ]
    hops = [(m.group(1), m.group(2)) for m in moves if m is not None]
    assert len(hops) == len(moves) >= 1
    assert hops[0][0] == first and hops[-1][1] == now
    assert all(src != dst for src, dst in hops)
    assert all(a[1] == b[0] for a, b in pairwise(hops))
