"""The on-disk snapshot: round trip (from a real etcd load), corruption rejected."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tests.support.etcd import EtcdServer, arun, shared_etcd  # noqa: F401
from tollway.config.etcd import EtcdClient
from tollway.config.snapshot import read_snapshot, write_snapshot
from tollway.config.source import KeyValue


def sample(n: int = 100, size: int = 500) -> list[KeyValue]:
    return [
        KeyValue(f"/apisix/routes/{i:06d}", (b"%06d" % i) * (size // 6), i + 10, i + 5)
        for i in range(n)
    ]


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.snapshot"
    kvs = [*sample(), KeyValue("/apisix/plugins", b"", 3, 3), KeyValue("/apisix/x/\u00e9", b"\x00")]
    write_snapshot(path, 1234, kvs)
    assert read_snapshot(path) == (1234, kvs)
    write_snapshot(path, 1235, [])  # replaces atomically, leaves no temp file behind
    assert read_snapshot(path) == (1235, [])
    assert os.listdir(path.parent) == ["config.snapshot"]


def test_round_trip_from_etcd(shared_etcd: EtcdServer, tmp_path: Path) -> None:  # noqa: F811
    async def body() -> tuple[int, list[KeyValue]]:
        client = EtcdClient([shared_etcd.endpoint])
        try:
            for i in range(20):
                await client.put(f"/apisix/routes/{i}", b'{"uri":"/%d"}' % i)
            rev, kvs = await client.range_all("/apisix/")
        finally:
            await client.aclose()
        return rev, [KeyValue(kv.key, kv.value, kv.mod_revision, kv.create_revision) for kv in kvs]

    revision, kvs = arun(body())
    write_snapshot(tmp_path / "snap", revision, kvs)
    assert read_snapshot(tmp_path / "snap") == (revision, kvs)


@pytest.mark.parametrize(
    "damage",
    [
        "flip a body byte",
        "truncate",
        "append",
        "bad magic",
        "future format",
        "empty",
        "header only",
        "garbage",
    ],
)
def test_corrupt_file_rejected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    path = tmp_path / "snap"
    write_snapshot(path, 7, sample(10))
    data = bytearray(path.read_bytes())
    header_end = data.index(b"\n") + 1
    if damage == "flip a body byte":
        data[header_end + 50] ^= 0x01
    elif damage == "truncate":
        del data[-10:]
    elif damage == "append":
        data += b"x"
    elif damage == "bad magic":
        data[0:1] = b"X"
    elif damage == "future format":
        data = data.replace(b"TOLLWAY-SNAPSHOT 1 ", b"TOLLWAY-SNAPSHOT 9 ", 1)
    elif damage == "empty":
        data = bytearray()
    elif damage == "header only":
        data = data[:header_end]
    else:
        data = bytearray(os.urandom(4096))
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="tollway.config"):
        assert read_snapshot(path) is None
    assert any("snapshot" in r.getMessage() for r in caplog.records)


def test_missing_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tollway.config"):
        assert read_snapshot(tmp_path / "nope") is None
    assert caplog.records


def test_ten_thousand_items(tmp_path: Path) -> None:
    kvs = sample(10_000, 500)
    write_snapshot(tmp_path / "snap", 99, kvs)
    assert read_snapshot(tmp_path / "snap") == (99, kvs)
    assert (tmp_path / "snap").stat().st_size < 10_000 * 600
