"""The access log: nginx-style format compiled once (each variable to its getter: a line costs
only the values it shows); lines buffered and written off the loop."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from tollway.plugins.kit import var_getter

if TYPE_CHECKING:
    from tollway.plugins.kit import RequestContext

_TOKEN = re.compile(r"\$([A-Za-z0-9_]+)")


class Logged(Protocol):
    """What a line is made of: the exchange (``pipeline.Exchange``) and its context."""

    status: int
    resp_bytes: int
    method: str
    http_version: str

    @property
    def ctx(self) -> RequestContext | None: ...


Getter = Callable[[Logged], Any]


class AccessLog:
    FLUSH_BYTES = 64 * 1024
    FLUSH_INTERVAL = 0.5

    def __init__(self, path: str, fmt: str, escape: str = "default") -> None:
        self.path = path
        self._pieces, self._tail = compile_format(fmt)
        self._json = escape == "json"
        self._buf: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._fd: int | None = None
        self._writing: asyncio.Future[Any] | None = None

    def log(self, ex: Logged) -> None:
        """One line for the exchange ``ex`` (its ``ctx`` set)."""
        out: list[str] = []
        if self._json:
            for text, get in self._pieces:
                v = get(ex)
                # nginx escape=json: the value as the inside of a JSON string, "" if unset
                out += (text, "" if v is None else json_string(str(v)))
        else:
            for text, get in self._pieces:
                v = get(ex)
                out += (text, "-" if v is None or v == "" else str(v))
        out.append(self._tail)
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


def compile_format(fmt: str) -> tuple[list[tuple[str, Getter]], str]:
    """A format as (the text before a variable, its getter) pairs and the text after the last:
    found once, so a line costs only its values."""
    pieces: list[tuple[str, Getter]] = []
    pos = 0
    for m in _TOKEN.finditer(fmt):
        pieces.append((fmt[pos : m.start()], getter(m.group(1))))
        pos = m.end()
    return pieces, fmt[pos:] + "\n"


def getter(name: str) -> Getter:
    """The value of ``$name`` for an exchange: the exchange's own (status, bytes sent, times),
    else the request's variable (``RequestContext.var``)."""
    own = _OWN.get(name)
    if own is not None:
        return own
    get = var_getter(name)
    return lambda ex: get(ex.ctx)  # type: ignore[arg-type]


def _ctx(ex: Logged) -> RequestContext:
    ctx = ex.ctx
    assert ctx is not None
    return ctx


_local: list[Any] = [None, ""]  # (the second, its $time_local): formatted once a second


def time_local(now: float | None = None) -> str:
    if now is None:
        return time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime())
    second = int(now)
    if _local[0] != second:
        _local[1] = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(second))
        _local[0] = second
    text: str = _local[1]
    return text


_OWN: dict[str, Getter] = {
    "status": lambda ex: ex.status,
    "body_bytes_sent": lambda ex: ex.resp_bytes,
    "request_time": lambda ex: f"{time.time() - _ctx(ex).start_time:.3f}",
    "time_local": lambda ex: time_local(_ctx(ex).start_time),
    "request": lambda ex: f"{ex.method} {_ctx(ex).request_uri} HTTP/{ex.http_version}",
    "remote_user": lambda ex: None,
    "upstream_scheme": lambda ex: "http",
    "upstream_host": lambda ex: _ctx(ex).up_host or _ctx(ex).host,
    "upstream_response_time": lambda ex: None,
}
