"""Instance-wide counters shared by every worker process (APISIX's ``lua_shared_dict``).

Each named table is a fixed-size open-addressing hash table in a file mapping (tmpfs when the
host has one) that every worker of the instance maps; one ``flock`` on the file serialises the
read-modify-write of a record, so an update is atomic across workers.

Invariants: a key lives within ``PROBE`` slots of its home slot; a slot is never emptied, only
expired, so a lookup may stop at the first never-used slot; when a key's whole probe window is
live, the record that expires first is evicted (nginx's shared dict evicts the least recently
used one: either way a full table forgets, it never fails the request).

A record is ``(expire, a, b)``: an absolute expiry on the system-wide monotonic clock
(``CLOCK_MONOTONIC`` is the same in every process) and two floats whose meaning belongs to the
caller (a count; a leaky bucket's excess and last-update time...).

The file name carries the supervisor's pid and start time, so the workers of one instance share
it, a restarted instance starts from zero (as nginx's shared dicts do), and files left by an
instance that died are removed by the next one that opens a table in the same directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import re
import struct
import tempfile
import time
from collections.abc import Callable
from hashlib import blake2b
from typing import TypeVar

log = logging.getLogger("tollway.plugins")

T = TypeVar("T")

Record = tuple[float, float, float]  # (expire, a, b)
# An update step: (current record or None if absent/expired, now, p, q) -> (new record or None,
# result); p and q are the caller's parameters (a limit and a window...), passed through so that
# a step is a plain module-level function, not a closure built per request.
Step = Callable[[Record | None, float, float, float], tuple[Record | None, T]]
# Where a key lives: (its digest, its home slot).
Home = tuple[bytes, int]
# A key's handle (``locate``): its home and that slot's offset in the file.
Slot = tuple[bytes, int, int]

LAYOUT_VERSION = 1
DEFAULT_SLOTS = 1 << 16  # 2.5 MiB per table; APISIX's plugin dicts are 10 MiB
PROBE = 32
_MAGIC = b"TWSHM%03d" % LAYOUT_VERSION
_HEADER = 64
_SLOT = struct.Struct("<16sddd")
_SLOT_SIZE = _SLOT.size
_HEAD = struct.Struct("<16sdd")  # a slot's digest, expire and a
_PAIR = struct.Struct("<dd")  # expire and a, after the digest
_EMPTY = bytes(16)
# (bound once: incr_at runs on every request of a limit-count route)
_head_at = _HEAD.unpack_from
_pair_into = _PAIR.pack_into
_flock = fcntl.flock
_LOCK_EX = fcntl.LOCK_EX
_LOCK_UN = fcntl.LOCK_UN
_NAME = re.compile(r"^tollway-(\d+)-(\d+)-(\d+)-[\w.-]+\.shm$")


class SharedTable:
    """One named table. ``update`` is the operation: a read-modify-write under the lock
    (``incr`` is the counting one, in one call)."""

    __slots__ = ("_clock", "_digests", "_fd", "_mask", "_mm", "path", "slots")

    def __init__(
        self,
        path: str | None,
        slots: int = DEFAULT_SLOTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if slots & (slots - 1) or slots < PROBE:
            raise ValueError("slots must be a power of two >= PROBE")
        self.path = path
        self.slots = slots
        self._mask = slots - 1
        self._clock = clock
        # key -> (digest, home slot): hashing costs more than the rest of an update, and the
        # same keys (client addresses, consumers) come back again and again.
        self._digests: dict[str, Home] = {}
        size = _HEADER + slots * _SLOT_SIZE
        if path is None:  # process-local (tests, or no writable directory)
            self._fd = -1
            self._mm = mmap.mmap(-1, size)
            self._mm[: len(_MAGIC)] = _MAGIC
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size < size:
                    os.ftruncate(fd, size)  # zero-filled (sparse): every slot never used
                    os.pwrite(fd, _MAGIC + struct.pack("<Q", slots), 0)
                elif os.pread(fd, len(_MAGIC) + 8, 0) != _MAGIC + struct.pack("<Q", slots):
                    raise OSError(f"{path}: not a shared table of {slots} slots")
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def close(self) -> None:
        self._mm.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def now(self) -> float:
        """The table's clock (the one ``expire`` is measured on)."""
        return self._clock()

    def update(self, key: str, step: Step[T], p: float = 0.0, q: float = 0.0) -> T:
        """Run ``step`` on the key's record atomically across processes; return its result."""
        hit = self._digests.get(key)
        if hit is None:
            hit = self._digest(key)
        fd = self._fd
        if fd >= 0:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            return self._update(hit[0], hit[1], self._clock(), step, p, q)
        finally:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def incr(self, key: str, value: float, ttl: float) -> tuple[float, float]:
        """Add ``value`` to the key's count (a new or expired key starts from 0 and lives
        ``ttl`` seconds: nginx's ``shared_dict:incr(key, value, 0, ttl)``, which
        resty.limit.count uses); returns (the new count, seconds until the key expires)."""
        return self.incr_at(self.locate(key), value, ttl)

    def locate(self, key: str) -> Slot:
        """The key's handle for ``incr_at``: a caller that sees the same keys again and again
        (limit-count's client addresses) keeps it instead of hashing the key per update."""
        hit = self._digests.get(key)
        if hit is None:
            hit = self._digest(key)
        return hit[0], hit[1], _HEADER + hit[1] * _SLOT_SIZE

    def incr_at(self, hit: Slot, value: float, ttl: float) -> tuple[float, float]:
        """``incr`` of the key ``hit`` was located for: the one operation of limit-count's
        request path, done in one call when the key sits in its home slot (the usual case)."""
        fd = self._fd
        if fd >= 0:
            _flock(fd, _LOCK_EX)
        try:
            now = self._clock()
            mm = self._mm
            off = hit[2]
            # the digest and the two fields incr uses (``b`` stays 0.0 in a counting record)
            d, expire, a = _head_at(mm, off)
            if d != hit[0]:  # not in its home slot: the general probe
                return self._update(hit[0], hit[1], now, _incr_step, value, ttl)
            if expire > now:
                a += value
            else:
                expire, a = now + ttl, value
            _pair_into(mm, off + 16, expire, a)
            return a, expire - now
        finally:
            if fd >= 0:
                _flock(fd, _LOCK_UN)

    def _digest(self, key: str) -> Home:
        digest = blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).digest()
        hit = (digest, int.from_bytes(digest[:8], "little") & self._mask)
        if len(self._digests) >= _DIGEST_CACHE:
            self._digests.clear()
        self._digests[key] = hit
        return hit

    def _update(self, digest: bytes, home: int, now: float, step: Step[T], p: float, q: float) -> T:
        mm = self._mm
        unpack = _SLOT.unpack_from
        off = _HEADER + home * _SLOT_SIZE
        d, expire, a, b = unpack(mm, off)
        if d == digest:  # the common case: the key sits in its home slot
            new, result = step((expire, a, b) if expire > now else None, now, p, q)
            _SLOT.pack_into(mm, off, digest, *(new or _GONE))
            return result
        mask = self._mask
        reusable = -1  # first expired slot of the window
        victim = -1  # live slot that expires first (evicted if the window is full)
        victim_expire = float("inf")
        target = -1
        for i in range(PROBE):
            if i:
                off = _HEADER + ((home + i) & mask) * _SLOT_SIZE
                d, expire, a, b = unpack(mm, off)
                if d == digest:
                    new, result = step((expire, a, b) if expire > now else None, now, p, q)
                    _SLOT.pack_into(mm, off, digest, *(new or _GONE))
                    return result
            if d == _EMPTY:
                target = reusable if reusable >= 0 else off
                break
            if expire <= now:
                if reusable < 0:
                    reusable = off
            elif expire < victim_expire:
                victim, victim_expire = off, expire
        else:
            target = reusable if reusable >= 0 else victim
        new, result = step(None, now, p, q)
        if new is not None:
            _SLOT.pack_into(mm, target, digest, *new)
        return result


