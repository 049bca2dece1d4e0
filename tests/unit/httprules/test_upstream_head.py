"""The upstream request head's rules: values and bytes in, bytes out; no socket."""

from __future__ import annotations

from tollway.httprules.fields import connection_tokens
from tollway.httprules.upstream_head import (
    SKIP_UPSTREAM,
    client_fields,
    forwarding_fields,
    framing_fields,
    host_field,
)


def test_host_follows_pass_host() -> None:
    # APISIX upstream.lua: a plugin's host > pass_host
    args = ("node.internal", 8080, b"client.example")
    assert host_field("set.by.plugin", "node", None, "http", *args) == b"set.by.plugin"
    assert host_field(None, "pass", None, "http", *args) == b"client.example"
    assert host_field(None, "node", None, "http", *args) == b"node.internal:8080"
    assert host_field(None, "rewrite", "configured", "http", *args) == b"configured"


def test_pass_host_node_omits_the_default_port_of_the_scheme() -> None:
    # RFC 9110 7.2: Host carries the port unless it is the scheme's default
    assert host_field(None, "node", None, "http", "n", 80, b"c") == b"n"
    assert host_field(None, "node", None, "https", "n", 443, b"c") == b"n"
    assert host_field(None, "node", None, "https", "n", 80, b"c") == b"n:80"


def test_pass_without_client_host_uses_the_node() -> None:
    # an HTTP/1.0 request may come without Host; HTTP/1.1 upstream requests need one
    assert host_field(None, "pass", None, "http", "10.0.0.1", 80, b"") == b"10.0.0.1"


def test_hop_by_hop_and_connection_named_fields_stop_at_the_gateway() -> None:
    # RFC 9110 7.6.1: Connection, the fields it names, Keep-Alive, TE, Transfer-Encoding,
    # Upgrade... are not forwarded
    raw = [
        (b"Host", b"a"),
        (b"Connection", b"keep-alive, X-Secret"),
        (b"X-Secret", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"TE", b"trailers"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Content-Length", b"3"),
        (b"Accept", b"*/*"),
    ]
    tokens = connection_tokens(raw)
    assert tokens == frozenset({b"x-secret"})
    out, xff, fwd = client_fields(raw, SKIP_UPSTREAM | tokens, None, False)
    assert b"".join(out) == b"Accept: */*\r\n"
    assert xff is None and fwd is None


def test_forwarded_fields_of_an_untrusted_peer_are_replaced() -> None:
    raw = [(b"X-Forwarded-For", b"1.1.1.1"), (b"X-Forwarded-Proto", b"https")]
    out, xff, fwd = client_fields(raw, SKIP_UPSTREAM, None, trusted=False)
    assert out == [] and xff == b"1.1.1.1" and fwd is None
    head = forwarding_fields(b"10.0.0.9", xff, fwd, b"http", 9080, b"example.com")
    assert head == (
        b"X-Real-IP: 10.0.0.9\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Port: 9080\r\n"
        b"X-Forwarded-For: 1.1.1.1, 10.0.0.9\r\nX-Forwarded-Host: example.com\r\n"
    )


def test_forwarded_fields_of_a_trusted_peer_are_kept() -> None:
    raw = [(b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-Host", b"front.example")]
    _, xff, fwd = client_fields(raw, SKIP_UPSTREAM, None, trusted=True)
    assert fwd == {b"x-forwarded-proto": b"https", b"x-forwarded-host": b"front.example"}
    head = forwarding_fields(b"10.0.0.9", xff, fwd, b"http", 9080, b"example.com")
    assert head == (
        b"X-Real-IP: 10.0.0.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 9080\r\n"
        b"X-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Host: front.example\r\n"
    )


def test_plugin_edits_replace_the_client_fields() -> None:
    raw = [(b"accept", b"*/*"), (b"X-Old", b"1"), (b"X-Forwarded-For", b"1.1.1.1")]
    edits: dict[bytes, tuple[bytes, bytes | None]] = {
        b"accept": (b"Accept", b"text/plain"),
        b"x-old": (b"X-Old", None),  # removed
        b"x-forwarded-for": (b"X-Forwarded-For", b"2.2.2.2"),
        b"x-forwarded-proto": (b"X-Forwarded-Proto", b"https"),  # a plugin is trusted
        b"transfer-encoding": (b"Transfer-Encoding", b"gzip"),  # hop-by-hop: never sent
    }
    out, xff, fwd = client_fields(raw, SKIP_UPSTREAM, edits, trusted=False)
    assert b"".join(out) == b"Accept: text/plain\r\n"
    assert xff == b"2.2.2.2" and fwd == {b"x-forwarded-proto": b"https"}


def test_framing() -> None:
    # RFC 9112 6: a tunnel asks for the upgrade; a body read whole goes with its length
    assert framing_fields("GET", b"websocket", None, False, False, 0) == (
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
    )
    assert framing_fields("POST", None, b"abc", True, True, 0) == b"Content-Length: 3\r\n"
    assert framing_fields("POST", None, b"", False, False, 0) == b"Content-Length: 0\r\n"
    assert framing_fields("GET", None, b"", False, False, 0) == b""
    # a streamed body keeps the client's framing (RFC 9112 7: chunked stays chunked)
    assert framing_fields("POST", None, None, True, True, 0) == b"Transfer-Encoding: chunked\r\n"
    assert framing_fields("PUT", None, None, True, False, 70000) == b"Content-Length: 70000\r\n"
    assert framing_fields("GET", None, None, False, False, 0) == b""
