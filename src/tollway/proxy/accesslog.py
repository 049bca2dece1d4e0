"""The access log: nginx-style format compiled once; lines buffered and written off the loop."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

_TOKEN = re.compile(r"\$([A-Za-z0-9_]+)")


class AccessLog:
    FLUSH_BYTES = 64 * 1024
    FLUSH_INTERVAL = 0.5

    def __init__(self, path: str, fmt: str, escape: str = "default") -> None:
        self.path = path
        self._parts = self._compile(fmt)
        self._json = escape == "json"
        self._buf: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._fd: int | None = None
        self._writing: asyncio.Future[Any] | None = None

    @staticmethod
    def _compile(fmt: str) -> list[str | tuple[str]]:
        parts: list[str | tuple[str]] = []
        pos = 0
        for m in _TOKEN.finditer(fmt):
            parts.append(fmt[pos : m.start()])
            parts.append((m.group(1),))
            pos = m.end()
        parts.append(fmt[pos:])
        return [p for p in parts if p != ""]

    def log(self, var: Callable[[str], Any]) -> None:
        out: list[str] = []
        json_escape = self._json
        for p in self._parts:
            if isinstance(p, tuple):
                v = var(p[0])
                if json_escape:
                    # nginx escape=json: the value as the inside of a JSON string, "" if unset
                    out.append("" if v is None else json_string(str(v)))
                else:
                    out.append("-" if v is None or v == "" else str(v))
            else:
                out.append(p)
        out.append("\n")
        line = "".join(out).encode("utf-8", "replace")
        self._buf.append(line)
        self._size += len(line)
        if self._size >= self.FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buf:
            return
        data = b"".join(self._buf)
        self._buf = []
        self._size = 0
        loop = asyncio.get_running_loop()
        # Disk writes can block; do them in the default executor, in order.
        prev = self._writing

        def write() -> None:
            if self._fd is None:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(self._fd, data)

        async def chain() -> None:
            if prev is not None:
                await prev
            await loop.run_in_executor(None, write)

        self._writing = asyncio.ensure_future(chain())

    async def aclose(self) -> None:
        self.flush()
        if self._writing is not None:
            await self._writing
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def json_string(value: str) -> str:
    """The inside of a JSON string for ``value`` (quotes, backslashes, control characters)."""
    return json.dumps(value, ensure_ascii=False)[1:-1]


def time_local(now: float | None = None) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(now))
