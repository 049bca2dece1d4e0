"""Supervisor <-> worker messages over a socketpair: 4-byte length + msgpack.

agent -> worker: {"t": "load"|"apply", "rev": N, "kvs": [[key, value|None, mod, create], ...]}
                 {"t": "health", "key": resource_key, "unhealthy": [addr, ...]}
                 {"t": "dns", "names": {name: [ip, ...]}}
worker -> agent: {"t": "ready"|"ack", "rev": N, "pid": P}
                 {"t": "passive", "reports": [[key, addr, kind, status], ...]}
Every change carries its etcd revision; a worker applies messages in the order they arrive,
which is revision order because one agent writes them.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgspec

from tollway.config.source import KeyValue

_HEADER = struct.Struct("!I")
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()

MAX_MESSAGE = 1 << 30


def encode(msg: dict[str, Any]) -> bytes:
    body = _enc.encode(msg)
    return _HEADER.pack(len(body)) + body


def kvs_to_wire(kvs: list[KeyValue]) -> list[list[Any]]:
    return [[kv.key, kv.value, kv.mod_revision, kv.create_revision] for kv in kvs]


def kvs_from_wire(items: list[list[Any]]) -> list[KeyValue]:
    return [KeyValue(k, v, m, c) for k, v, m, c in items]


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at the end of the stream. Raises ValueError for a frame that
    is too large or not a msgpack map (the stream cannot be trusted after it)."""
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
        msg = _dec.decode(body)
    except msgspec.DecodeError as e:
        raise ValueError(f"undecodable IPC message: {e}") from None
    if not isinstance(msg, dict):
        raise ValueError(f"IPC message is a {type(msg).__name__}, not a map")
    return msg
