"""The realip rules (nginx's module as APISIX configures it), without sockets."""

from __future__ import annotations

import pytest

from tollway.proxy.realip import RealIp

DEFAULT = RealIp.from_conf("X-Real-IP", ["127.0.0.1", "unix:"], "off")


def test_defaults_trust_loopback_and_unix_sockets_only() -> None:
    assert DEFAULT.header == b"x-real-ip"
    assert DEFAULT.trusts("127.0.0.1") and DEFAULT.trusts(None)
    assert DEFAULT.trusts("::ffff:127.0.0.1")
    assert not DEFAULT.trusts("127.0.0.2") and not DEFAULT.trusts("::1")
    assert not RealIp.from_conf("X-Real-IP", [], "off").trusts(None)


def test_the_named_address() -> None:
    assert DEFAULT.client(b"10.0.0.1") == "10.0.0.1"
    assert DEFAULT.client(b" 2001:db8::1 ") == "2001:db8::1"
    assert DEFAULT.client(b"1.1.1.1, 10.0.0.1") == "10.0.0.1"  # a list: the last one
    assert DEFAULT.client(b"nonsense") is None
    assert DEFAULT.client(b"") is None
    assert DEFAULT.client(b"\xff") is None


def test_recursive_skips_trusted_proxies_from_the_right() -> None:
    ri = RealIp.from_conf("X-Forwarded-For", ["10.0.0.0/8"], "on")
    assert ri.client(b"9.9.9.9, 10.1.1.1, 10.2.2.2") == "9.9.9.9"
    assert ri.client(b"10.1.1.1, 10.2.2.2") == "10.1.1.1"  # all trusted: the leftmost
    off = RealIp.from_conf("X-Forwarded-For", ["10.0.0.0/8"], False)
    assert off.client(b"9.9.9.9, 10.1.1.1") == "10.1.1.1"


def test_a_bad_source_is_named() -> None:
    with pytest.raises(ValueError, match="nonsense"):
        RealIp.from_conf("X-Real-IP", ["nonsense"], "off")
