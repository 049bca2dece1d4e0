"""The access log: nginx-style format compiled once, to one generated function of the exchange
(``compile_writer``: a line costs only the values it shows, read inline); lines buffered and
written off the loop."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from json.encoder import encode_basestring
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
        self._line = compile_writer(fmt, escape)
        self._buf: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._fd: int | None = None
        self._writing: asyncio.Future[Any] | None = None

    def log(self, ex: Logged) -> None:
        """One line for the exchange ``ex`` (its ``ctx`` set)."""
        line = self._line(ex)
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
    """The inside of a JSON string for ``value`` (quotes, backslashes, control characters):
    ``json.dumps(value, ensure_ascii=False)``'s, without building an encoder per call."""
    inside: str = encode_basestring(value)[1:-1]
    return inside


def escape_default(value: str) -> str:
    """A value as nginx's ``escape=default`` writes it: ``"``, ``\\`` and bytes below 0x20 or
    above 0x7E as ``\\xHH`` (uppercase hex). Characters past latin-1 (not from the wire) are
    escaped as their UTF-8 bytes."""
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "replace")
    return raw.decode("latin-1").translate(_ESCAPES)


_ESCAPES = {b: f"\\x{b:02X}" for b in (*range(0x20), 0x22, 0x5C, *range(0x7F, 0x100))}
_SAFE = bytes(b for b in range(0x20, 0x7F) if b not in _ESCAPES)


def split_format(fmt: str, escape: str | None = None) -> tuple[list[tuple[str, str]], str]:
    """A format as (the text before a variable, its name) pairs and the text after the last
    (with the newline). With ``escape`` ("default" or "json"), the variables whose value never
    changes are written into the text, as that escape writes them."""
    pairs: list[tuple[str, str]] = []
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
        pairs.append((text, name))
        text = ""
    return pairs, text + fmt[pos:] + "\n"


def _getter_of(name: str) -> tuple[Callable[[Any], Any], bool]:
    own = _OWN.get(name)
    if own is not None:
        return own, False
    return _OWN_CTX.get(name) or var_getter(name), True


def compile_writer(fmt: str, escape: str = "default") -> Callable[[Logged], bytes]:
    """A format as one function of the exchange that returns its line's bytes, generated once
    (as ``dataclasses`` makes ``__init__``): a line is one call that reads each value inline
    and joins them, not a loop with a getter call per value (callgrind: that loop and its calls
    were most of a line's cost). The source holds only ``_INLINE``'s expressions and names made
    here: the format's text, header names and other getters are passed in as constants."""
    pairs, tail = split_format(fmt, escape)
    consts: dict[str, Any] = {"_join": "".join, "_now": time.time, "_local": _local,
                              "_time_local": time_local, "_enc": encode_basestring}  # fmt: skip
    body = ["c = ex.ctx"]
    parts: list[str] = []
    for i, (text, name) in enumerate(pairs):
        if text:
            consts[f"_t{i}"] = text
            parts.append(f"_t{i}")
        expr, kind = _value_source(i, name, consts)
        body += _value_lines(f"v{i}", expr, kind, escape == "json")
        parts.append(f"v{i}")
    consts["_tail"] = tail
    wanted = frozenset(n for _, name in pairs if _is_header(name) for n in _header_names(name))
    if wanted:
        consts["_wanted"] = frozenset(n.encode() for n in wanted)
        body[1:1] = _HEADERS
    joined = f"line = _join(({''.join(f'{p}, ' for p in parts)}_tail))"
    body.append(joined)
    # The bytes as the client sent them (values are latin-1 decoded, as nginx writes them),
    # else UTF-8 for characters past latin-1 (a plugin's values, the format's text).
    encode = [
        "try:",
        '    data = line.encode("latin-1")',
        "except UnicodeEncodeError:",
        '    data = line.encode("utf-8", "replace")',
    ]
    body += encode
    values = [p for p in parts if p.startswith("v")]
    if escape != "json" and values:
        # nginx's default escape (``\\xHH`` for ", \\ and bytes outside 0x20-0x7E), applied
        # to the values only when the line holds such a byte beyond the format's own: one C
        # pass over the common line (``bytes.translate`` deleting the safe bytes, ~0.2 us).
        consts["_safe"] = _SAFE
        consts["_esc"] = escape_default
        try:
            consts["_own"] = (
                ("".join(t for t, _ in pairs) + tail).encode("latin-1").translate(None, _SAFE)
            )
        except UnicodeEncodeError:
            consts["_own"] = None  # (a format past latin-1: its lines take the escape path)
        body += [
            "if data.translate(None, _safe) != _own:",
            *(f"    {v} = _esc({v})" for v in values),
            f"    {joined}",
            *(f"    {stmt}" for stmt in encode),
        ]
    body.append("return data")
    src = "def line(ex):\n" + "".join(f"    {stmt}\n" for stmt in body)
    exec(compile(src, "<access log format>", "exec"), consts)  # (the source: see the docstring)
    made: Callable[[Logged], bytes] = consts["line"]
    return made


