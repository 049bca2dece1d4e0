"""Supervisor and workers: restart, graceful stop, reload, stop/reload commands (issue #2)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import requests

from tests.support.gateway import Gateway, wait_until
from tests.support.upstream import Upstream


def yaml_for(up: Upstream) -> str:
    return f'routes:\n  - {{id: 1, uri: /*, upstream: {{nodes: {{"{up.addr}": 1}}}}}}\n#END\n'


def test_dead_worker_is_restarted(tmp_path: Path, upstream: Upstream) -> None:
    with Gateway(tmp_path, apisix_yaml=yaml_for(upstream), workers=2) as g:
        pids = wait_until(lambda: len(g.worker_pids()) == 2 and g.worker_pids())
        os.kill(pids[0], signal.SIGKILL)
        wait_until(lambda: len(g.worker_pids()) == 2 and pids[0] not in g.worker_pids())
        g.wait_ready()
        for _ in range(20):
            assert requests.get(g.url("/x"), timeout=5).status_code == 200


def test_sigterm_finishes_in_flight_requests(tmp_path: Path, upstream: Upstream) -> None:
    g = Gateway(tmp_path, apisix_yaml=yaml_for(upstream)).start()
    result: dict[str, int] = {}

    def slow() -> None:
        result["status"] = requests.get(g.url("/slow/800"), timeout=10).status_code

    t = threading.Thread(target=slow)
    t.start()
    wait_until(lambda: any(r["path"] == "/slow/800" for r in upstream.requests))
    g.signal(signal.SIGTERM)
    t.join(10)
    assert result.get("status") == 200
    assert g.stop() == 0


def test_reload_keeps_serving(tmp_path: Path, upstream: Upstream) -> None:
    with Gateway(tmp_path, apisix_yaml=yaml_for(upstream), workers=2) as g:
        old = set(wait_until(lambda: len(g.worker_pids()) == 2 and g.worker_pids()))
        errors: list[str] = []
        done: list[int] = []
        stop = threading.Event()

        def load() -> None:
            s = requests.Session()
            while not stop.is_set():
                try:
                    if s.get(g.url("/x"), timeout=5).status_code != 200:
                        errors.append("status")
                    done.append(1)
                except requests.RequestException as e:
                    errors.append(repr(e))

        t = threading.Thread(target=load)
        t.start()
        wait_until(lambda: len(done) >= 20)
        r = subprocess.run(
            [sys.executable, "-m", "tollway.cli", "reload", "-c", str(g.config_path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        wait_until(lambda: not (set(g.worker_pids()) & old) and len(g.worker_pids()) == 2, 20)
        stop.set()
        t.join(10)
        assert errors == []


def test_stop_command(tmp_path: Path, upstream: Upstream) -> None:
    g = Gateway(tmp_path, apisix_yaml=yaml_for(upstream)).start()
    r = subprocess.run(
        [sys.executable, "-m", "tollway.cli", "stop", "-c", str(g.config_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert g.proc is not None
    assert g.proc.wait(15) == 0
    g.stop()
