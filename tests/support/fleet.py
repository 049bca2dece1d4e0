"""A fleet for fault tests: two Tollway instances (two workers each) on one 3-member etcd
cluster, a load generator on routes that never change, an Admin API writer on routes that do,
and the checks that say whether every instance serves what etcd holds.

Everything is bounded in time: requests have timeouts, threads are joined with deadlines and
recovery is polled with deadlines (the only sleeps are a fault's duration and a writer's pace).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import requests

from tests.support.etcd_cluster import EtcdCluster
from tests.support.gateway import Gateway
from tests.support.upstream import Upstream
from tests.support.wait import wait_until

PREFIX = "/apisix"
STABLE = [f"/stable/{i}" for i in range(4)]  # routes no test changes: must never fail
WRITTEN = [f"w{k}" for k in range(4)]  # routes the Admin API writer keeps changing
GRACE = 3.0  # tollway.graceful_timeout of the instances


def abort_route(uri: str, body: str) -> dict[str, Any]:
    """A route answered by the gateway itself with ``body``: what an instance serves for it
    shows which version of the route it holds."""
    return {
        "uri": uri,
        "plugins": {"fault-injection": {"abort": {"http_status": 200, "body": body}}},
    }


def stable_route(up: Upstream, uri: str) -> dict[str, Any]:
    return {"uri": uri, "upstream": {"nodes": {up.addr: 1}, "type": "roundrobin"}}


def fresh_get(url: str) -> requests.Response:
    """A request on a new connection (so successive ones spread over the workers)."""
    return requests.get(url, headers={"Connection": "close"}, timeout=5)


class Fleet:
    def __init__(self, root: Path, cluster: EtcdCluster, upstream: Upstream) -> None:
        self.cluster = cluster
        self.upstream = upstream
        conf = {
            "deployment": {"etcd": {"host": cluster.endpoints, "timeout": 5}},
            "tollway": {"graceful_timeout": GRACE},
        }
        self.gws = [
            Gateway(root / name, mode="etcd", etcd=cluster.endpoints[0], workers=2, config=conf)
            for name in ("a", "b")
        ]

    def start(self) -> Fleet:
        for uri in STABLE:
            self.cluster.put(f"{PREFIX}/routes/{uri.replace('/', '_')}",
                             json.dumps(stable_route(self.upstream, uri)))  # fmt: skip
        for name in WRITTEN:
            self.cluster.put(f"{PREFIX}/routes/{name}", json.dumps(abort_route(f"/{name}", "v0")))
        for g in self.gws:
            g.start()
        self.wait_serving_etcd(timeout=20)
        return self

    def close(self) -> None:
        for g in self.gws:
            g.stop()

    # -- what the instances serve ---------------------------------------------------------------

    def applied(self, g: Gateway) -> int:
        """The lowest revision the instance's workers have applied (0 if one is missing)."""
        body = g.status("/status/config").json()
        workers = [w for w in body["workers"] if w["ready"]]
        if len(workers) < 2:
            return 0
        return min(int(w["revision"]) for w in workers)

    def worker_revisions(self, g: Gateway) -> set[int]:
        return {int(w["revision"]) for w in g.status("/status/config").json()["workers"]}

    def serves(self, g: Gateway, uri: str, body: str, tries: int = 4) -> bool:
        return all(fresh_get(g.url(uri)).text == body for _ in range(tries))

    def mismatches(self, g: Gateway, want: dict[str, str]) -> list[str]:
        """What the instance serves differently from ``want`` (uri -> body)."""
        out = []
        for uri, body in want.items():
            got = {fresh_get(g.url(uri)).text for _ in range(4)}
            if got != {body}:
                out.append(f"{g.port}{uri}: want {body!r}, got {sorted(got)!r}")
        return out

    def etcd_routes(self) -> tuple[int, dict[str, str]]:
        """etcd's revision and, for every written route, the body it says to answer."""
        # Retried: a read fails while the cluster elects a leader (a rejoining member can
        # start an election: etcd 3.4 runs without --pre-vote by default).
        rev, kvs = wait_until(partial(self.cluster.get_prefix, f"{PREFIX}/routes/"), timeout=15)
        out = {}
        for value in kvs.values():
            item = json.loads(value)
            abort = item.get("plugins", {}).get("fault-injection", {}).get("abort")
            if abort is not None:
                out[item["uri"]] = abort["body"]
        return rev, out

    def lost_updates(self) -> list[str]:
        """After recovery: written routes some instance serves differently from etcd (each
        instance first has every worker at etcd's revision)."""
        rev, want = self.etcd_routes()
        for g in self.gws:
            wait_until(lambda g=g: self.applied(g) >= rev, timeout=10)  # type: ignore[misc]
        return [m for g in self.gws for m in self.mismatches(g, want)]

    def wait_serving_etcd(self, timeout: float) -> None:
        rev, want = self.etcd_routes()

        def ok() -> bool:
            return all(
                self.applied(g) >= rev and all(self.serves(g, u, b, 2) for u, b in want.items())
                for g in self.gws
            )

        wait_until(ok, timeout=timeout, interval=0.05)

    def seconds_to_serve_new_write(self, uri: str, body: str, timeout: float = 10) -> float:
        """Write through etcd (not an instance's Admin API) and time from etcd's acknowledgment
        until every worker of both instances serves it."""
        key, value = f"{PREFIX}/routes/{uri.strip('/')}", json.dumps(abort_route(uri, body))
        # Retried: a put can fail while the cluster elects a leader.
        rev = wait_until(lambda: self.cluster.put(key, value), timeout=timeout)
        t0 = time.monotonic()
        wait_until(
            lambda: all(self.applied(g) >= rev and self.serves(g, uri, body, 2) for g in self.gws),
            timeout=timeout,
            interval=0.02,
        )
        return time.monotonic() - t0


