"""The pure gRPC rules: grpc-timeout, the upstream stream's head, the statuses the gateway
answers a gRPC client with."""

from __future__ import annotations

import pytest

from tollway.httprules.grpc import (
    SKIP_GRPC,
    error_fields,
    format_timeout,
    is_grpc,
    message_value,
    parse_timeout,
    request_fields,
    status_for,
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1H", 3600.0),
        ("2M", 120.0),
        ("3S", 3.0),
        ("250m", 0.25),
        ("1500u", 0.0015),
        ("99999999n", 0.099999999),
        (b"10S", 10.0),
    ],
)
def test_parse_timeout(value: str | bytes, seconds: float) -> None:
    assert parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [None, "", "S", "123456789S", "1x", "1.5S", "-1S", "1 S", "m"])
def test_malformed_timeout_is_none(value: str | None) -> None:
    assert parse_timeout(value) is None


def test_format_timeout_round_trips_in_milliseconds() -> None:
    assert format_timeout(0.25) == b"250m"
    assert format_timeout(0.0001) == b"1m"  # never 0: that would be an expired deadline
    assert parse_timeout(format_timeout(12.5)) == pytest.approx(12.5)
    huge = format_timeout(10**9)
    assert len(huge) <= 9 and parse_timeout(huge) is not None


def test_is_grpc() -> None:
    for ct in (
        "application/grpc",
        "application/grpc+proto",
        "application/grpc-web-text",
        b"Application/GRPC",
    ):
        assert is_grpc(ct)
    for ct in (None, "", "application/json", "text/grpc"):
        assert not is_grpc(ct)


def test_status_for_failures() -> None:
    assert status_for(504) == 4  # DEADLINE_EXCEEDED
    assert status_for(502) == 14  # UNAVAILABLE
    assert status_for(503) == 14
    assert status_for(499) == 1  # CANCELLED


def test_message_is_percent_encoded() -> None:
    assert message_value("plain text: ok") == b"plain text: ok"
    assert message_value("100% \u00e9\n") == b"100%25 %C3%A9%0A"


def test_error_fields_are_trailers_only() -> None:
    assert error_fields(14, "no upstream") == [
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"14"),
        (b"grpc-message", b"no upstream"),
    ]


def test_request_fields() -> None:
    raw = [
        (b"Host", b"gw.example"),
        (b"Content-Type", b"application/grpc+proto"),
        (b"Content-Length", b"12"),
        (b"Connection", b"keep-alive"),
        (b"TE", b"trailers"),
        (b"grpc-timeout", b"5S"),
        (b"X-Meta", b"1"),
        (b"Authorization", b"secret"),
    ]
    out = request_fields(
        (b"POST", b"http", b"/pkg.S/M", b"up:50051"), raw, SKIP_GRPC, {b"authorization": None}, 2.0
    )
    assert out == [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/pkg.S/M"),
        (b":authority", b"up:50051"),
        (b"x-meta", b"1"),  # lowercase (RFC 9113 8.2.1); hop-by-hop, Host, length dropped
        (b"content-type", b"application/grpc+proto"),
        (b"te", b"trailers"),
        (b"grpc-timeout", b"2000m"),  # the remaining deadline, not the client's
    ]


def test_request_fields_never_send_grpc_web_upstream() -> None:
    raw = [(b"content-type", b"application/grpc-web-text")]
    out = dict(request_fields((b"POST", b"http", b"/a", b"h"), raw, SKIP_GRPC, None, None))
    assert out[b"content-type"] == b"application/grpc"
    assert b"grpc-timeout" not in out
    edited = dict(
        request_fields(
            (b"POST", b"http", b"/a", b"h"),
            raw,
            SKIP_GRPC,
            {b"content-type": b"application/grpc"},
            None,
        )
    )
    assert edited[b"content-type"] == b"application/grpc"
