"""After a full load, the heap's free pages go back to the OS (tollway.memory)."""

from __future__ import annotations

import gc
import sys
import weakref
from pathlib import Path

import pytest

from tollway.memory import collector_paused, release_free_memory, settle_after_load


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_freed_heap_pages_are_returned() -> None:
    # Interleave what stays and what goes, as a load does: the freed tables lie between kept
    # ones, so glibc cannot give them back by shrinking its heap's top.
    kept, gone = [], []
    for i in range(2_000):
        for _ in range(10):
            gone.append({j: j for j in range(40)})  # ~2 KB tables: glibc's heap, not pymalloc
        kept.append({i: i for i in range(40)})
    gone.clear()
    before = rss_kib()
    release_free_memory()
    release_free_memory()  # idempotent
    assert rss_kib() < before - 10_000  # most of the ~40 MB freed is resident no more
    assert len(kept) == 2_000


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_a_later_load_collects_the_cycles_the_previous_config_left_frozen() -> None:
    # A config with a cycle (the router's entries and tables are one), frozen after its load
    old = Node()
    old.other = Node()
    old.other.other = old
    gone = weakref.ref(old.other)
    try:
        settle_after_load(first=True)
        del old  # replaced by the next load: garbage, but frozen
        gc.collect()
        assert gone() is not None  # frozen objects are never collected...
        settle_after_load(first=False)
        assert gone() is None  # ...until the next load unfreezes and collects them
        assert gc.get_freeze_count() > 0  # and what is alive is frozen again
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual


def test_collector_paused_restores_the_collector_as_it_was() -> None:
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        assert not gc.isenabled()
        raise RuntimeError("a failed read")
    assert gc.isenabled()  # on again after an error too
    gc.disable()
    try:
        with collector_paused():  # nested in a pause (a read around a load): stays off after
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
