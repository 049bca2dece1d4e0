"""The gateway's own answers and response head pieces: values in, bytes out; no socket."""

from __future__ import annotations

from tollway.httprules.response_head import (
    lines_to_pairs,
    pairs_to_lines,
    upstream_status_field,
    without_bodies,
)
from tollway.httprules.status import closing_error, default_page, error_page, status_line


def test_nginx_words_for_the_gateways_answers() -> None:
    assert status_line(503) == b"HTTP/1.1 503 Service Temporarily Unavailable\r\n"
    assert status_line(404) == b"HTTP/1.1 404 Not Found\r\n"
    assert status_line(599) == b"HTTP/1.1 599 \r\n"  # nginx: no phrase for a code it does not know
    assert b"<title>403 Forbidden</title>" in error_page(403)


def test_a_bodiless_exit_gets_a_page_for_3xx_to_5xx_only() -> None:
    # nginx's special response for ngx.exit(status); RFC 9110 15.4.5: a 304 has no content
    assert default_page(403) and default_page(503) and default_page(301)
    assert not default_page(200) and not default_page(204) and not default_page(304)


def test_closing_error_is_a_whole_answer_that_closes() -> None:
    out = closing_error(400, b"Server: T\r\nDate: D\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 400 Bad Request",
        b"Server: T",
        b"Date: D",
        b"Content-Type: text/html",
        b"Content-Length: %d" % len(error_page(400)),
        b"Connection: close",  # RFC 9112 9.6
    ]
    assert body == error_page(400)


def test_responses_without_content() -> None:
    # RFC 9110 6.4.1: HEAD, 1xx, 204 and 304 have no content whatever the fields say
    assert without_bodies("HEAD", 200) and without_bodies("GET", 204)
    assert without_bodies("GET", 304) and without_bodies("GET", 101)
    assert not without_bodies("GET", 200) and not without_bodies("POST", 404)


def test_upstream_status_lists_every_try() -> None:
    assert upstream_status_field(None, 502) == b"X-APISIX-Upstream-Status: 502\r\n"
    assert upstream_status_field(["504", "502"], 200) == (
        b"X-APISIX-Upstream-Status: 504, 502, 200\r\n"
    )


def test_head_lines_and_pairs_round_trip() -> None:
    lines = pairs_to_lines([(b"A", b"1"), (b"b", b"x y")])
    assert lines == [b"A", b": ", b"1", b"\r\n", b"b", b": ", b"x y", b"\r\n"]
    assert lines_to_pairs(lines) == [("A", "1"), ("b", "x y")]
