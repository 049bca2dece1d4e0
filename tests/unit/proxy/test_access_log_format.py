"""The access log's format compiled once into (text, getter) pieces: each line is what nginx's
log_format makes of the exchange, plain or escape=json."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from tollway.plugins.kit import RequestContext, var_getter
from tollway.proxy.accesslog import AccessLog, compile_format, time_local
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


def test_pieces_split_the_text_around_variables() -> None:
    pieces, tail = compile_format("[$status] $body_bytes_sent bytes")
    assert [text for text, _ in pieces] == ["[", "] "]
    assert tail == " bytes\n"
    assert [get(exchange()) for _, get in pieces] == [200, 12]
    assert compile_format("no variables") == ([], "no variables\n")


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
