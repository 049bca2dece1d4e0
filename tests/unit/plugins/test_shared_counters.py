from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.clock import Clock
from tollway.plugins import shared_counters
from tollway.plugins.shared_counters import PROBE, Record, SharedTable


def step(rec: Record | None, now: float, ttl: float, _: float) -> tuple[Record, float]:
    value = 1.0 if rec is None else rec[1] + 1
    expire = now + ttl if rec is None else rec[0]
    return (expire, value, 0.0), value


def remove(rec: Record | None, now: float, p: float, q: float) -> tuple[None, None]:
    return None, None


def test_counts_and_expires() -> None:
    clock = Clock()
    t = SharedTable(None, slots=64, clock=clock)
    assert [t.update("a", step, 10) for _ in range(3)] == [1, 2, 3]
    assert t.update("b", step, 10) == 1
    clock.now += 10
    assert t.update("a", step, 10) == 1  # expired: starts over


def test_step_returning_none_removes() -> None:
    t = SharedTable(None, slots=64, clock=Clock())
    t.update("a", step, 60)
    t.update("a", remove)
    assert t.update("a", step, 60) == 1


def test_full_window_evicts_the_record_expiring_first() -> None:
    clock = Clock()
    t = SharedTable(None, slots=PROBE, clock=clock)  # every key shares one probe window
    for i in range(PROBE):
        t.update(f"k{i}", step, 100 + i)
    assert t.update("new", step, 60) == 1  # evicts k0 (expires first)
    assert t.update("k1", step, 60) == 2
    assert t.update("k0", step, 60) == 1


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from([f"key{i}" for i in range(40)]), max_size=300))
def test_matches_a_dict_while_nothing_is_evicted(keys: list[str]) -> None:
    t = SharedTable(None, slots=1024, clock=Clock())
    model: dict[str, int] = {}
    for k in keys:
        model[k] = model.get(k, 0) + 1
        assert t.update(k, step, 60) == model[k]


def _hammer(path: str, n: int) -> None:
    t = SharedTable(path, slots=256)
    for _ in range(n):
        t.update("shared", step, 3600)
    t.close()


def test_updates_are_atomic_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "t.shm")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(path, 500)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    t = SharedTable(path, slots=256)
    assert t.update("shared", step, 3600) == 2001


def test_layout_mismatch_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "t.shm")
    SharedTable(path, slots=64).close()
    with pytest.raises(OSError, match="not a shared table"):
        SharedTable(path, slots=32).close()


def test_instance_files_are_named_by_supervisor_and_stale_ones_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOLLWAY_SHARED_DIR", str(tmp_path))
    monkeypatch.setattr(shared_counters, "_TABLES", {})
    dead = tmp_path / f"tollway-{os.getuid()}-999999999-1-plugin-x.shm"
    dead.write_bytes(b"")
    t = shared_counters.table("plugin-x")
    assert t.path is not None and str(os.getppid()) in os.path.basename(t.path)
    assert not dead.exists()
    assert shared_counters.table("plugin-x") is t


def test_supervisor_removes_its_instance_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOLLWAY_SHARED_DIR", str(tmp_path))
    monkeypatch.setattr(shared_counters, "_TABLES", {})
    t = shared_counters.table("plugin-y")
    other = tmp_path / "unrelated.shm"
    other.write_bytes(b"")
    shared_counters.remove_instance_files(os.getppid())
    assert t.path is not None and not os.path.exists(t.path)
    assert other.exists()


def test_incr_counts_like_a_step_and_restarts_when_expired() -> None:
    clock = Clock()
    t = SharedTable(None, slots=64, clock=clock)
    assert t.incr("k", 1.0, 10) == (1.0, 10.0)
    clock.now += 4
    assert t.incr("k", 1.0, 10) == (2.0, 6.0)  # the window started at the first use
    assert t.update("k", step, 10) == 3  # the same record as update() sees it
    clock.now += 6
    assert t.incr("k", 1.0, 10) == (1.0, 10.0)


def test_incr_away_from_the_home_slot() -> None:
    t = SharedTable(None, slots=64, clock=Clock())
    # two keys with the same home slot: the second lives in the next one (the probe path)
    t._digests["a"] = (b"a" * 16, 7)
    t._digests["b"] = (b"b" * 16, 7)
    assert [t.incr("a", 1.0, 10)[0], t.incr("b", 1.0, 10)[0], t.incr("b", 1.0, 10)[0]] == [
        1.0,
        1.0,
        2.0,
    ]
    assert t.incr("a", 1.0, 10)[0] == 2.0


def test_a_located_handle_counts_the_keys_record() -> None:
    clock = Clock()
    t = SharedTable(None, slots=64, clock=clock)
    hit = t.locate("k")
    assert hit == t.locate("k") and hit[2] == 64 + hit[1] * 40  # its slot's offset
    assert t.incr_at(hit, 1.0, 10) == (1.0, 10.0)
    assert t.incr("k", 1.0, 10) == (2.0, 10.0)  # the same record by name
    clock.now += 10
    assert t.incr_at(hit, 1.0, 10) == (1.0, 10.0)
