"""Polling with a deadline: the one way tests wait for a condition no event signals (never a
bare ``sleep`` as synchronisation)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``pred`` until it returns a truthy value, and return that value. A ``pred`` that
    raises is retried; after ``timeout`` seconds, AssertionError with the last value or error."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Exception as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


async def until(pred: Callable[[], object], timeout: float = 10.0, interval: float = 0.01) -> None:
    """``wait_until`` inside an event loop (the loop keeps running between polls)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