_GONE = (0.0, 0.0, 0.0)


def _incr_step(
    rec: Record | None, now: float, value: float, ttl: float
) -> tuple[Record, tuple[float, float]]:
    """``incr`` as an update step (a key away from its home slot)."""
    expire, a = (rec[0], rec[1] + value) if rec is not None else (now + ttl, value)
    return (expire, a, 0.0), (a, expire - now)


_DIGEST_CACHE = 100_000


# -- where the tables live ------------------------------------------------------------------

_TABLES: dict[str, SharedTable] = {}


def table(name: str) -> SharedTable:
    """The instance-wide table ``name`` (opened once per process)."""
    t = _TABLES.get(name)
    if t is None:
        t = _TABLES[name] = _open(name)
    return t


def _open(name: str) -> SharedTable:
    directory = shared_dir()
    if directory is not None:
        path = os.path.join(directory, f"tollway-{os.getuid()}-{instance_id()}-{name}.shm")
        try:
            _remove_stale(directory)
            return SharedTable(path)
        except OSError as e:
            log.warning("shared table %s: %s; counters are per worker", name, e)
    else:
        log.warning("no writable directory for shared tables; counters are per worker")
    return SharedTable(None)


def shared_dir() -> str | None:
    """``$TOLLWAY_SHARED_DIR``, else tmpfs (/dev/shm), else the temp directory."""
    env = os.environ.get("TOLLWAY_SHARED_DIR")
    for d in (env, "/dev/shm", tempfile.gettempdir()):
        if d and os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK):
            return d
    return None


def remove_instance_files(supervisor_pid: int | None = None) -> None:
    """Delete this instance's table files; for the supervisor to call once its workers are gone
    (``supervisor_pid`` defaults to the calling process)."""
    directory = shared_dir()
    if directory is None:
        return
    pid = os.getpid() if supervisor_pid is None else supervisor_pid
    prefix = f"tollway-{os.getuid()}-{pid}-{_start_time(pid)}-"
    for entry in os.listdir(directory):
        if entry.startswith(prefix) and entry.endswith(".shm"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, entry))


def instance_id() -> str:
    """The supervisor's (our parent's) pid and start time: shared by the instance's workers."""
    ppid = os.getppid()
    return f"{ppid}-{_start_time(ppid)}"


def _start_time(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # Field 22 (starttime); the command name in field 2 may hold spaces, so split after it.
        return int(stat.rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def _remove_stale(directory: str) -> None:
    uid = str(os.getuid())
    for entry in os.listdir(directory):
        m = _NAME.match(entry)
        if m is None or m.group(1) != uid:
            continue
        pid, started = int(m.group(2)), int(m.group(3))
        if _alive(pid) and (started == 0 or _start_time(pid) in (0, started)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, entry))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