def _value_source(i: int, name: str, consts: dict[str, Any]) -> tuple[str, str]:
    """The source of variable ``i``'s value (``name``) and its kind: ``_INLINE``'s, a header
    read from ``h``, else a call of the getter passed in as ``_g<i>``."""
    known = _INLINE.get(name)
    if known is not None:
        return known
    if _is_header(name):
        # As ``var_getter``'s: the dashed name, else the underscored one (names found once).
        key = name[5:]
        dashed = key.replace("_", "-")
        consts[f"_k{i}"] = key
        if dashed == key:
            return f"h.get(_k{i})", _OPT
        consts[f"_d{i}"] = dashed
        return f"(h[_d{i}] if _d{i} in h else h.get(_k{i}))", _OPT
    get, of_ctx = _getter_of(name)
    consts[f"_g{i}"] = get
    return (f"_g{i}(c)" if of_ctx else f"_g{i}(ex)"), _ANY


def _is_header(name: str) -> bool:
    return name.startswith("http_") and name not in _INLINE


def _header_names(name: str) -> tuple[str, ...]:
    key = name[5:]
    return (key, key.replace("_", "-"))


# ``h``: the request's headers as ``RequestContext.headers`` has them, but while no one decoded
# them all and no plugin edited them (``header_by``'s test), only the fields the format names,
# found in one pass over the client's fields (no property call, no other field decoded).
_HEADERS = [
    "h = c._headers",
    "if h is None and c.up_header_ops is None:",
    "    h = {}",
    "    for k, val in c.raw_headers:",
    "        k = k.lower()",
    "        if k in _wanted:",
    '            k = k.decode("latin-1")',
    '            val = val.decode("latin-1")',
    '            h[k] = f"{h[k]}, {val}" if k in h else val',
    "elif h is None:",
    "    h = c.headers",
]


# The kinds of a value, for the statements that write it: an int, a str or None, anything.
_INT, _OPT, _ANY = "int", "opt", "any"


def _value_lines(v: str, expr: str, kind: str, json_escape: bool) -> list[str]:
    """Statements that set ``v`` to a value's text as the escape writes it: unset (None) and
    empty values as "-" (default) or "" (json); json's as the inside of a JSON string."""
    if kind == _INT:  # (digits: nothing to escape)
        return [f"{v} = str({expr})"]
    if json_escape:
        return [
            f"{v} = {expr}",
            f'{v} = "" if {v} is None else _enc({v} if type({v}) is str else str({v}))[1:-1]',
        ]
    if kind == _OPT:  # (None and "" both falsy: both "-")
        return [f'{v} = ({expr}) or "-"']
    return [
        f"{v} = {expr}",
        f'if {v} is None or {v} == "":',
        f'    {v} = "-"',
        f"elif type({v}) is not str:",
        f"    {v} = str({v})",
    ]


def _ctx(ex: Logged) -> RequestContext:
    ctx = ex.ctx
    assert ctx is not None
    return ctx


# The second $time_local was last formatted for, the next one, and its text: formatted once a
# second, the check two float comparisons (no ``int()`` call per line).
_local: list[Any] = [0.0, 0.0, ""]


def time_local(now: float | None = None) -> str:
    if now is None:
        return time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime())
    if not _local[0] <= now < _local[1]:
        second = int(now)
        _local[2] = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(second))
        _local[0], _local[1] = float(second), float(second + 1)
    text: str = _local[2]
    return text


# The variables the access log takes from the exchange, and those it reads from the context
# in its own way (not ``RequestContext.var``'s).
_OWN: dict[str, Getter] = {
    "status": lambda ex: ex.status,
    "body_bytes_sent": lambda ex: ex.resp_bytes,
    "request": lambda ex: f"{ex.method} {_ctx(ex).request_uri} HTTP/{ex.http_version}",
    "remote_user": lambda ex: None,
    "upstream_scheme": lambda ex: "http",
}
_CONSTANT: dict[str, str | None] = {  # (their _OWN getters' values)
    "remote_user": None,
    "upstream_scheme": "http",
}
_OWN_CTX: dict[str, Callable[[RequestContext], Any]] = {
    "request_time": lambda c: f"{time.time() - c.start_time:.3f}",
    "time_local": lambda c: time_local(c.start_time),
    "upstream_host": lambda c: c.up_host or c.host,
}
# The values ``compile_writer`` reads inline (``ex`` the exchange, ``c`` its context), as the
# getters above and ``kit.var_getter``'s give them (a unit test compares the two), and their
# kinds (``_OPT``: a str or None, so ``or "-"`` writes it as the plain escape does).
_INLINE: dict[str, tuple[str, str]] = {
    "status": ("ex.status", _INT),
    "body_bytes_sent": ("ex.resp_bytes", _INT),
    "request": ('f"{ex.method} {c.request_uri} HTTP/{ex.http_version}"', _OPT),
    "request_time": ('f"{_now() - c.start_time:.3f}"', _OPT),
    "time_local": (
        "_local[2] if _local[0] <= c.start_time < _local[1] else _time_local(c.start_time)",
        _OPT,
    ),
    "upstream_host": ("c.up_host or c.host", _OPT),
    "remote_addr": ("c.remote_addr", _OPT),
    "host": ("c.host", _OPT),
    "request_uri": ("c.request_uri", _OPT),
    "uri": ("c.path", _OPT),
    "request_method": ("c.method", _OPT),
    "scheme": ("c.scheme", _OPT),
    "upstream_addr": ("c.upstream_addr", _OPT),
    "upstream_status": ("c.upstream_status", _OPT),
    "upstream_uri": ("c.up_uri or c.request_uri", _OPT),
    "upstream_response_time": (
        'None if c.upstream_response_time is None else f"{c.upstream_response_time:.3f}"',
        _OPT,
    ),
}
