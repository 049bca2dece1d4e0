"""The last-known-good config on disk, so an instance can start while etcd is down.

Invariants: a reader sees either the previous complete file or the new complete file (temp file,
fsync, rename, fsync of the directory); a file that fails any check (magic, format version,
length, sha256, decoding) is rejected as a whole, never partly used.

Format: one ASCII header line ``TOLLWAY-SNAPSHOT <format> <revision> <sha256 hex> <body bytes>``,
then the body: a msgpack array of ``[key, value, mod_revision, create_revision]``. The functions
block (file I/O, fsync): call them through ``asyncio.to_thread`` from the event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from pathlib import Path

import msgspec

from tollway.config.source import KeyValue

__all__ = ["read_snapshot", "read_snapshot_rows", "write_snapshot", "write_snapshot_rows"]

log = logging.getLogger("tollway.config")

MAGIC = b"TOLLWAY-SNAPSHOT"
FORMAT = 1
_MAX_HEADER = 256

_Row = tuple[str, bytes | None, int, int]
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[_Row])


def write_snapshot(path: str | os.PathLike[str], revision: int, kvs: list[KeyValue]) -> None:
    """Atomically replace ``path`` with a snapshot of ``kvs`` at ``revision``. Raises OSError."""
    write_snapshot_rows(
        path, revision, [(kv.key, kv.value, kv.mod_revision, kv.create_revision) for kv in kvs]
    )


def write_snapshot_rows(path: str | os.PathLike[str], revision: int, rows: list[_Row]) -> None:
    """``write_snapshot`` for rows of ``(key, value, mod_revision, create_revision)``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    body = _encode_rows(rows)
    digest = hashlib.sha256(body).hexdigest()
    header = b"%s %d %d %s %d\n" % (MAGIC, FORMAT, revision, digest.encode(), len(body))
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


# Rows encoded per step. This runs in a thread beside the supervisor's event loop, and the
# encoder holds the GIL while it runs: 100k rows in one call would stop the loop (and the change
# it is fanning out to the workers) for ~100 ms; between steps the loop gets its turn.
_CHUNK = 2000


def _encode_rows(rows: list[_Row]) -> bytes:
    """``rows`` as one msgpack array (what ``_decoder`` reads), encoded a chunk at a time."""
    n = len(rows)
    parts = [_array_header(n)]
    for start in range(0, n, _CHUNK):
        chunk = rows[start : start + _CHUNK]
        parts.append(_encoder.encode(chunk)[len(_array_header(len(chunk))) :])
    return b"".join(parts)


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])  # fixarray
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")  # array 16
    return b"\xdd" + n.to_bytes(4, "big")  # array 32


def read_snapshot(path: str | os.PathLike[str]) -> tuple[int, list[KeyValue]] | None:
    """``(revision, kvs)`` from a verified snapshot, or None (with a warning) if the file is
    missing, unreadable or corrupt."""
    found = read_snapshot_rows(path)
    if found is None:
        return None
    revision, rows = found
    return revision, [KeyValue(key, value, mod, create) for key, value, mod, create in rows]


def read_snapshot_rows(path: str | os.PathLike[str]) -> tuple[int, list[_Row]] | None:
    """``read_snapshot`` as ``(key, value, mod_revision, create_revision)`` rows: what
    ``Store.load_rows`` takes, without an object per item first (100k items: ~1 s less)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        log.warning("config snapshot %s not usable: %s", path, e.strerror or e)
        return None
    try:
        return _parse(data)
    except ValueError as e:
        log.warning("config snapshot %s rejected: %s", path, e)
        return None


def _parse(data: bytes) -> tuple[int, list[_Row]]:
    end = data.find(b"\n", 0, _MAX_HEADER)
    if end < 0:
        raise ValueError("no header line")
    fields = data[:end].split(b" ")
    if len(fields) != 5 or fields[0] != MAGIC:
        raise ValueError("not a snapshot file (bad header)")
    try:
        fmt, revision, size = int(fields[1]), int(fields[2]), int(fields[4])
    except ValueError:
        raise ValueError("bad header numbers") from None
    if fmt != FORMAT:
        raise ValueError(f"unsupported format {fmt} (this version reads {FORMAT})")
    body = memoryview(data)[end + 1 :]
    if len(body) != size:
        raise ValueError(f"truncated: body is {len(body)} bytes, header says {size}")
    if hashlib.sha256(body).hexdigest().encode() != fields[3]:
        raise ValueError("checksum mismatch")
    try:
        rows = _decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"undecodable body: {e}") from None
    return revision, rows


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
