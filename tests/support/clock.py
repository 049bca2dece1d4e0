"""A clock tests move by hand, and shared counter tables that use it (no files, no real time)."""

from __future__ import annotations

import pytest

from tollway.plugins import shared_counters
from tollway.plugins.shared_counters import SharedTable


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fake_shared_tables(monkeypatch: pytest.MonkeyPatch, *names: str, now: float) -> Clock:
    """In-memory tables named ``names`` (e.g. "plugin-limit-count") on a hand-moved clock."""
    clock = Clock(now)
    tables = {name: SharedTable(None, 1024, clock) for name in names}
    monkeypatch.setattr(shared_counters, "_TABLES", tables)
    return clock
