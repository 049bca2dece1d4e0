"""The snapshot's rows are encoded a chunk at a time (the encoder holds the GIL, and this runs
beside the supervisor's event loop): the bytes must be msgpack's one array all the same."""

from __future__ import annotations

import msgspec
import pytest

from tollway.config.snapshot import _encode_rows


@pytest.mark.parametrize("n", [0, 1, 15, 16, 1999, 2000, 2001, 70_000])
def test_chunked_rows_are_the_bytes_of_one_array(n: int) -> None:
    rows = [(f"/apisix/routes/{i}", b"v" * (i % 7) or None, i, 1) for i in range(n)]
    body = _encode_rows(rows)
    assert body == msgspec.msgpack.encode(rows)  # array16/array32 headers included
    assert [tuple(r) for r in msgspec.msgpack.decode(body)] == rows
