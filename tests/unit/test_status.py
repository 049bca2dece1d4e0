"""The status API reads the instance through InstanceView: any object offering the view serves."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from tollway.config.store import Store
from tollway.instance import InstanceView, SourceStatus, WorkerStatus
from tollway.plugins.registry import Registry, load_registry
from tollway.settings import LoadedSettings, default_settings
from tollway.status import build_status_app


@dataclass
class View:
    """An InstanceView made of plain values: no supervisor, no workers, no sockets."""

    settings: LoadedSettings = field(default_factory=lambda: default_settings(Path("/tmp/c")))
    store: Store = field(default_factory=Store)
    registry: Registry = field(default_factory=load_registry)
    source: Any = None
    etcd_client: Any = None
    upstreams: Any = None
    workers: list[WorkerStatus] = field(default_factory=list)
    status: SourceStatus = field(default_factory=lambda: SourceStatus(12, 15, True, False, 2))

    def source_status(self) -> SourceStatus:
        return self.status

    def worker_status(self) -> list[WorkerStatus]:
        return self.workers

    def all_ready(self) -> bool:
        return all(w.ready for w in self.workers if w.current) and bool(self.workers)


def get(view: InstanceView, path: str) -> tuple[int, Any]:
    async def go() -> tuple[int, Any]:
        async with TestClient(TestServer(build_status_app(view))) as client:
            r = await client.get(path)
            return r.status, await r.json()

    return asyncio.run(go())


def test_ready_counts_the_current_generation_only() -> None:
    view = View(workers=[WorkerStatus(1, True, 12, True), WorkerStatus(2, False, 0, True),
                         WorkerStatus(3, True, 12, False)])  # fmt: skip
    status, body = get(view, "/status/ready")
    assert status == 503
    assert body["error"] == "worker count: 2 but status report count: 1"
    view.workers[1] = WorkerStatus(2, True, 12, True)
    assert get(view, "/status/ready") == (200, {"status": "ok"})


def test_config_reports_the_source_status_and_every_worker() -> None:
    view = View(workers=[WorkerStatus(1, True, 12, True), WorkerStatus(3, True, 11, False)])
    status, body = get(view, "/status/config")
    assert status == 200
    assert (body["revision"], body["etcd_revision"], body["lag"]) == (12, 15, 3)
    assert (body["source_connected"], body["from_snapshot"], body["rejected"]) == (True, False, 2)
    assert body["workers"] == [
        {"pid": 1, "ready": True, "revision": 12},
        {"pid": 3, "ready": True, "revision": 11},
    ]
