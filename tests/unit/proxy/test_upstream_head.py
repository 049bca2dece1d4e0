"""The upstream response head as the proxy sees it: end-to-end headers kept in order and as
spelled, hop-by-hop ones and Server dropped whatever their case, framing headers set aside."""

from __future__ import annotations

import pytest

from tollway.upstream.pool import Pool, UpstreamConnection


class Sink:
    def __init__(self) -> None:
        self.heads: list[tuple[int, list[bytes], bytes | None, bytes | None]] = []
        self.body = b""
        self.done = 0

    def on_upstream_headers(self, status: int, conn: UpstreamConnection) -> None:
        self.heads.append((status, list(conn.lines), conn.content_length, conn.connection))

    def on_upstream_body(self, data: bytes) -> None:
        self.body += data

    def on_upstream_complete(self) -> None:
        self.done += 1

    def on_upstream_error(self, exc: BaseException | None) -> None:
        raise AssertionError(exc)

    def flush(self) -> None:
        return None


class Transport:
    def write(self, data: bytes) -> None: ...
    def is_closing(self) -> bool:
        return False

    def close(self) -> None: ...


def exchange(raw: bytes, *, chunks: int = 1) -> Sink:
    conn = UpstreamConnection(Pool(), ("k",))
    conn.connection_made(Transport())  # type: ignore[arg-type]
    sink = Sink()
    conn.start(sink, head_request=False)
    step = max(1, len(raw) // chunks)
    for i in range(0, len(raw), step):
        conn.data_received(raw[i : i + step])
    return sink


@pytest.mark.parametrize("chunks", [1, 7, 1000])  # one read, a few, one byte at a time
def test_hop_by_hop_and_server_dropped_in_any_case(chunks: int) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nSERVER: up\r\nX-One: 1\r\nCONNECTION: keep-alive, X-Two\r\n"
        b"keep-alive: timeout=5\r\nX-Two: 2\r\nCoNtEnT-LeNgTh: 2\r\nx-three: 3\r\n\r\nok"
    )
    sink = exchange(raw, chunks=chunks)
    assert sink.done == 1 and sink.body == b"ok"
    [(status, lines, content_length, connection)] = sink.heads
    assert status == 200
    assert content_length == b"2"
    assert connection == b"keep-alive, X-Two"  # the pipeline drops X-Two (named in Connection)
    pairs = list(zip(lines[0::4], lines[2::4], strict=True))
    assert pairs == [(b"X-One", b"1"), (b"X-Two", b"2"), (b"x-three", b"3")]
    assert all(sep == b": " for sep in lines[1::4]) and all(end == b"\r\n" for end in lines[3::4])


def test_interim_responses_are_not_forwarded() -> None:
    raw = (
        b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nX-Final: 1\r\nContent-Length: 0\r\n\r\n"
    )
    sink = exchange(raw)
    assert [(s, ls) for s, ls, _, _ in sink.heads] == [(201, [b"X-Final", b": ", b"1", b"\r\n"])]
    assert sink.done == 1


def test_learned_spellings_do_not_leak_between_responses() -> None:
    # A name first seen as end-to-end stays so; a hop-by-hop one stays dropped.
    for _ in range(2):
        sink = exchange(
            b"HTTP/1.1 204 No Content\r\nTransfer-encoding: identity\r\nX-Keep: y\r\n\r\n"
        )
        [(_, lines, _, _)] = sink.heads
        assert lines == [b"X-Keep", b": ", b"y", b"\r\n"]
