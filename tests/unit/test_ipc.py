"""Supervisor <-> worker messages: typed Structs of one tagged union, one encoder."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from tollway.config.source import KeyValue
from tollway.ipc import (
    TO_SUPERVISOR,
    TO_WORKER,
    Ack,
    Apply,
    BadMessage,
    Dns,
    Health,
    Load,
    Message,
    Passive,
    Ready,
    encode,
    read_message,
)

KVS = [KeyValue("/apisix/routes/1", b'{"uri":"/"}', 5, 3), KeyValue("/apisix/routes/2", None, 6, 0)]


def read_all(data: bytes, decoder: msgspec.msgpack.Decoder) -> list[object]:  # type: ignore[type-arg]
    async def go() -> list[object]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        out = []
        while (msg := await read_message(reader, decoder)) is not None:
            out.append(msg)
        return out

    return asyncio.run(go())


def test_messages_to_workers_round_trip_in_order() -> None:
    msgs: list[Message] = [
        Load.of(6, KVS),
        Apply.of(7, KVS[1:]),
        Health("/apisix/upstreams/1", ["10.0.0.1:80"]),
        Dns({"api.example": ["10.0.0.1"], "gone.example": []}),
    ]
    got = read_all(b"".join(encode(m) for m in msgs), TO_WORKER)
    assert got == msgs
    # a Load has no deletions and carries no create revisions (workers keep none)
    assert isinstance(got[0], Load)
    assert got[0].key_values() == [KeyValue("/apisix/routes/1", b'{"uri":"/"}', 5, 0)]


def test_a_load_is_columns_read_as_rows_on_demand() -> None:
    kvs = [KeyValue(f"/apisix/routes/{i}", b"{}" + b" " * i, 10 + i, 1) for i in range(5)]
    (got,) = read_all(encode(Load.of(9, kvs)), TO_WORKER)
    assert isinstance(got, Load)
    rows = got.rows()
    assert len(rows) == 5
    assert [(k, bytes(v), m) for k, v, m, _ in rows] == [
        (kv.key, kv.value, kv.mod_revision) for kv in kvs
    ]
    assert bytes(rows[3][1]) == kvs[3].value and rows[0][0] == kvs[0].key
    # values are views into the one buffer of the message, not a copy each
    assert rows[2][1].obj is rows[4][1].obj


def test_messages_to_the_supervisor_round_trip() -> None:
    msgs: list[Message] = [Ready(3, 42), Ack(4, 42), Passive([("k", "10.0.0.1:80", "http", 502)])]
    assert read_all(b"".join(encode(m) for m in msgs), TO_SUPERVISOR) == msgs


def test_the_wire_is_a_map_tagged_by_t() -> None:
    body = encode(Health("k", []))[4:]
    assert msgspec.msgpack.decode(body) == {"t": "health", "key": "k", "unhealthy": []}


@pytest.mark.parametrize(
    "raw",
    [
        {"t": "ready", "rev": 1},  # a supervisor-bound message on the worker's side
        {"t": "load", "rev": "seven", "kvs": []},  # a field of the wrong type
        {"t": "no such kind"},
        [1, 2],
    ],
)
def test_a_frame_that_is_no_known_message_is_a_bad_message(raw: object) -> None:
    body = msgspec.msgpack.encode(raw)
    with pytest.raises(BadMessage):
        read_all(len(body).to_bytes(4, "big") + body, TO_WORKER)


def test_a_broken_frame_is_a_value_error_not_a_bad_message() -> None:
    with pytest.raises(ValueError) as info:
        read_all(b"\x00\x00\x00\x02\xc1\xc1", TO_WORKER)
    assert not isinstance(info.value, BadMessage)
