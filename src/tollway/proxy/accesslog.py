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
        self._pieces, self._tail = compile_line(fmt, escape)
        self._json = escape == "json"
        self._buf: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._fd: int | None = None
        self._writing: asyncio.Future[Any] | None = None

    def log(self, ex: Logged) -> None:
        """One line for the exchange ``ex`` (its ``ctx`` set)."""
        out: list[str] = []
        ctx = ex.ctx
        if self._json:
            for text, get, of_ctx in self._pieces:
                v = get(ctx) if of_ctx else get(ex)
                # nginx escape=json: the value as the inside of a JSON string, "" if unset
                out += (text, "" if v is None else json_string(str(v)))
        else:
            for text, get, of_ctx in self._pieces:
                v = get(ctx) if of_ctx else get(ex)
                if v is None or v == "":
                    v = "-"
                elif type(v) is not str:
                    v = str(v)
                out += (text, v)
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


Piece = tuple[str, Callable[[Any], Any], bool]


def compile_line(fmt: str, escape: str | None = None) -> tuple[list[Piece], str]:
    """A format as (the text before a variable, its getter, whether the getter reads the
    request's context rather than the exchange) and the text after the last: found once, so a
    line costs only its values, each one call (no wrapper that fetches the context first).
    With ``escape`` ("default" or "json"), the variables whose value never changes are written
    into the text, as that escape writes them."""
    pieces: list[Piece] = []
    pos = 0
    text = ""
    for m in _TOKEN.finditer(fmt):
        name = m.group(1)
        text += fmt[pos : m.start()]
        pos = m.end()
        if escape is not None and name in _CONSTANT:
            v = _CONSTANT[name]
            if escape == "json":
                text += "" if v is None else json_string(v)
            else:
                text += v or "-"
            continue
        own = _OWN.get(name)
        if own is not None:
            pieces.append((text, own, False))
        else:
            pieces.append((text, _OWN_CTX.get(name) or var_getter(name), True))
        text = ""
    return pieces, text + fmt[pos:] + "\n"


def compile_format(fmt: str) -> tuple[list[tuple[str, Getter]], str]:
    """``compile_line``'s pieces as (text, the value's getter for an exchange) pairs."""
    pieces, tail = compile_line(fmt)
    return [(text, _of_ex(get) if of_ctx else get) for text, get, of_ctx in pieces], tail


def getter(name: str) -> Getter:
    """The value of ``$name`` for an exchange: the exchange's own (status, bytes sent, times),
    else the request's variable (``RequestContext.var``)."""
    own = _OWN.get(name)
    if own is not None:
        return own
    return _of_ex(_OWN_CTX.get(name) or var_getter(name))


def _of_ex(get: Callable[[RequestContext], Any]) -> Getter:
    return lambda ex: get(_ctx(ex))


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


# The variables the access log takes from the exchange, and those it reads from the context
# in its own way (not ``RequestContext.var``'s).
_OWN: dict[str, Getter] = {
    "status": lambda ex: ex.status,
    "body_bytes_sent": lambda ex: ex.resp_bytes,
    "request": lambda ex: f"{ex.method} {_ctx(ex).request_uri} HTTP/{ex.http_version}",
    "remote_user": lambda ex: None,
    "upstream_scheme": lambda ex: "http",
    "upstream_response_time": lambda ex: None,
}
_CONSTANT: dict[str, str | None] = {  # (their _OWN getters' values)
    "remote_user": None,
    "upstream_scheme": "http",
    "upstream_response_time": None,
}
_OWN_CTX: dict[str, Callable[[RequestContext], Any]] = {
    "request_time": lambda c: f"{time.time() - c.start_time:.3f}",
    "time_local": lambda c: time_local(c.start_time),
    "upstream_host": lambda c: c.up_host or c.host,
}
