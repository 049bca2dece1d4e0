"""response-rewrite rules from APISIX's own tests (t/plugin/response-rewrite.t)."""

from __future__ import annotations

import gzip as gzip_module
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
