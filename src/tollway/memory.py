"""After a full config load: the collector and the heap (issue #17).

The config a load compiled lives until the next load, so it is frozen (``gc.freeze``): no full
collection walks 100k routes while requests wait (one did, under churn: a change waited
~150 ms). Frozen objects are never collected, so a later load first unfreezes and collects what
the config it replaced left in cycles (the router's entries and tables), then freezes again.

A full load at 100k routes allocates and frees hundreds of megabytes of short-lived objects (the
IPC message, decoded items, dict and list tables that grew while filling). glibc keeps freed
pages in its heaps for reuse, so a worker's resident memory stays at the load's peak; measured at
100k routes, ``malloc_trim(0)`` after the load takes a worker from ~1.5 KB to ~1.1 KB per route.
It walks the heaps once (milliseconds), so it runs after full loads only, never per request.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_trim: Callable[[int], object] | None = None
_loaded = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic GC off meanwhile (and on again after, if it was on), around synchronous
    builds that make only long-lived objects or ones reference counting frees: a full load's
    read and validation in the supervisor, the router's build chunks, the Compiler's. Every 700
    allocations would otherwise start a collection that walks the growing heap again (at 100k
    routes that doubled the router's build time)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def collector_off_for_load() -> Iterator[None]:
    """The cyclic GC off for a whole full load (store and compile, the event loop's turns
    between compile chunks included), and what it built frozen before the GC is on again.

    A load builds ~10 tracked objects per route, all long-lived. Paused only per step or chunk,
    the GC, once on again, walked each of them in the young generations (at 100k routes,
    ~0.15 s of a worker's ~1.5 s compile, in-process CPU time). Frozen before it is enabled, no
    collection walks them: ``settle_after_load`` follows (after a later load it unfreezes and
    collects what the previous config left). Cyclic garbage that requests make meanwhile waits
    for that collection."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def settle_after_load(*, first: bool) -> None:
    """Freeze what a full load left alive, after collecting the previous load's garbage (not
    after the first load: nothing to collect yet, and it would cost start-up time), then give
    the freed pages back."""
    if not first:
        gc.unfreeze()
        gc.collect()
    gc.freeze()
    release_free_memory()


def release_free_memory() -> None:
    """Return the C heaps' free pages to the OS (glibc ``malloc_trim``); a no-op elsewhere."""
    global _trim, _loaded
    if not _loaded:
        _loaded = True
        name = ctypes.util.find_library("c")
        try:
            _trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
        except OSError:
            _trim = None
    if _trim is not None:
        _trim(0)
