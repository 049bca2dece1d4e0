"""limit-count's windows as pure steps: a fixed window (resty.limit.count) and a sliding one
(APISIX ``sliding-window.lua``), over the shared table's records or Redis replies.

The reset header is in whole seconds, rounded up, for every policy and window type.
"""

from __future__ import annotations

import math

from tollway.plugins.kit_counters import Record, SharedTable


def count_step(
    rec: Record | None, now: float, limit: float, window: float
) -> tuple[Record, tuple[bool, int, int]]:
    """A shared-table step: take one from the key's budget (resty.limit.count's ``incr(key, -1,
    limit, window)``). Result: (allowed, remaining, whole seconds until the window resets)."""
    if rec is None:
        expire, used = now + window, 1.0
    else:
        expire, used = rec[0], rec[1] + 1.0
    remaining = int(limit - used)
    shown = remaining if remaining > 0 else 0
    return (expire, used, 0.0), (remaining >= 0, shown, whole(expire - now))


def whole(seconds: float) -> int:
    """Seconds as the reset header shows them: whole, rounded up (never 0 while time is left)."""
    n = int(seconds)
    return n + 1 if seconds - n > 1e-6 else n


def sliding_keys(key: str, now: float, window: int) -> tuple[str, str, float]:
    """The current and the previous window's counter keys (windows are numbered by wall-clock
    time, so every instance agrees on them) and the seconds left in the current window."""
    wid = int(now // window)
    return f"{key}.{wid}.counter", f"{key}.{wid - 1}.counter", window - now % window


def sliding_answer(
    admitted: bool, count: int, previous: int, limit: int, window: int, remaining_time: float
) -> tuple[bool, int, int]:
    """(allowed, remaining, reset) from a sliding-window step. The previous window's count
    (at most ``limit``) is taken as spread evenly over it: its share still in the sliding
    window is ``previous * remaining_time / window``. A rejected request is told when enough
    of that share will have slid out (APISIX ``get_desired_delay``)."""
    rate = min(previous, limit) / window
    if admitted:
        remaining = math.floor(limit - count - rate * remaining_time)
        return True, remaining if remaining > 0 else 0, whole(remaining_time)
    if count >= limit or rate == 0:
        return False, 0, whole(remaining_time)
    delay = remaining_time - (limit - count) / rate
    return False, 0, whole(delay) if delay > 0 else 0


def sliding_step(
    rec: Record | None, now: float, threshold: float, expiry: float
) -> tuple[Record | None, tuple[bool, int]]:
    """A shared-table step on the current window's counter: count one request unless the count
    has reached ``threshold`` (the limit less the previous window's share)."""
    count = rec[1] if rec is not None else 0.0
    if count >= threshold:
        return rec, (False, int(count))
    expire = rec[0] if rec is not None else now + expiry
    return (expire, count + 1.0, 0.0), (True, int(count) + 1)


def peek_step(rec: Record | None, now: float, p: float, q: float) -> tuple[Record | None, float]:
    return rec, rec[1] if rec is not None else 0.0


def sliding_local(
    table: SharedTable, key: str, limit: int, window: int, now: float
) -> tuple[bool, int, int]:
    """The local policy's sliding window at wall-clock time ``now`` (APISIX's shared-dict store:
    the previous window is read, then the current one is checked and counted atomically)."""
    current, previous, remaining_time = sliding_keys(key, now, window)
    prev = int(table.update(previous, peek_step))
    share = min(prev, limit) / window * remaining_time
    admitted, count = table.update(current, sliding_step, limit - share, 2.0 * window)
    return sliding_answer(admitted, count, prev, limit, window, remaining_time)
