"""Start-up (issue #17): what runs first, and what a process does not import until it is used.

No gateway process here: the supervisor's workers, source and services are stubs that record
when they start; the imports are checked in a fresh interpreter.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tollway.config.source import ConfigSink, ConfigSource
from tollway.settings import load_settings
from tollway.supervisor import Supervisor, WorkerHandle


class RecordingSource(ConfigSource):
    def __init__(self, events: list[str]) -> None:
        self.events = events

    async def run(self, sink: ConfigSink) -> None:
        self.events.append("source")
        await asyncio.Event().wait()


def test_workers_spawn_before_the_config_source_and_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf" / "config.yaml"
    conf.parent.mkdir()
    conf.write_text(
        "nginx_config:\n  worker_processes: 2\n"
        "deployment:\n  role: data_plane\n  role_data_plane:\n    config_provider: yaml\n"
    )
    (tmp_path / "conf" / "apisix.yaml").write_text("routes: []\n#END\n")
    sup = Supervisor(load_settings(conf, warn=False))
    events: list[str] = []

    async def spawn(generation: int) -> Any:
        events.append("worker")
        await asyncio.sleep(0)  # a real spawn awaits: the source must not have started yet

    async def services() -> None:
        events.append("services")
        sup._stop.set()

    async def metrics() -> None:
        events.append("metrics")

    monkeypatch.setattr(sup, "open_sockets", lambda: None)
    monkeypatch.setattr(sup, "make_source", lambda: RecordingSource(events))
    monkeypatch.setattr(sup, "spawn_worker", spawn)
    monkeypatch.setattr(sup, "start_metrics", metrics)
    monkeypatch.setattr(sup, "start_services", services)

    assert asyncio.run(asyncio.wait_for(sup.run(), 20)) == 0
    # The workers' interpreters start while the source reads and validates (which holds the
    # supervisor's loop); the Prometheus directory exists before any worker records into it.
    assert events[:3] == ["metrics", "worker", "worker"]
    assert sorted(events[3:]) == ["services", "source"]


def test_plugins_import_no_redis_jwt_or_ca_store_until_used() -> None:
    """Loading every built-in plugin (what each process does at start) leaves redis-py and
    PyJWT unimported and builds no TLS context; a public-key jwt-auth consumer imports PyJWT
    when it is decoded (config time), not on its first request."""
    code = (
        "import sys, ssl\n"
        "made = []\n"
        "real = ssl.create_default_context\n"
        "ssl.create_default_context = lambda *a, **k: made.append(1) or real(*a, **k)\n"
        "from tollway.plugins.registry import load_registry\n"
        "import tollway.worker\n"
        "registry = load_registry()\n"
        "assert 'redis' not in sys.modules, 'redis'\n"
        "assert 'jwt' not in sys.modules, 'jwt'\n"
        "assert not made, 'an SSL context at import'\n"
        "registry.decode_conf('jwt-auth', {'key': 'k', 'algorithm': 'RS256',\n"
        "    'public_key': 'not checked here'}, consumer=True)\n"
        "assert 'jwt.algorithms' in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_first_snapshot_waits_for_ready_workers(tmp_path: Path) -> None:
    """Encoding a large snapshot competes with the workers' first compile: the first write
    waits until they are ready (the previous snapshot stays on disk meanwhile)."""
    conf = tmp_path / "conf" / "config.yaml"
    conf.parent.mkdir()
    conf.write_text(
        "deployment:\n  role: traditional\n  role_traditional:\n    config_provider: etcd\n"
        "  etcd:\n    host: ['http://127.0.0.1:1']\n"
    )
    sup = Supervisor(load_settings(conf, warn=False))
    worker = WorkerHandle(0, None, None)  # type: ignore[arg-type]
    sup.workers.append(worker)

    async def go() -> None:
        sup.store.load_rows(7, [("/apisix/routes/1", b'{"uri": "/a", "upstream_id": "1"}', 7, 7)])
        sup.snapshot_dirty()
        await asyncio.sleep(0.8)  # past the usual 0.2 s delay: not written, the worker starts
        assert not sup.snapshot_path.exists()
        worker.ready = True
        deadline = asyncio.get_running_loop().time() + 10
        while not sup.snapshot_path.exists():
            assert asyncio.get_running_loop().time() < deadline, "never written"
            await asyncio.sleep(0.05)

    asyncio.run(go())
    from tollway.config.snapshot import read_snapshot_rows

    snap = read_snapshot_rows(sup.snapshot_path)
    assert snap is not None and snap[0] == 7 and snap[1][0][0] == "/apisix/routes/1"
