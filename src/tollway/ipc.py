"""Supervisor <-> worker messages over a socketpair: a 4-byte length, then one msgpack map.

Every message is a typed Struct of one tagged union, with its kind in ``"t"``:

supervisor -> worker (``ToWorker``):
    ``Load(rev, keys, values, ends, mods)``  the whole config at ``rev``, in columns
    ``Apply(rev, kvs)``      accepted changes at ``rev`` (``value`` None: deleted)
    ``Health(key, unhealthy)``  an upstream's unhealthy node addresses
    ``Dns(names)``           changed DNS answers (``[]``: the name does not resolve)
worker -> supervisor (``ToSupervisor``):
    ``Ready(rev, pid)``      the first load is compiled and the worker serves
    ``Ack(rev, pid)``        a later load/apply is compiled
    ``Passive(reports)``     outcomes of proxied attempts: ``[key, addr, outcome, status]``

Every change carries its etcd revision; a worker applies messages in the order they arrive,
which is revision order because one agent writes them. ``encode`` is the one encoder;
``read_message`` with ``TO_WORKER`` or ``TO_SUPERVISOR`` the one way to read.
"""

from __future__ import annotations

import array
import asyncio
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar, overload

import msgspec

from tollway.config.source import KeyValue

_HEADER = struct.Struct("!I")
MAX_MESSAGE = 1 << 30

WireKV = tuple[str, bytes | None, int, int]  # key, value (None: deleted), mod, create revision
Report = tuple[str, str, str, int]  # upstream key, node addr, outcome, HTTP status (0: none)


class Message(msgspec.Struct, tag_field="t", frozen=True):
    """The base of every IPC message (its subclass's tag goes in ``"t"``)."""


class Load(Message, tag="load", frozen=True):
    """The whole config at ``rev``, in columns: the keys; every value back to back in one
    buffer (``ends``: each one's end offset, uint32); mod revisions (int64). A worker decodes
    100k items without an object per value, and once it has compiled them it keeps none of
    what it no longer needs: the buffer goes as one block (issue #17). Workers keep no create
    revisions."""

    rev: int
    keys: list[str]
    values: bytes
    ends: bytes
    mods: bytes

    @classmethod
    def of(cls, rev: int, kvs: list[KeyValue]) -> Load:
        return cls.from_rows(rev, kvs_to_wire(kvs))

    @classmethod
    def from_rows(cls, rev: int, rows: Iterable[tuple[str, Any, int, int]]) -> Load:
        keys: list[str] = []
        parts: list[bytes] = []
        ends = array.array("I")
        mods = array.array("q")
        end = 0
        for key, value, mod, _ in rows:
            if value is None:
                continue  # a Load has no deletions
            keys.append(key)
            parts.append(value)
            end += len(value)
            ends.append(end)
            mods.append(mod)
        return cls(rev, keys, b"".join(parts), ends.tobytes(), mods.tobytes())

    def rows(self) -> LoadRows:
        return LoadRows(self)

    def key_values(self) -> list[KeyValue]:
        return [KeyValue(k, bytes(v or b""), m, c) for k, v, m, c in self.rows()]


class LoadRows(Sequence[tuple[str, memoryview, int, int]]):
    """A Load's items as ``(key, value, mod, 0)`` rows, made on demand: ``value`` is a view
    into the Load's buffer."""

    def __init__(self, load: Load) -> None:
        self.keys = load.keys
        self.values = memoryview(load.values)
        self.ends = array.array("I", load.ends)
        self.mods = array.array("q", load.mods)
        if not len(self.keys) == len(self.ends) == len(self.mods):
            raise ValueError("IPC Load: columns of different lengths")

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, i: int) -> tuple[str, memoryview, int, int]: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[tuple[str, memoryview, int, int]]: ...
    def __getitem__(
        self, i: int | slice
    ) -> tuple[str, memoryview, int, int] | Sequence[tuple[str, memoryview, int, int]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        start = self.ends[i - 1] if i > 0 else 0
        return (self.keys[i], self.values[start : self.ends[i]], self.mods[i], 0)

    def __iter__(self) -> Iterator[tuple[str, memoryview, int, int]]:
        start = 0
        values = self.values
        for key, end, mod in zip(self.keys, self.ends, self.mods, strict=True):
            yield key, values[start:end], mod, 0
            start = end


class Apply(Message, tag="apply", frozen=True):
    rev: int
    kvs: list[WireKV]

    @classmethod
    def of(cls, rev: int, kvs: list[KeyValue]) -> Apply:
        return cls(rev, kvs_to_wire(kvs))

    def key_values(self) -> list[KeyValue]:
        return kvs_from_wire(self.kvs)


class Health(Message, tag="health", frozen=True):
    key: str  # the upstream's resource key
    unhealthy: list[str]  # node addresses (host:port)


class Dns(Message, tag="dns", frozen=True):
    names: dict[str, list[str]]


class Ready(Message, tag="ready", frozen=True):
    rev: int
    pid: int = 0


class Ack(Message, tag="ack", frozen=True):
    rev: int
    pid: int = 0


class Passive(Message, tag="passive", frozen=True):
    reports: list[Report]


ToWorker = Load | Apply | Health | Dns
ToSupervisor = Ready | Ack | Passive
Broadcast = Callable[[ToWorker], None]

_enc = msgspec.msgpack.Encoder()
TO_WORKER = msgspec.msgpack.Decoder(ToWorker)
TO_SUPERVISOR = msgspec.msgpack.Decoder(ToSupervisor)

M = TypeVar("M", ToWorker, ToSupervisor)


class BadMessage(ValueError):
    """A frame that is msgpack but no message this side knows: that message is skipped, the
    stream goes on (its framing is intact)."""


def encode(msg: Message) -> bytes:
    body = _enc.encode(msg)
    return _HEADER.pack(len(body)) + body


def kvs_to_wire(kvs: list[KeyValue]) -> list[WireKV]:
    return [(kv.key, kv.value, kv.mod_revision, kv.create_revision) for kv in kvs]


def kvs_from_wire(items: list[WireKV]) -> list[KeyValue]:
    return [KeyValue(k, v, m, c) for k, v, m, c in items]


async def read_message(
    reader: asyncio.StreamReader, decoder: msgspec.msgpack.Decoder[M]
) -> M | None:
    """The next message, or None at the end of the stream. Raises ``BadMessage`` for a frame
    that decodes to no known message, and ValueError for one that is too large or not msgpack
    (the stream cannot be trusted after it)."""
    try:
        head = await reader.readexactly(4)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    (n,) = _HEADER.unpack(head)
    if n > MAX_MESSAGE:
        raise ValueError("IPC message too large")
    try:
        body = await reader.readexactly(n)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as e:
        raise BadMessage(f"unknown IPC message: {e}") from None
    except msgspec.DecodeError as e:
        raise ValueError(f"undecodable IPC message: {e}") from None
