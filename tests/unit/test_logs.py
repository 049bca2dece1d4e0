"""The aiohttp server logger of Tollway's own listeners: a malformed request is one info line,
a handler's failure keeps its traceback (issue #18)."""

from __future__ import annotations

import logging

import pytest
from aiohttp.http_exceptions import InvalidURLError
from aiohttp.web_protocol import RequestPayloadError

from tollway.logs import http_server_log


def test_a_client_mistake_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    log = http_server_log()
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    exc = InvalidURLError("Invalid char in url path:\n\n  b'GET /\\xff'")
    log.exception("Error handling request from %s", "127.0.0.1", exc_info=exc)
    log.exception("Unhandled exception", exc_info=RequestPayloadError("bad gzip"))
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.INFO]
    assert all(r.exc_info is None for r in caplog.records)
    first = caplog.records[0].getMessage()
    assert first.startswith("Error handling request from 127.0.0.1: the client sent an invalid")
    assert "\n" not in first and "Invalid char in url path" in first
    assert "bad gzip" in caplog.records[1].getMessage()


def test_a_handler_failure_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    log = http_server_log()
    try:
        raise KeyError("bug")
    except KeyError as e:
        log.exception("Error handling request from %s", "127.0.0.1", exc_info=e)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "Traceback" in caplog.text
