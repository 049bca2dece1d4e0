"""A logger that says the same thing at most once per interval: for what a bad config item or an
unreachable log server repeats on every change or every request (APISIX: once per 30 s)."""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """The same message at most once per ``interval`` seconds (APISIX: 30 s)."""

    def __init__(self, logger: logging.Logger, interval: float = 30.0) -> None:
        self._log = logger
        self._interval = interval
        self._last: dict[str, float] = {}

    def __call__(self, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        key = msg % args if args else msg
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            return
        if len(self._last) > 4096:
            self._last.clear()
        self._last[key] = now
        self._log.log(level, msg, *args)
