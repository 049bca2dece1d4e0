"""Fleet tests (issue #11): two Tollway instances with two workers each on a 3-member etcd
cluster, Redis for the shared rate-limit counters, and faults under load with Admin API writes
going on. Measured per fault: failed requests on routes that did not change (expected 0),
updates lost after recovery (expected 0: every instance serves what etcd holds), and seconds
until both instances serve a write made right after recovery (expected <= 2 s).

The table of numbers is printed at the end of the module (run with ``-s`` to see it).
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest
import requests

from tests.support.etcd_cluster import EtcdCluster, EtcdMember
from tests.support.fleet import (
    HEADER,
    PREFIX,
    WRITTEN,
    FaultResult,
    Fleet,
    abort_route,
    fresh_get,
    run_fault,
    under_load,
)
from tests.support.gateway import Gateway
from tests.support.redis import RedisCluster, RedisServer, redis_cluster, redis_server
from tests.support.upstream import Upstream
from tests.support.wait import wait_until

__all__ = ["redis_cluster", "redis_server"]

# Seconds each fault is held, under load; longer for a chaos run: TOLLWAY_FLEET_WINDOW=30.
WINDOW = float(os.environ.get("TOLLWAY_FLEET_WINDOW", "3"))
CONVERGE_LIMIT = 2.0  # seconds: both instances serve the latest write after etcd returns
results: list[FaultResult] = []


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Fleet]:
    root: Path = tmp_path_factory.mktemp("fleet")
    with EtcdCluster() as cluster:
        f = Fleet(root, cluster, upstream)
        try:
            f.start()
            yield f
        finally:
            f.close()
    if results:
        print(f"\n\nFleet faults (WINDOW = {WINDOW:.0f} s each)\n{HEADER}")
        for r in results:
            print(r.row())


def check(result: FaultResult) -> None:
    results.append(result)
    assert result.failed == 0, result.failures
    assert result.lost == []
    assert result.converge_s <= CONVERGE_LIMIT, result


# -- shared counters ------------------------------------------------------------------------


def _limited(fleet: Fleet, name: str, conf: dict[str, object], n: int) -> tuple[int, int]:
    """Create a limit-count route of ``n`` through instance A's Admin API, then send 2n
    requests spread over both instances (and their workers): (passed, rejected)."""
    a = fleet.gws[0]
    route = {"uri": f"/{name}", "plugins": {"limit-count": {
        "count": n, "time_window": 60, "key_type": "constant", "key": name, **conf}},
        "upstream": {"nodes": {fleet.upstream.addr: 1}}}  # fmt: skip
    r = requests.put(a.admin_url(f"/routes/{name}"), json=route,
                     headers={"X-API-KEY": a.admin_key}, timeout=10)  # fmt: skip
    assert r.status_code in (200, 201), r.text
    rev = wait_until(fleet.cluster.revision, timeout=15)
    for g in fleet.gws:
        wait_until(lambda g=g: fleet.applied(g) >= rev)  # type: ignore[misc]
    urls = [fleet.gws[i % 2].url(f"/{name}") for i in range(2 * n)]
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda u: fresh_get(u).status_code, urls))
    assert set(codes) <= {200, 503}, codes
    return codes.count(200), codes.count(503)


def test_limit_count_on_redis_is_exact_across_instances(
    fleet: Fleet, redis_server: RedisServer
) -> None:
    conf = {"policy": "redis", "redis_host": "127.0.0.1", "redis_port": redis_server.port}
    assert _limited(fleet, "lc-redis", conf, 40) == (40, 40)


def test_limit_count_on_redis_cluster_is_exact_across_instances(
    fleet: Fleet, redis_cluster: RedisCluster
) -> None:
    conf = {"policy": "redis-cluster", "redis_cluster_nodes": redis_cluster.addrs,
            "redis_cluster_name": "fleet"}  # fmt: skip
    assert _limited(fleet, "lc-cluster", conf, 40) == (40, 40)


# -- etcd faults under load -----------------------------------------------------------------


def watched_member(fleet: Fleet, g: Gateway | None = None) -> EtcdMember:
    """The member an instance's watch runs on (A's by default; it says so in its log)."""
    logs = (g or fleet.gws[0]).logs()
    where = re.findall(r"etcd: (?:watching \S+ on|the watch moved from \S+ to) (\S+)", logs)
    assert where, logs
    return next(m for m in fleet.cluster.members if m.endpoint == where[-1])


def test_one_member_frozen(fleet: Fleet) -> None:
    member = watched_member(fleet)
    role = "the leader" if fleet.cluster.leader() is member else "a follower"
    result = run_fault(
        fleet, f"member frozen (SIGSTOP): the one A watches, {role}", member.pause,
        member.resume, window=WINDOW, write_during=True,
    )  # fmt: skip
    check(result)
    assert result.during_s is not None and result.during_s < 8  # probe: 2 s + 2 s timeout


def test_leader_killed(fleet: Fleet) -> None:
    cluster = fleet.cluster
    leader = cluster.leader()
    result = run_fault(
        fleet, "leader killed, restarted after the window",
        lambda: cluster.kill(leader), lambda: cluster.restart(leader),
        window=WINDOW, write_during=True,
    )  # fmt: skip
    check(result)


def test_all_members_frozen(fleet: Fleet) -> None:
    cluster = fleet.cluster
    result = run_fault(
        fleet, "all members frozen", cluster.pause_all, cluster.resume_all,
        window=WINDOW, write_during=False,
    )  # fmt: skip
    check(result)


def test_compaction_while_an_instance_is_away(fleet: Fleet) -> None:
    """Instance B's supervisor is frozen (its workers keep serving) and the member its watch is
    on is killed; etcd takes writes and is compacted past B's revision. When B resumes, its
    re-watch is refused as compacted: a full reload, and nothing lost."""
    cluster = fleet.cluster
    b = fleet.gws[1]
    member = watched_member(fleet, b)

    def inject() -> None:
        b.signal(signal.SIGSTOP)
        cluster.kill(member)
        # Two writes: B's re-watch starts at the first, and a watch from exactly the compacted
        # revision is allowed (etcd.md §3).
        for n in (1, 2):
            body = json.dumps(abort_route("/while-away", f"written while B was away {n}"))
            wait_until(partial(cluster.put, f"{PREFIX}/routes/while-away", body), timeout=15)
        wait_until(cluster.compact, timeout=15)

    def recover() -> None:
        b.signal(signal.SIGCONT)
        cluster.restart(member)

    try:
        result = run_fault(
            fleet, "compaction past instance B's revision while B is away", inject, recover,
            window=WINDOW, write_during=False,
        )  # fmt: skip
    finally:
        b.signal(signal.SIGCONT)  # whatever failed, B must not stay frozen
    check(result)
    assert re.search(r"etcd: revision \d+ compacted \(at \d+\): full reload", b.logs())


def test_whole_cluster_down_then_back(fleet: Fleet) -> None:
    cluster = fleet.cluster
    result = run_fault(
        fleet, "whole cluster down (SIGKILL), then back", cluster.kill_all, cluster.start,
        window=WINDOW, write_during=False,
    )  # fmt: skip
    check(result)


def test_instance_restarted_while_etcd_is_down_starts_from_its_snapshot(fleet: Fleet) -> None:
    """etcd goes away; instance B is restarted and serves its last-known-good snapshot (the
    same config A keeps serving); etcd returns and both serve new writes."""
    cluster = fleet.cluster
    a, b = fleet.gws
    result = FaultResult("instance B restarted while the cluster is down")
    with under_load(fleet, result, gws=[a]):
        cluster.kill_all()
        # Nothing can change now: wait until both hold the same revision, note what A serves.
        wait_until(
            lambda: len(fleet.worker_revisions(a) | fleet.worker_revisions(b)) == 1, timeout=10
        )
        uris = [f"/{name}" for name in WRITTEN] + ["/during", "/latest"]
        want = {uri: fresh_get(a.url(uri)).text for uri in uris}
        b.stop()
        b.start(wait_ready=False)
        b.wait_ready(timeout=30)
        status = b.status("/status/config").json()
        assert status["from_snapshot"] is True
        assert "SERVING THE LAST-KNOWN-GOOD SNAPSHOT" in b.logs()
        result.lost = fleet.mismatches(b, want)
        for _ in range(8):
            assert fresh_get(b.url("/stable/0")).status_code == 200
        cluster.start()
        result.converge_s = fleet.seconds_to_serve_new_write("/latest", "latest-restart")
    assert b.status("/status/config").json()["from_snapshot"] is False
    result.lost += fleet.lost_updates()
    check(result)
