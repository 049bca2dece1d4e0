"""A throwaway 3-member etcd cluster on loopback, for fleet tests: free ports, temp data dirs,
and per-member faults (kill, SIGSTOP/SIGCONT, restart) plus the whole cluster down and back.

Each member keeps its ports and data dir for its whole life, so a killed or restarted member
rejoins the cluster (etcd ignores the --initial-cluster flags when the data dir exists).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.etcd import ETCDCTL, START_DEADLINE, EtcdServer

__all__ = ["EtcdCluster", "EtcdMember", "etcd_cluster"]


class EtcdMember(EtcdServer):
    """One member: an EtcdServer whose membership flags name the whole cluster."""

    def __init__(self, cluster: EtcdCluster, name: str) -> None:
        super().__init__(name=name)
        self.cluster = cluster

    def cluster_args(self) -> list[str]:
        return [
            "--initial-cluster", self.cluster.initial_cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.cluster.token,
        ]  # fmt: skip

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def answering(self) -> bool:
        """Running and not frozen: etcdctl can talk to it."""
        return self.running and not self.paused


class EtcdCluster:
    def __init__(self, size: int = 3) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="tollway-etcd-cluster-"))
        self.token = f"tollway-cluster-{os.getpid()}-{id(self)}"
        self.members = [EtcdMember(self, f"m{i}") for i in range(size)]

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> EtcdCluster:
        """Start every member that is not running; return once all are healthy (a leader)."""
        for m in self.members:
            if not m.running:
                m.proc = None
                m.spawn()
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = START_DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        for m in self.members:
            if m.answering:
                m.wait_healthy(max(0.1, deadline - time.monotonic()))

    def kill(self, member: EtcdMember) -> None:
        member.kill()

    def restart(self, member: EtcdMember) -> None:
        """Start a killed member again on its data dir; it catches up with the others."""
        assert not member.running
        member.proc = None
        member.spawn()
        member.wait_healthy()

    def kill_all(self) -> None:
        for m in self.members:
            m.kill()

    def pause_all(self) -> None:
        for m in self.members:
            m.pause()

    def resume_all(self) -> None:
        for m in self.members:
            if m.paused:
                m.resume()

    def close(self) -> None:
        for m in self.members:
            m.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- etcdctl --------------------------------------------------------------------------

    def etcdctl(self, *args: str, input: bytes | None = None, timeout: float = 10) -> str:
        """etcdctl against the members that answer (not killed, not frozen)."""
        live = [m.endpoint for m in self.members if m.answering]
        assert live, "no etcd member answers"
        cmd = [ETCDCTL, "--endpoints", ",".join(live), "--dial-timeout", "2s",
               "--command-timeout", f"{max(1, int(timeout) - 1)}s"]  # fmt: skip
        env = {**os.environ, "ETCDCTL_API": "3"}
        out = subprocess.run(
            [*cmd, *args], input=input, capture_output=True, env=env, timeout=timeout, check=False
        )
        if out.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {out.stderr.decode(errors='replace')}")
        return out.stdout.decode()

    def status(self) -> list[dict[str, object]]:
        out = self.etcdctl("endpoint", "status", "-w", "json")
        rows: list[dict[str, object]] = json.loads(out)
        return rows

    def leader(self) -> EtcdMember:
        """The member every answering member names as leader (polls through an election)."""
        deadline = time.monotonic() + START_DEADLINE
        while True:
            try:
                rows = self.status()
            except (RuntimeError, subprocess.TimeoutExpired):
                rows = []
            by_id = {}
            leaders = set()
            for row in rows:
                st = row["Status"]
                assert isinstance(st, dict)
                by_id[st["header"]["member_id"]] = row["Endpoint"]
                leaders.add(st["leader"])
            if len(leaders) == 1 and (lead := leaders.pop()) in by_id:
                return next(m for m in self.members if m.endpoint == by_id[lead])
            if time.monotonic() > deadline:
                raise AssertionError(f"no agreed etcd leader: {rows}")
            time.sleep(0.05)

    def put(self, key: str, value: str) -> int:
        """Put and return the revision of the write (etcdctl's -w json header)."""
        out = self.etcdctl("put", key, "-w", "json", input=value.encode())
        return int(json.loads(out)["header"]["revision"])

    def get_prefix(self, prefix: str) -> tuple[int, dict[str, str]]:
        """Revision and every key under ``prefix`` (a linearizable read)."""
        out = json.loads(self.etcdctl("get", prefix, "--prefix", "-w", "json"))
        kvs = {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in out.get("kvs", [])
        }
        return int(out["header"]["revision"]), kvs

    def revision(self) -> int:
        return self.get_prefix("/nonexistent-key-for-the-revision")[0]

    def compact(self) -> int:
        rev = self.revision()
        self.etcdctl("compact", str(rev), "--physical")
        return rev


@pytest.fixture(scope="module")
def etcd_cluster() -> Iterator[EtcdCluster]:
    cluster = EtcdCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
