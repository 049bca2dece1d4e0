"""What the HTTP/1.1 connection learns once per token: request methods and the header names it
notes while parsing (Host, framing, Upgrade, Expect, Connection, the realip header).

The tables are per process and bounded; the parser reads them with one dict lookup per name.
"""

from __future__ import annotations

# CONNECT maps to "": a forward-proxy tunnel is refused (405), as nginx does since 1.21.1.
_METHODS: dict[bytes, str] = {b"CONNECT": ""}


def method_of(raw: bytes) -> str:
    """The method as text, learned per token (bounded)."""
    m = _METHODS.get(raw)
    if m is None:
        m = raw.decode("ascii", "replace")
        if len(_METHODS) < 64:  # the usual few; an odd token is decoded each time
            _METHODS[raw] = m
    return m


# Request header name (as sent) -> what the parser notes about it. Learned per spelling, bounded:
# a field the parser notes nothing about (most) costs one set lookup (``_PLAIN``), not a lower()
# and six compares; a noted one a dict lookup (``_KINDS``).
_HOST, _CONTENT_LENGTH, _TRANSFER_ENCODING, _UPGRADE, _EXPECT, _CONNECTION, _REAL_IP = range(1, 8)
_NOTED = {
    b"host": _HOST,
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"upgrade": _UPGRADE,
    b"expect": _EXPECT,
    b"connection": _CONNECTION,
}
_KINDS: dict[bytes, int] = {}  # spellings of noted names
_PLAIN: set[bytes] = set()  # spellings of the others
_LEARNED = 4096  # spellings remembered (both tables); an odd one beyond is lowercased each time
_real_ip_name = [b""]  # the one realip header of this worker (lowercase)


def real_ip_header() -> bytes:
    return _real_ip_name[0]


def use_real_ip_header(name: bytes) -> None:
    """Note ``name`` (lowercase) as the header naming the client (realip); a worker has one."""
    for key in [k for k, v in _NOTED.items() if v == _REAL_IP]:
        del _NOTED[key]
    if name not in _NOTED:
        _NOTED[name] = _REAL_IP
    _KINDS.clear()
    _PLAIN.clear()
    _real_ip_name[0] = name


def kind_of(name: bytes) -> int:
    """What the parser notes about a header name, 0: nothing (learned per spelling, bounded)."""
    kind = _NOTED.get(name.lower(), 0)
    if len(_KINDS) + len(_PLAIN) < _LEARNED:
        if kind:
            _KINDS[name] = kind
        else:
            _PLAIN.add(name)
    return kind


class ParseLimit(Exception):
    """The request cannot be read on: answer ``status`` and close."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status
