"""The access log's format compiled once into one writer: each line is what nginx's log_format
makes of the exchange, plain or escape=json, checked against the values' getters."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import pytest

from tollway.plugins.kit import RequestContext, var_getter
from tollway.proxy.accesslog import (
    _INLINE,
    _OWN,
    _OWN_CTX,
    AccessLog,
    _getter_of,
    compile_writer,
    escape_default,
    split_format,
    time_local,
)
from tollway.settings import HttpConf


def exchange(**headers: str) -> Any:
    raw = [(b"host", b"example.com:9080"), (b"user-agent", b"curl/8.0")]
    raw += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    ctx = RequestContext("GET", "/a/b?x=1", "/a/b", "x=1", raw, "example.com", "10.0.0.7", 5555,
                         "127.0.0.1", 9080, "http", 1_700_000_000.25, "2.0")  # fmt: skip
    ctx.upstream_addr = "127.0.0.1:1980"
    ctx.upstream_status = "200"
    ctx.resp_status = 200
    return SimpleNamespace(ctx=ctx, status=200, resp_bytes=12, method="GET", http_version="2.0")


def line(log: AccessLog, ex: Any) -> str:
    log.log(ex)
    text = log._buf.pop().decode()
    if log._timer is not None:
        log._timer.cancel()
        log._timer = None
    return text


@pytest.fixture
def loop_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """``AccessLog.log`` arms its flush timer on the running loop: a stand-in one."""
    loop = SimpleNamespace(call_later=lambda delay, fn: SimpleNamespace(cancel=lambda: None))
    monkeypatch.setattr("asyncio.get_running_loop", lambda: loop)


@pytest.mark.usefixtures("loop_running")
def test_default_format_line_is_the_exchange_s_values() -> None:
    log = AccessLog("/nonexistent/access.log", HttpConf().access_log_format)
    text = line(log, exchange())
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(1_700_000_000))
    assert text.startswith(
        f'10.0.0.7 - - [{stamp}] example.com:9080 "GET /a/b?x=1 HTTP/2.0" 200 12 '
    )
    assert text.endswith(' "-" "curl/8.0" 127.0.0.1:1980 200 - "http://example.com/a/b?x=1"\n'), (
        text
    )


@pytest.mark.usefixtures("loop_running")
def test_json_escape_and_unset_values() -> None:
    log = AccessLog("/x", '{"ua":"$http_user_agent","ref":"$http_referer","q":"$http_x_quote"}',
                    "json")  # fmt: skip
    text = line(log, exchange(x_quote='say "hi"\n'))
    assert text == '{"ua":"curl/8.0","ref":"","q":"say \\"hi\\"\\n"}\n'


def test_the_format_splits_around_variables_and_folds_constants() -> None:
    """The text around each variable, found once; a variable whose value never changes
    ($upstream_scheme, $remote_user) is written into the text as each escape writes it."""
    assert split_format("[$status] $body_bytes_sent bytes") == (
        [("[", "status"), ("] ", "body_bytes_sent")],
        " bytes\n",
    )
    assert split_format("no variables") == ([], "no variables\n")
    fmt = "$upstream_scheme://$host $remote_user"
    assert split_format(fmt, "default") == ([("http://", "host")], " -\n")
    assert split_format(fmt, "json") == ([("http://", "host")], " \n")
    assert split_format(fmt) == (
        [("", "upstream_scheme"), ("://", "host"), (" ", "remote_user")],
        "\n",
    )


def test_http_variables_read_dashes_then_underscores() -> None:
    """nginx's $http_x_y is X-Y, and with APISIX's underscores_in_headers also X_Y: the
    compiled getter reads them as ``RequestContext.var`` does, including an empty value."""
    ctx = exchange().ctx
    ctx.raw_headers.append((b"x_only", b"under"))
    ctx.raw_headers.append((b"x-empty", b""))
    for name in ("http_user_agent", "http_x_only", "http_x_empty", "http_missing", "http_host"):
        assert var_getter(name)(ctx) == ctx.var(name), name


def test_time_local_is_formatted_once_a_second_and_stays_right() -> None:
    for now in (1_700_000_000.1, 1_700_000_000.9, 1_700_000_001.0, 1_600_000_000.5):
        assert time_local(now) == time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(now))


# -- the generated writer (compile_writer) against the getters, byte for byte ---------------


def reference(fmt: str, escape: str, ex: Any) -> bytes:
    """The line as the getters give it (the loop ``AccessLog.log`` ran before the writer was
    generated): each value fetched by its getter, then escaped."""
    pairs, tail = split_format(fmt, escape)
    out: list[str] = []
    for text, name in pairs:
        get, of_ctx = _getter_of(name)
        v = get(ex.ctx) if of_ctx else get(ex)
        if escape == "json":
            out += (text, "" if v is None else json.dumps(str(v), ensure_ascii=False)[1:-1])
        else:
            out += (text, "-" if v is None or v == "" else escape_default(str(v)))
    line = "".join(out) + tail
    try:
        return line.encode("latin-1")  # (the client's bytes, as nginx writes them)
    except UnicodeEncodeError:
        return line.encode("utf-8", "replace")


EVERY = " ".join(
    f"${name}"
    for name in [
        *_INLINE,
        *_OWN,
        *_OWN_CTX,
        "http_user_agent",
        "http_x_quote",
        "http_x_only",
        "http_missing",
        "http_x_empty",
        "request_length",
        "server_port",
        "cookie_a",
        "arg_x",
        "nosuchvar",
        "content_type",
    ]
)
ODD = 'say "hi"\\\r\n\t\x01 caf\xe9 \u00ff end'  # quotes, backslash, controls, non-ASCII


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """``$request_time`` reads the clock: the same instant for the writer and the getters."""
    monkeypatch.setattr("time.time", lambda: 1_700_000_002.5)


@pytest.mark.usefixtures("fixed_clock")
@pytest.mark.parametrize("escape", ["default", "json"])
@pytest.mark.parametrize("fmt", [HttpConf().access_log_format, EVERY, "plain", "$status%s{}\\"])
@pytest.mark.parametrize("headers", ["raw", "decoded", "edited"])
def test_writer_writes_what_the_getters_give(fmt: str, escape: str, headers: str) -> None:
    ex = exchange(x_quote=ODD, x_empty="", cookie="a=1")
    ex.ctx.raw_headers.append((b"x_only", "caf\xe9".encode("latin-1")))
    ex.ctx.raw_headers.append((b"X-QUOTE", b"again"))  # repeated, any case: joined with ", "
    if headers == "decoded":  # a plugin read them all first: the log reads that dict
        assert ex.ctx.headers["x-quote"].endswith(", again")
    if headers == "edited":  # a plugin's upstream header edits: $http_* shows them
        ex.ctx.up_header_ops = [("User-Agent", "edited", False), ("X-Quote", None, False)]
        ex.ctx.up_uri, ex.ctx.up_host = "/rewritten", "up.example"
    assert compile_writer(fmt, escape)(ex) == reference(fmt, escape, ex)


@pytest.mark.usefixtures("fixed_clock")
def test_writer_handles_unset_and_odd_values_in_both_escapes() -> None:
    """Unset and empty values are "-" (default) or "" (json). As nginx's log module: default
    writes ", \\ and bytes outside 0x20-0x7E as \\xHH; json escapes quotes, backslashes and
    control characters; both write the client's other bytes as it sent them (0xE9 stays E9)."""
    ex = exchange()
    ex.ctx.raw_headers.append((b"x-quote", b'say "hi"\\\r\t\x01 caf\xe9'))
    ex.ctx.upstream_addr = ex.ctx.upstream_status = None
    ex.ctx.remote_addr = ""
    fmt = "$remote_addr|$upstream_addr|$upstream_status|$http_x_quote|$http_referer|$nosuch|$status"
    assert compile_writer(fmt)(ex) == (
        b"-|-|-|say \\x22hi\\x22\\x5C\\x0D\\x09\\x01 caf\\xE9|-|-|200\n"
    )
    assert compile_writer(fmt, "json")(ex) == (b'|||say \\"hi\\"\\\\\\r\\t\\u0001 caf\xe9|||200\n')


