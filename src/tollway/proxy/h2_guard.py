"""HTTP/2 flood budgets: what a client may make the gateway do for next to nothing.

Each kind of cheap frame has a budget per interval (``WINDOW`` seconds); a client past it gets
GOAWAY ENHANCE_YOUR_CALM and is closed, as nginx and the h2o/Go fixes do:

* rapid reset (CVE-2023-44487): RST_STREAM from the client, each one having made us start (or
  refuse) a stream;
* SETTINGS / PING / PRIORITY / unknown frames (each SETTINGS and PING makes us write an ACK);
* empty DATA frames without END_STREAM (zero-length frames, CVE-2019-9518).

The unfinished header block is bounded by the connection (CVE-2024-27316, ``tollway.http2``:
``max_header_block`` bytes, at most 64 CONTINUATION frames).
"""

from __future__ import annotations

WINDOW = 10.0  # seconds
MAX_RESETS = 200  # client resets per window (a browser cancelling navigations stays far below)
MAX_CONTROL = 200  # SETTINGS + PING + PRIORITY + unknown frames per window
MAX_EMPTY = 200  # empty DATA frames without END_STREAM per window


class Budget:
    """Counters per interval; ``spend_*`` is False once a budget is exceeded."""

    __slots__ = ("control", "empty", "resets", "since")

    def __init__(self, now: float) -> None:
        self.since = now
        self.resets = self.control = self.empty = 0

    def _roll(self, now: float) -> None:
        if now - self.since >= WINDOW:
            self.since = now
            self.resets = self.control = self.empty = 0

    def spend_reset(self, now: float) -> bool:
        self._roll(now)
        self.resets += 1
        return self.resets <= MAX_RESETS

    def spend_control(self, now: float) -> bool:
        self._roll(now)
        self.control += 1
        return self.control <= MAX_CONTROL

    def spend_empty(self, now: float) -> bool:
        self._roll(now)
        self.empty += 1
        return self.empty <= MAX_EMPTY
