"""What a plugin-made value becomes on the wire (RFC 9110 5.5, RFC 9112 3.2): no socket."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.plugins.kit import header_names_error, wire_value
from tollway.proxy.http import target_bytes


def field_bytes(value: str) -> bytes:
    """What the head writer sends for a value a plugin set through the kit."""
    return wire_value(value).encode("latin-1")


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ("plain", b"plain"),
        ("a\r\nX-Injected: 1", b"a  X-Injected: 1"),
        ("b\x00c", b"b c"),
        ("caf\u00e9", b"caf\xe9"),  # latin-1 stays one byte, as a client's would
        ("\u202e", "\u202e".encode()),  # beyond latin-1: UTF-8
    ],
)
def test_field_bytes(value: str, wire: bytes) -> None:
    assert field_bytes(value) == wire


@given(st.text())
def test_field_bytes_never_break_a_line(value: str) -> None:
    wire = field_bytes(value)
    assert b"\r" not in wire and b"\n" not in wire and b"\x00" not in wire


@pytest.mark.parametrize(
    ("target", "wire"),
    [
        ("/a/b?x=1&y=%20", b"/a/b?x=1&y=%20"),  # valid already: unchanged
        ("/a b", b"/a%20b"),
        ("/a\r\nX-Evil: 1", b"/a%0D%0AX-Evil:%201"),
        ("/caf\u00e9", b"/caf%C3%A9"),
        ("/\x7f", b"/%7F"),
    ],
)
def test_target_bytes(target: str, wire: bytes) -> None:
    assert target_bytes(target) == wire


@given(st.text())
def test_target_bytes_is_one_token(target: str) -> None:
    wire = target_bytes(target)
    assert wire.isascii() and all(0x20 < c < 0x7F for c in wire)


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ({"X-Ok": "v", "x_under": "v"}, True),
        ({"set": {"X-Ok": "1"}, "add": {"Y": "2"}, "remove": ["Z"]}, True),
        ({"X-Bad\r\nX-Injected": "v"}, False),
        ({"set": {"Bad:Name": "v"}}, False),
        ({"remove": ["Bad Name"]}, False),
        ({"": "v"}, False),
        (None, True),
    ],
)
def test_header_names_error(headers: object, ok: bool) -> None:
    assert (header_names_error(headers) is None) is ok
