"""HTTP/2 attacks against the real process: each closes the attacker's connection, while a
well-behaved client on another connection keeps getting 200 from the same worker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import ContinuationFrame, HeadersFrame

from tests.support.gateway import Gateway
from tests.support.h2client import H2Client
from tests.support.upstream import Upstream


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    up = Upstream().start()
    root: Path = tmp_path_factory.mktemp("h2floods")
    routes = f'routes:\n  - {{id: 1, uri: /*, upstream: {{nodes: {{"{up.addr}": 1}}}}}}\n#END\n'
    with Gateway(root, apisix_yaml=routes) as g:
        yield g
    up.stop()


def attacked(gw: Gateway, attack: Callable[[H2Client], None], code: int | None) -> None:
    pids = gw.worker_pids()
    good = H2Client(gw.port)
    bad = H2Client(gw.port)
    try:
        assert good.get("/before").status == 200
        try:
            attack(bad)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway closed while the attack was still being written
        assert bad.read_until_closed(timeout=10), "the attacker's connection stayed open"
        if code is not None and bad.goaway is not None:
            assert bad.goaway.error_code == code
        assert good.get("/after").status == 200  # the other connection is unaffected
        assert H2Client(gw.port).get("/new").status == 200
        assert gw.worker_pids() == pids  # the worker did not die
    finally:
        good.close()
        bad.close()


def test_rapid_reset(gw: Gateway) -> None:
    """CVE-2023-44487: streams opened and reset at once, over and over."""

    def attack(c: H2Client) -> None:
        for _ in range(600):
            sid = c.send_request("/slow/1000")
            c.conn.reset_stream(sid, ErrorCodes.CANCEL)
        c.flush()

    attacked(gw, attack, ErrorCodes.ENHANCE_YOUR_CALM)


def test_continuation_flood(gw: Gateway) -> None:
    """CVE-2024-27316: a header block that never ends."""

    def attack(c: H2Client) -> None:
        head = c.conn.encoder.encode([(b":method", b"GET"), (b":path", b"/"),
                                      (b":scheme", b"http"), (b":authority", b"x")])  # fmt: skip
        c.sock.sendall(HeadersFrame(1, data=head).serialize())  # no END_HEADERS
        block = b"\x40\x03abc\x03xyz" * 1600  # literal fields, ~16 KB a frame
        for _ in range(60):
            c.sock.sendall(ContinuationFrame(1, data=block).serialize())

    attacked(gw, attack, ErrorCodes.ENHANCE_YOUR_CALM)


def test_empty_continuation_flood(gw: Gateway) -> None:
    def attack(c: H2Client) -> None:
        c.sock.sendall(HeadersFrame(1, data=b"").serialize())
        c.sock.sendall(b"".join(ContinuationFrame(1, data=b"").serialize() for _ in range(500)))

    attacked(gw, attack, None)


def test_settings_flood(gw: Gateway) -> None:
    def attack(c: H2Client) -> None:
        for _ in range(1000):
            c.conn.update_settings({})
        c.flush()

    attacked(gw, attack, ErrorCodes.ENHANCE_YOUR_CALM)


def test_ping_flood(gw: Gateway) -> None:
    def attack(c: H2Client) -> None:
        for i in range(1000):
            c.conn.ping(i.to_bytes(8, "big"))
        c.flush()

    attacked(gw, attack, ErrorCodes.ENHANCE_YOUR_CALM)


def test_empty_data_frames(gw: Gateway) -> None:
    def attack(c: H2Client) -> None:
        sid = c.send_request("/upload", method="POST", body=b"", end=False)
        for _ in range(1000):
            c.conn.send_data(sid, b"")
        c.flush()

    attacked(gw, attack, ErrorCodes.ENHANCE_YOUR_CALM)


def test_streams_past_the_limit_are_refused(gw: Gateway) -> None:
    """RFC 9113 5.1.2: a stream past SETTINGS_MAX_CONCURRENT_STREAMS (128) is refused with
    REFUSED_STREAM (safe to retry, 8.7); the streams within the limit and the connection go on."""
    c = H2Client(gw.port)
    try:
        sids = [c.send_request(f"/slow/300?{i}") for i in range(150)]  # before our SETTINGS
        answers = c.wait(*sids, timeout=30)
        refused = [s for s, a in zip(sids, answers, strict=True) if a.reset is not None]
        assert refused == sids[128:]
        assert all(c.answers[s].reset == ErrorCodes.REFUSED_STREAM for s in refused)
        assert all(a.status == 200 for a in answers[:128])
        assert c.get("/more").status == 200  # the same connection
        assert not c.closed and c.goaway is None
    finally:
        c.close()


def test_refused_streams_flood(gw: Gateway) -> None:
    """Streams opened past the limit over and over: each cost a header block's decoding, so
    each counts as a reset (CVE-2023-44487's budget)."""

    def attack(c: H2Client) -> None:
        for _ in range(128 + 300):
            c.send_request("/slow/2000")

    attacked(gw, attack, ErrorCodes.ENHANCE_YOUR_CALM)


def test_oversized_header_list(gw: Gateway) -> None:
    """Within 4x the header limit: 431 on its stream (RFC 9113 10.5.1), the connection kept.
    One 4 KB field repeated: HPACK sends it once, then as an index of one byte."""
    c = H2Client(gw.port)
    try:
        a = c.get("/", headers=[("x-big", "v" * 4000)] * 12)  # 48 KB decoded, limit 32 KB
        assert a.status == 431 and b"431 Request Header Fields Too Large" in a.body
        assert c.get("/echo").status == 200
    finally:
        c.close()


def test_hpack_bomb(gw: Gateway) -> None:
    """A header block inflating past 4x the limit (one-byte indexes of a 4 KB field): not
    decoded further, the connection ends (ENHANCE_YOUR_CALM)."""

    def attack(c: H2Client) -> None:
        c.send_request("/", headers=[("x-big", "v" * 4000)] * 40)

    attacked(gw, attack, ErrorCodes.ENHANCE_YOUR_CALM)


def test_concurrent_streams_within_the_limit(gw: Gateway) -> None:
    """The limit is not a cap on the connection: 128 at once are served, then more."""
    c = H2Client(gw.port)
    try:
        c.read_once(timeout=5)  # the gateway's SETTINGS
        sids = [c.send_request(f"/slow/300?{i}") for i in range(128)]
        assert all(a.status == 200 for a in c.wait(*sids, timeout=30))
        assert c.get("/more").status == 200
    finally:
        c.close()


@pytest.mark.parametrize(
    "block",
    [b"\xff\xff\xff", b"\x3f\xe1\xff\xff\xff\xff\xff\xff\x0f", b"\xbf", b"\x00\x85\xff\xff"],
    ids=["truncated-integer", "table-size-overflow", "index-past-table", "bad-huffman"],
)
def test_malformed_hpack_block(gw: Gateway, block: bytes) -> None:
    """A header block HPACK cannot decode (RFC 7541: truncated integer, index past the table,
    bad Huffman code...) is a connection error COMPRESSION_ERROR (RFC 9113 4.3). jh2's compiled
    decoder panics on some of them (pyo3's PanicException, a BaseException, not an Exception):
    the attacker's connection ends, not the worker."""

    def attack(c: H2Client) -> None:
        c.sock.sendall(HeadersFrame(1, data=block, flags=["END_HEADERS"]).serialize())

    attacked(gw, attack, ErrorCodes.COMPRESSION_ERROR)
