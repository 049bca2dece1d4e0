"""The lock of a shared counter table: a robust, process-shared POSIX mutex inside the table's
mapping (the C library's ``pthread_mutex_*``, called through cffi's ABI mode: no compiler, no
extension module), with ``flock`` on the table's file where that mutex is not available.

Why this mutex: taking and giving back a free one is an atomic instruction in the C library
(no system call; ``flock`` is two per update, and a system call on this kind of VM also costs
the Python code around it). Why *robust*: when a process dies holding it, the kernel releases
it (the thread's robust futex list, set up by the C library for every thread) and the next
process to lock it is told so (``EOWNERDEAD``) instead of waiting: a killed worker never
stalls the others, as with ``flock``. A named semaphore has no such release (see
bench/RESULTS.md, "Plugins at bare-proxy speed, second round").

The mutex lives in the table's header, so every process that maps the file shares it; the
process that creates the file initialises it, and the header records which lock the table
uses so that every process takes the same one.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import mmap
from collections.abc import Callable
from typing import Any

log = logging.getLogger("tollway.plugins")

# Bytes reserved for a pthread_mutex_t (40 on x86-64 glibc and musl, 48 on aarch64 glibc).
MUTEX_SIZE = 64
_PTHREAD_PROCESS_SHARED = 1  # Linux (glibc and musl)
_PTHREAD_MUTEX_ROBUST = 1

_CDEF = """
int pthread_mutexattr_init(void *attr);
int pthread_mutexattr_setpshared(void *attr, int pshared);
int pthread_mutexattr_setrobust(void *attr, int robust);
int pthread_mutexattr_destroy(void *attr);
int pthread_mutex_init(void *mutex, const void *attr);
int pthread_mutex_lock(void *mutex);
int pthread_mutex_unlock(void *mutex);
int pthread_mutex_consistent(void *mutex);
"""


@functools.cache
def _pthread() -> tuple[Any, Any] | None:
    """(ffi, the C library) with the mutex functions, or None where they are not there."""
    try:
        import cffi

        ffi = cffi.FFI()
        ffi.cdef(_CDEF)
        lib = ffi.dlopen(None)  # the C library the process already runs on
        for name in ("pthread_mutex_lock", "pthread_mutex_consistent"):
            getattr(lib, name)  # a missing symbol fails here, not in a request
    except (ImportError, OSError, AttributeError) as e:
        log.info("no robust process-shared mutex (%s): shared tables lock with flock", e)
        return None
    return ffi, lib


def mutex_available() -> bool:
    return _pthread() is not None


class TableLock:
    """``acquire()`` / ``release()`` around a read-modify-write of the table (plain callables:
    the table calls them on every update). ``kind`` is what the header records: 1 for the
    mutex at ``offset`` in ``mm``, 0 for ``flock`` on ``fd``."""

    __slots__ = ("_buffer", "_ptr", "acquire", "kind", "release")

    def __init__(self, kind: int, mm: mmap.mmap, offset: int, fd: int, init: bool) -> None:
        self.kind = kind
        self._buffer: Any = None
        self._ptr: Any = None
        if kind == 0:
            self.acquire: Callable[[], Any] = functools.partial(fcntl.flock, fd, fcntl.LOCK_EX)
            self.release: Callable[[], Any] = functools.partial(fcntl.flock, fd, fcntl.LOCK_UN)
            return
        found = _pthread()
        if found is None:
            raise OSError("the table locks with a process-shared mutex, unavailable here")
        ffi, lib = found
        self._buffer = ffi.from_buffer(mm)
        ptr = self._ptr = self._buffer + offset
        if init:
            _init_mutex(ffi, lib, ptr)
        lock, unlock = lib.pthread_mutex_lock, lib.pthread_mutex_unlock

        def acquire() -> None:
            rc = lock(ptr)
            if rc:
                _recover(lib, ptr, rc)

        # The common case costs one Python call more than the bare C call; ``acquire`` is
        # that call (the owner-died check must follow every lock).
        self.acquire = acquire
        self.release = functools.partial(unlock, ptr)

    def close(self) -> None:
        """Give the mapping back (cffi holds it while a pointer into it exists)."""
        if self._buffer is not None:
            found = _pthread()
            if found is not None:
                found[0].release(self._buffer)
            self._buffer = self._ptr = None


def _init_mutex(ffi: Any, lib: Any, ptr: Any) -> None:
    attr = ffi.new("char[]", 64)  # pthread_mutexattr_t is 4 bytes on Linux; room to spare
    rc = lib.pthread_mutexattr_init(attr)
    rc = rc or lib.pthread_mutexattr_setpshared(attr, _PTHREAD_PROCESS_SHARED)
    rc = rc or lib.pthread_mutexattr_setrobust(attr, _PTHREAD_MUTEX_ROBUST)
    rc = rc or lib.pthread_mutex_init(ptr, attr)
    lib.pthread_mutexattr_destroy(attr)
    if rc:
        raise OSError(rc, f"pthread_mutex_init: {errno.errorcode.get(rc, rc)}")


def _recover(lib: Any, ptr: Any, rc: int) -> None:
    """The lock came back with an error: EOWNERDEAD means it is ours, its last owner died
    holding it (the one record it was writing may be torn: a count, which the next update
    or the window's end corrects); the mutex is marked consistent so it goes on working."""
    if rc == errno.EOWNERDEAD:
        log.debug("shared table: a process died holding the lock; taken over")
        lib.pthread_mutex_consistent(ptr)
        return
    raise OSError(rc, f"pthread_mutex_lock: {errno.errorcode.get(rc, rc)}")
