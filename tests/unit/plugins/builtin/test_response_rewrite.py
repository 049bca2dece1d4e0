"""response-rewrite rules from APISIX's own tests (t/plugin/response-rewrite.t)."""

from __future__ import annotations

import gzip as gzip_module
import re
import zlib
from typing import Any

import pytest

from tests.unit.plugins.ctx import make_ctx
from tollway.errors import ConfigError
from tollway.plugins.builtin.response_rewrite import ResponseRewrite
from tollway.plugins.registry import load_registry

UPSTREAM = [
    ("Content-Type", "text/plain"),
    ("Content-Encoding", "gzip"),
    ("Content-Length", "42"),
    ("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
    ("ETag", '"abc"'),
    ("X-Kept", "1"),
]


def filtered(conf: dict[str, Any]) -> dict[str, str]:
    decoded = load_registry(None).decode_conf("response-rewrite", conf)
    ctx = make_ctx()
    ctx.resp_headers = list(UPSTREAM)
    ctx.resp_status = 200
    ResponseRewrite().header_filter(decoded, ctx)
    return dict(ctx.resp_headers or [])


def test_a_new_body_drops_what_described_the_old_one() -> None:
    # TEST 6/7: "check body and header not changed" -- APISIX clear_header_as_body_modified
    got = filtered({"body": "new body\n"})
    assert set(got) == {"Content-Type", "X-Kept"}
    # the conf's own header edits come after the clearing
    got = filtered({"body": "x", "headers": {"set": {"ETag": '"new"'}}})
    assert got["ETag"] == '"new"'
    # headers only: the body and its validators stay
    assert set(filtered({"headers": {"set": {"X-A": "1"}}})) == {*dict(UPSTREAM), "X-A"}


@pytest.mark.parametrize(
    ("headers", "message"),
    [({"": 2}, "invalid field length in header"), ({"X-Name": []}, "invalid type as header value")],
)
def test_flat_headers_are_checked(headers: dict[str, Any], message: str) -> None:
    # TEST 10/11
    with pytest.raises(ConfigError, match=message):
        load_registry(None).decode_conf("response-rewrite", {"headers": headers})


def test_filter_options_are_ngx_re_flags() -> None:
    # response-rewrite2.t TEST 6
    bad = {"filters": [{"regex": "hello", "replace": "HELLO", "options": "h"}]}
    with pytest.raises(ConfigError, match='regex "hello" validation failed: unknown flag "h"'):
        load_registry(None).decode_conf("response-rewrite", bad)
    ok = {"filters": [{"regex": "hello", "replace": "HELLO", "options": "jio"}]}
    assert load_registry(None).decode_conf("response-rewrite", ok)


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [("gzip", gzip_module.compress), ("deflate", zlib.compress)],
)
def test_filters_read_a_compressed_body(encoding: str, encode: Any) -> None:
    # response-rewrite3.t TEST 6: decoded, filtered, sent without Content-Encoding
    conf = load_registry(None).decode_conf(
        "response-rewrite", {"filters": [{"regex": "hello", "replace": "test"}]}
    )
    plugin = ResponseRewrite()
    ctx = make_ctx()
    ctx.resp_status = 200
    ctx.resp_headers = [("Content-Type", "text/plain"), ("Content-Encoding", encoding)]
    plugin.header_filter(conf, ctx)
    assert ctx.get_response_header("Content-Encoding") is None
    assert plugin.body_filter(conf, ctx, encode(b"hello world\n"), True) == b"test world\n"
    # an encoding the filters cannot read: the answer passes untouched, headers included
    ctx = make_ctx()
    ctx.resp_status = 200
    ctx.resp_headers = [("Content-Encoding", "br")]
    plugin.header_filter(conf, ctx)
    assert ctx.get_response_header("Content-Encoding") == "br"
    assert plugin.body_filter(conf, ctx, b"\x0bhello", True) == b"\x0bhello"


def _body(filters: list[dict[str, Any]], body: bytes) -> bytes:
    conf = load_registry(None).decode_conf("response-rewrite", {"filters": filters})
    plugin = ResponseRewrite()
    ctx = make_ctx()
    ctx.resp_status = 200
    ctx.resp_headers = [("Content-Type", "text/plain")]
    plugin.header_filter(conf, ctx)
    return plugin.body_filter(conf, ctx, body, True)


def test_filters_are_ngx_re_sub_with_groups_and_options() -> None:
    # ngx.re.sub / gsub: "$N" inserts a group, "\" is literal; i, m, s act (on RE2)
    swap = [{"regex": r"(\w+)@(\w+)", "replace": "$2 at $1 \\o/", "scope": "global"}]
    assert _body(swap, b"a@b, c@d") == b"b at a \\o/, d at c \\o/"
    assert _body([{"regex": "HELLO", "replace": "x", "options": "i"}], b"hello") == b"x"
    assert _body([{"regex": "HELLO", "replace": "x"}], b"hello") == b"hello"
    lines = [{"regex": "^b$", "replace": "B", "options": "m"}]
    assert _body(lines, b"a\nb\nc") == b"a\nB\nc"
    dotall = [{"regex": "a.b", "replace": "-", "options": "s"}]
    assert _body(dotall, b"a\nb") == b"-"
    # bytes that are not UTF-8 pass through untouched around a match
    assert _body([{"regex": "b", "replace": "B"}], b"\xffab\xfe") == b"\xffaB\xfe"


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ({"regex": "(a)", "replace": "$2"}, "capture group 2 is out of range"),
        ({"regex": "a", "replace": "5$"}, "invalid capturing variable name"),
        ({"regex": "a(?=b)", "replace": "x"}, "invalid perl operator"),
        ({"regex": "a b", "replace": "x", "options": "x"}, "option x"),
    ],
)
def test_filters_re2_cannot_run_are_refused(flt: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_registry(None).decode_conf("response-rewrite", {"filters": [flt]})
