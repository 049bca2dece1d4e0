"""max_header_size on HTTP/1.1 (proxy/server.py): a head is refused (431, or 414 for its URL)
exactly when len(url) + the sum of len(name) + len(value) + 4 over its fields exceeds the limit,
however its bytes are split into reads. Heads that cannot exceed it (fewer bytes than 4/5 of
the limit since the head began) are not counted field by field: these tests pin that shortcut
to the exact rule."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.proxy.fakes import Transport
from tollway.config.store import Store
from tollway.plugins.registry import Registry
from tollway.proxy.server import HttpProtocol
from tollway.proxy.state import ServerState
from tollway.runtime.compiler import Compiler
from tollway.settings import default_settings

LIMIT = 1024


def statuses(chunks: list[bytes]) -> list[int]:
    """The status lines a gateway with no route answers to ``chunks`` read one by one (404
    for a head it accepted)."""

    async def run() -> list[int]:
        compiler = Compiler(default_settings(Path("/tmp/conf")), Registry([]))
        await compiler.rebuild(Store())
        state = ServerState(compiler, max_header_size=LIMIT, max_body_size=0, keepalive_timeout=60)
        state.start(asyncio.get_running_loop())
        proto = HttpProtocol(state)
        transport = Transport()
        proto.connection_made(transport)  # type: ignore[arg-type]
        for chunk in chunks:
            if transport.closed:
                break
            proto.data_received(chunk)
            state.flush_writes()
        state.stop()
        return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", b"".join(transport.out))]

    return asyncio.run(run())


def head(url: bytes, fields: list[tuple[bytes, bytes]], space: bool = True) -> bytes:
    sep = b": " if space else b":"
    lines = b"".join(n + sep + v + b"\r\n" for n, v in fields)
    return b"GET " + url + b" HTTP/1.1\r\n" + lines + b"\r\n"


def counted(url: bytes, fields: list[tuple[bytes, bytes]]) -> int:
    return len(url) + sum(len(n) + len(v) + 4 for n, v in fields)


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def fields_counting(total: int, url: bytes = b"/") -> list[tuple[bytes, bytes]]:
    """Host plus X-Pad fields, counted ``total`` with ``url``."""
    fields = [(b"Host", b"x")]
    left = total - counted(url, fields)
    while left > 0:
        value_len = min(left - 9, 200)  # "X-Pad" + 4 + the value
        fields.append((b"X-Pad", b"v" * value_len))
        left -= 9 + value_len
    assert counted(url, fields) == total
    return fields


def test_the_limit_is_exact_in_one_read_and_split_into_many() -> None:
    at, over = fields_counting(LIMIT), fields_counting(LIMIT + 1)
    for size in (10_000, 1, 7, 100, 500, 900):
        assert statuses(split(head(b"/", at), size)) == [404], size
        assert statuses(split(head(b"/", over), size)) == [431], size


def test_fields_without_space_count_more_than_their_bytes() -> None:
    # "a:" fields take 4 bytes and count 5: 200 of them fit in 1024 bytes, not in the limit
    fields = [(b"Host", b"x")] + [(b"a", b"")] * 203
    data = head(b"/", fields, space=False)
    assert len(data) < LIMIT < counted(b"/", fields)
    assert statuses([data]) == [431]
    fits = [(b"Host", b"x")] + [(b"a", b"")] * 202
    assert counted(b"/", fits) == LIMIT - 4
    assert statuses([head(b"/", fits, space=False)]) == [404]


def test_a_url_over_the_limit_is_414_and_with_the_fields_431() -> None:
    long_url = b"/" + b"u" * LIMIT
    assert statuses([head(long_url, [(b"Host", b"x")])]) == [414]
    assert statuses(split(head(long_url, [(b"Host", b"x")]), 50)) == [414]
    url = b"/" + b"u" * (LIMIT - 20)
    assert statuses(split(head(url, [(b"Host", b"x"), (b"X-A", b"b" * 20)]), 64)) == [431]


def test_many_small_requests_in_reads_larger_than_the_limit_all_pass() -> None:
    one = head(b"/" + b"p" * 300, [(b"Host", b"x"), (b"X-A", b"b" * 300)])
    assert LIMIT // 2 < len(one) < LIMIT
    data = one * 6
    # reads of 3 heads and a half: each head is counted from where it begins
    assert statuses(split(data, len(one) * 7 // 2)) == [404] * 6
    assert statuses([data]) == [404] * 6


def test_a_head_begun_in_a_read_is_counted_whole_in_the_next() -> None:
    # the first read holds a full request and most of a second one that is over the limit
    over = head(b"/", fields_counting(LIMIT + 1))
    first = head(b"/", [(b"Host", b"x")])
    data = first + over
    assert statuses([data[: len(first) + 700], data[len(first) + 700 :]]) == [404, 431]
    fits = head(b"/", fields_counting(LIMIT))
    data = first + fits
    assert statuses([data[: len(first) + 700], data[len(first) + 700 :]]) == [404, 404]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 40), st.integers(0, 300), st.booleans()), max_size=12),
    st.integers(1, 600),
    st.lists(st.integers(1, 1500), max_size=4),
)
def test_split_heads_are_refused_exactly_when_they_count_over_the_limit(
    shape: list[tuple[int, int, bool]], url_len: int, cuts: list[int]
) -> None:
    url = b"/" + b"u" * (url_len - 1)
    fields = [(b"Host", b"x")] + [(b"x" * n, b"v" * v) for n, v, _ in shape]
    lines = [b"GET " + url + b" HTTP/1.1\r\n"]
    for (name, value), space in zip(fields, [True] + [s for *_, s in shape], strict=True):
        lines.append(name + (b": " if space else b":") + value + b"\r\n")
    data = b"".join(lines) + b"\r\n"
    points = sorted({c for c in cuts if c < len(data)})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    size = counted(url, fields)
    expected = 404 if size <= LIMIT else 414 if len(url) > LIMIT else 431
    assert statuses(chunks) == [expected]