@dataclass
class Load:
    """Threads sending GETs to the stable routes of the given instances."""

    gws: Sequence[Gateway]
    threads_per_gw: int = 2
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self, g: Gateway) -> None:
        s = requests.Session()
        i = 0
        while not self._stop.is_set():
            uri = STABLE[i % len(STABLE)]
            i += 1
            try:
                r = s.get(g.url(uri), timeout=5)
                good = r.status_code == 200
                why = f"{g.port}{uri}: {r.status_code}"
            except requests.RequestException as e:
                good, why = False, f"{g.port}{uri}: {type(e).__name__}"
                s = requests.Session()
            with self._lock:
                if good:
                    self.ok += 1
                else:
                    self.failed.append(why)

    def start(self) -> Load:
        for g in self.gws:
            for _ in range(self.threads_per_gw):
                t = threading.Thread(target=self._run, args=(g,), daemon=True)
                t.start()
                self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        assert not any(t.is_alive() for t in self._threads), "load thread did not stop"


@dataclass
class AdminWriter:
    """Keeps changing the written routes through both instances' Admin APIs (alternately).
    Writes may fail while etcd cannot take them; that is counted, not an error."""

    gws: Sequence[Gateway]
    pace: float = 0.05
    ok: int = 0
    failed: int = 0
    _n: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        s = requests.Session()
        while not self._stop.is_set():
            self._n += 1
            g = self.gws[self._n % len(self.gws)]
            name = WRITTEN[self._n % len(WRITTEN)]
            body = abort_route(f"/{name}", f"v{self._n}")
            try:
                r = s.put(g.admin_url(f"/routes/{name}"), json=body,
                          headers={"X-API-KEY": g.admin_key}, timeout=10)  # fmt: skip
                good = r.status_code in (200, 201)
            except requests.RequestException:
                good = False
                s = requests.Session()
            if good:
                self.ok += 1
            else:
                self.failed += 1
            self._stop.wait(self.pace)  # pacing, not synchronisation

    def start(self) -> AdminWriter:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
            assert not self._thread.is_alive(), "admin writer did not stop"


@dataclass
class FaultResult:
    name: str
    requests: int = 0
    failed: int = 0
    admin_ok: int = 0
    admin_failed: int = 0
    lost: list[str] = field(default_factory=list)
    during_s: float | None = None  # a write made during the fault: seconds until served
    converge_s: float = 0.0  # after recovery: seconds until both instances serve a new write
    failures: list[str] = field(default_factory=list)

    def row(self) -> str:
        during = "-" if self.during_s is None else f"{self.during_s:.2f}"
        return (f"| {self.name} | {self.requests} | {self.failed} | {self.admin_ok} / "
                f"{self.admin_failed} | {len(self.lost)} | {during} | {self.converge_s:.2f} |")  # fmt: skip


HEADER = (
    "| fault | requests | failed | Admin API writes ok / failed | lost updates "
    "| write during fault served after (s) | converged after recovery (s) |\n"
    "|---|---|---|---|---|---|---|"
)


@contextmanager
def under_load(
    fleet: Fleet, result: FaultResult, gws: Sequence[Gateway] | None = None
) -> Iterator[None]:
    """Load on the stable routes and Admin API writes for the duration of the block."""
    load = Load(gws if gws is not None else fleet.gws).start()
    writer = AdminWriter(gws if gws is not None else fleet.gws).start()
    try:
        yield
    finally:
        writer.stop()
        load.stop()
        result.requests = load.ok + len(load.failed)
        result.failed = len(load.failed)
        result.failures = load.failed[:10]
        result.admin_ok, result.admin_failed = writer.ok, writer.failed
        fleet.upstream.requests.clear()  # the upstream keeps every request: bound its memory


def run_fault(
    fleet: Fleet,
    name: str,
    inject: Callable[[], None],
    recover: Callable[[], None],
    *,
    window: float,
    write_during: bool,
) -> FaultResult:
    """Inject a fault under load, hold it for ``window`` s, recover, then measure."""
    result = FaultResult(name)
    with under_load(fleet, result):
        t0 = time.monotonic()
        inject()
        if write_during:
            result.during_s = fleet.seconds_to_serve_new_write("/during", f"during-{name}")
        time.sleep(max(0.0, t0 + window - time.monotonic()))  # the fault's duration
        recover()
        result.converge_s = fleet.seconds_to_serve_new_write("/latest", f"latest-{name}")
    result.lost = fleet.lost_updates()
    return result