@pytest.mark.usefixtures("fixed_clock")
def test_default_format_line_bytes() -> None:
    ex = exchange(referer="http://r/")
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(1_700_000_000))
    assert (
        compile_writer(HttpConf().access_log_format)(ex)
        == (
            f'10.0.0.7 - - [{stamp}] example.com:9080 "GET /a/b?x=1 HTTP/2.0" 200 12 2.250 '
            '"http://r/" "curl/8.0" 127.0.0.1:1980 200 - "http://example.com/a/b?x=1"\n'
        ).encode()
    )


def test_a_lone_surrogate_is_replaced_not_raised() -> None:
    """A value Python cannot encode strictly (a lone surrogate) is written as "?", as the
    encoder's "replace" does: one bad value never loses the line."""
    ex = exchange()
    ex.ctx.request_uri = "/a\udcff"
    assert compile_writer("$request_uri $status")(ex) == b"/a? 200\n"


@pytest.mark.parametrize("escape", ["default", "json"])
def test_upstream_response_time_is_the_attempts(escape: str) -> None:
    """$upstream_response_time is the answering attempt's seconds (nginx's, 3 decimals), "-"
    (or "" in json) before any attempt answered: not a constant of the format."""
    ex = exchange()
    ex.ctx.upstream_response_time = 0.01234
    assert compile_writer("$upstream_response_time|$status", escape)(ex) == b"0.012|200\n"
    ex.ctx.upstream_response_time = None
    unset = b"-" if escape == "default" else b""
    assert compile_writer("$upstream_response_time|$status", escape)(ex) == unset + b"|200\n"


def test_default_escape_writes_what_nginx_writes() -> None:
    """A value with a quote, a backslash, a control byte, DEL and a non-ASCII byte: each as
    \\xHH, while the format's own quotes stay as they are."""
    ex = exchange()
    ex.ctx.raw_headers.append((b"x-v", b'a"b\\c\x1bd\x7fe\xfff'))
    line = compile_writer('"$http_x_v" "$http_x_missing"')(ex)
    assert line == b'"a\\x22b\\x5Cc\\x1Bd\\x7Fe\\xFFf" "-"\n'
