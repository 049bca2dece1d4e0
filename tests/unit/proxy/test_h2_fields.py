"""HTTP/2 field rules (RFC 9113 8.2-8.3) and the flood budgets."""

from __future__ import annotations

import pytest

from tollway.proxy.h2_fields import (
    PREFACE,
    MalformedRequest,
    Refused,
    pairs_fields,
    request_of,
    response_fields,
    split_lines,
    starts_h2c,
)
from tollway.proxy.h2_guard import MAX_CONTROL, WINDOW, Budget


def test_preface_detection() -> None:
    assert starts_h2c(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    assert starts_h2c(b"PRI * HTTP/2.0\r\n\r\n")  # the rest of the preface may follow later
    assert not starts_h2c(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not starts_h2c(b"PRI * HTTP/1.1\r\n\r\n")
    assert not starts_h2c(b"PRI * HT")


def test_request_pseudo_fields_become_method_target_host() -> None:
    req = request_of([
        (b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"api.test:8443"),
        (b":path", b"/a?b=1"), (b"cookie", b"a=1"), (b"content-length", b"3"),
        (b"te", b"trailers"), (b"cookie", b"b=2"), (b"x-k", b"v"),
    ])  # fmt: skip
    assert (req.method, req.path, req.host) == (b"POST", b"/a?b=1", b"api.test:8443")
    assert req.content_length == 3
    # Host first (from :authority); crumbs joined (RFC 9113 8.2.3); te: trailers kept (gRPC)
    assert req.fields == [
        (b"host", b"api.test:8443"), (b"content-length", b"3"), (b"te", b"trailers"),
        (b"x-k", b"v"), (b"cookie", b"a=1; b=2"),
    ]  # fmt: skip


def test_host_when_no_authority_and_authority_over_host() -> None:
    base = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")]
    assert request_of([*base, (b"host", b"h.test")]).host == b"h.test"
    req = request_of([*base, (b":authority", b"a.test"), (b"host", b"h.test")])
    assert req.host == b"a.test" and req.fields == [(b"host", b"a.test")]


@pytest.mark.parametrize(
    "headers",
    [
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")],  # no :authority, Host
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a")],  # no :path
        # RFC 9113 8.5: CONNECT has no :scheme nor :path, and an :authority
        [(b":method", b"CONNECT"), (b":scheme", b"http"), (b":authority", b"a:443")],
        [(b":method", b"CONNECT"), (b":path", b"/"), (b":authority", b"a:443")],
        [(b":method", b"CONNECT")],
        # extended CONNECT (RFC 8441) is not offered: :protocol is unknown
        [
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", b"http"),
            (b":path", b"/"),
            (b":authority", b"a"),
        ],
        [
            (b":method", b"POST"),
            (b":path", b"/"),
            (b":authority", b"a"),
            (b"content-length", b"1"),
            (b"content-length", b"2"),
        ],
        [
            (b":method", b"POST"),
            (b":path", b"/"),
            (b":authority", b"a"),
            (b"content-length", b"-1"),
        ],
    ],
)
def test_malformed_requests(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(MalformedRequest):
        request_of(headers)


def test_connect_is_refused_with_405() -> None:
    with pytest.raises(Refused) as e:
        request_of([(b":method", b"CONNECT"), (b":authority", b"a.test:443")])
    assert e.value.status == 405


def test_header_list_over_the_limit_is_refused_with_431() -> None:
    """The limit is on the RFC 7541 4.1 size: name + value + 32 per field."""
    head = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a"),
            (b"x-big", b"v" * 100)]  # fmt: skip
    size = sum(len(n) + len(v) + 32 for n, v in head)
    assert request_of(head, size).method == b"GET"
    with pytest.raises(Refused) as e:
        request_of(head, size - 1)
    assert e.value.status == 431


def test_expect_is_answered_here_not_forwarded() -> None:
    req = request_of([(b":method", b"PUT"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a"),
                      (b"expect", b"100-continue")])  # fmt: skip
    assert req.expect_continue and all(k != b"expect" for k, _ in req.fields)


def test_response_fields_lowercase_without_connection_specific() -> None:
    lines = split_lines(
        b"Content-Type: text/plain\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
        b"Transfer-Encoding: chunked\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nX-A: 1\r\n"
    )
    want = [(b"content-type", b"text/plain"), (b"x-a", b"1")]
    assert response_fields(lines) == want
    assert response_fields(lines) == want  # (the names' second time: from the lookup)
    assert pairs_fields([(b"Content-Type", b"a"), (b"Connection", b"close")]) == [
        (b"content-type", b"a")
    ]


def test_response_fields_of_a_repeated_head_are_a_new_list_each_time() -> None:
    """The last head's fields are kept (an upstream repeats its head): each call still gets its
    own list (the caller extends it), and a caller's list edited in place after the call (an
    upstream connection reusing it) is converted again, not taken for the kept one."""
    lines = split_lines(b"Content-Type: text/plain\r\nX-A: 1\r\n")
    first = response_fields(lines)
    first.append((b"server", b"x"))
    again = response_fields(list(lines))
    assert again == [(b"content-type", b"text/plain"), (b"x-a", b"1")] and again is not first
    lines[6] = b"2"  # X-A's value, in the same list
    assert response_fields(lines) == [(b"content-type", b"text/plain"), (b"x-a", b"2")]
    assert response_fields(split_lines(b"Connection: close\r\n")) == []


def test_budget_per_interval() -> None:
    b = Budget(0.0)
    assert all(b.spend_control(1.0) for _ in range(MAX_CONTROL))
    assert not b.spend_control(1.0)  # one past the budget
    assert b.spend_control(WINDOW + 0.5)  # a new interval starts over
    assert b.spend_reset(WINDOW + 0.5) and b.spend_empty(WINDOW + 0.5)


BASE = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]


@pytest.mark.parametrize(
    "extra",
    [
        [(b"X-Upper", b"v")],  # uppercase name (RFC 9113 8.2.1)
        [(b"x-a", b"v\r\nx-injected: 1")],  # CR LF would split the HTTP/1.1 head upstream
        [(b"x-a", b"v\x00")],
        [(b"x a", b"v")],
        [(b"x:a", b"v")],
        [(b"", b"v")],
        [(b"connection", b"keep-alive")],  # connection-specific (RFC 9113 8.2.2)
        [(b"transfer-encoding", b"chunked")],
        [(b"upgrade", b"h2c")],
        [(b"te", b"gzip")],  # te: only trailers
        [(b"x-a", b"v"), (b":method", b"POST")],  # pseudo after regular
        [(b":method", b"POST")],  # repeated pseudo
        [(b":status", b"200")],  # a response pseudo-field in a request
    ],
)
def test_invalid_fields_are_malformed(extra: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(MalformedRequest):
        request_of([*BASE, *extra])


def test_path_with_crlf_is_malformed() -> None:
    with pytest.raises(MalformedRequest):
        request_of([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"),
                    (b":path", b"/a HTTP/1.1\r\nx: y")])  # fmt: skip
