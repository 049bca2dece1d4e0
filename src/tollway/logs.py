"""Logging set-up: the error log of ``config.yaml``, one logger per subsystem, the process id.

As nginx/APISIX: ``nginx_config.error_log`` (default ``logs/error.log``, relative to the
directory above ``conf/``) at ``nginx_config.error_log_level`` (nginx's names: debug, info,
notice, warn, error, crit). ``stderr`` or ``/dev/stderr`` keeps the log on standard error (for
containers); a file that cannot be opened falls back to it with a warning. The file is written
by a thread (``QueueListener``), so a slow disk never stalls an event loop, and reopened when
moved (log rotation), as ``nginx -s reopen`` does. ``TOLLWAY_LOG_LEVEL`` overrides the level.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
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
    "alert": logging.CRITICAL,
    "emerg": logging.CRITICAL,
}
FORMAT = "%(asctime)s [%(levelname)s] %(process)d %(name)s: %(message)s"
_STDERR = ("stderr", "/dev/stderr")
_listener: logging.handlers.QueueListener | None = None


def setup_logging(settings: LoadedSettings | None = None) -> None:
    global _listener
    nginx = settings.conf.nginx_config if settings else None
    level_name = os.environ.get("TOLLWAY_LOG_LEVEL") or (nginx.error_log_level if nginx else "warn")
    level = _LEVELS.get(level_name.lower(), logging.INFO)
    if _listener is not None:
        _listener.stop()
        _listener = None
    logging.basicConfig(level=level, format=FORMAT, force=True)  # stderr
    target = nginx.error_log if nginx is not None else "stderr"
    if settings is None or target in _STDERR:
        return
    path = settings.resolve(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    except OSError as e:
        logging.getLogger("tollway").warning("cannot open the error log %s (%s): stderr", path, e)
        return
    handler.setFormatter(logging.Formatter(FORMAT))
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(logging.handlers.QueueHandler(q))
    _listener = logging.handlers.QueueListener(q, handler)
    _listener.start()
    atexit.register(_stop)


def _stop() -> None:
    global _listener
    if _listener is not None:
        _listener.stop()  # writes what is queued
        _listener = None


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
