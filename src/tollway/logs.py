"""Logging set-up: one logger per subsystem, to stderr, with the process id."""

from __future__ import annotations

import logging
import os
from typing import Any

from tollway.settings import LoadedSettings

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "crit": logging.CRITICAL,
}


def setup_logging(settings: LoadedSettings | None = None) -> None:
    level_name = os.environ.get("TOLLWAY_LOG_LEVEL") or (
        settings.conf.nginx_config.error_log_level if settings else "warn"
    )
    level = _LEVELS.get(level_name.lower(), logging.INFO)
    logging.basicConfig(
        level=level,
        format="%(asctime)s [%(levelname)s] %(process)d %(name)s: %(message)s",
        force=True,
    )


class HttpServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger for Tollway's own listeners (Admin, control, status, metrics).

    aiohttp logs a request it cannot parse (raw bytes in the path, a bad header, an oversized
    line, chunked framing or a gzip body that does not decode) at ERROR with a traceback, and
    answers it 400 itself: that is the client's mistake, which nginx logs at info ("client sent
    invalid request"). So do we, in one line; a failure in a handler keeps its traceback."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        # imported here: the workers use this module and never need aiohttp
        from aiohttp.http_exceptions import HttpProcessingError
        from aiohttp.web_protocol import RequestPayloadError

        if isinstance(exc_info, HttpProcessingError | RequestPayloadError):
            what = str(msg) % args if args else str(msg)
            detail = " ".join(str(exc_info).split())
            self.logger.info("%s: the client sent an invalid request: %s", what, detail)
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kw)


def http_server_log() -> HttpServerLog:
    """``web.AppRunner(app, logger=http_server_log())``."""
    return HttpServerLog(logging.getLogger("aiohttp.server"), {})
