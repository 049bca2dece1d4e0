"""After a full load, the heap's free pages go back to the OS (tollway.memory)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tollway.memory import release_free_memory


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
