"""Raw config bytes to Python values, for any byte sequence etcd can hold in a key or a value.

Invariants: ``key_problem`` and ``decode_value`` never raise anything but ``ValueError`` (with a
reason fit for the log); a value they accept is a JSON object whose strings all encode as UTF-8
and whose nesting stays within ``MAX_DEPTH``, so every later step (schema check, msgpack to the
workers, JSON for the Admin and control APIs, the disk snapshot) can handle it without a
RecursionError or a UnicodeEncodeError.

Keys come from the etcd client as ``str`` decoded with ``surrogateescape`` (lossless: any bytes
round-trip), so a key that is not UTF-8 holds lone surrogates here.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "MAX_DEPTH",
    "check_tree",
    "decode_value",
    "is_placeholder",
    "key_problem",
    "printable_key",
]

# lua-cjson (APISIX) refuses JSON nested deeper than 1000 levels; Python's default recursion
# limit is 1000 frames in total, and a schema check or an encoder spends several frames per
# level, so Tollway stops far earlier. Real configs (vars expressions included) stay under 20.
MAX_DEPTH = 64

# Values that mean "no item here" without being an error: APISIX 2.x wrote "init_dir" as a
# directory placeholder (init_etcd.lua).
_PLACEHOLDERS = (b"init_dir",)

_decoder = msgspec.json.Decoder()
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot name an item, or None. Cheap for the common (ASCII) key."""
    if key.isascii():
        return None
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "key is not valid UTF-8"
    return None


def printable_key(key: str) -> str:
    """``key`` for a log line or a JSON answer: bytes that are not UTF-8 shown as ``\\xNN``."""
    if key_problem(key) is None:
        return key
    return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_placeholder(raw: bytes) -> bool:
    return raw.strip() in _PLACEHOLDERS


def decode_value(raw: bytes) -> dict[str, Any]:
    """The JSON object in ``raw``. Raises ValueError saying what is wrong with it."""
    try:
        value = _decoder.decode(raw)
    except msgspec.DecodeError:
        # Only then is it worth a copy of the bytes (strip) to tell an empty value apart.
        if not raw.strip():
            raise ValueError("empty value") from None
        # msgspec also refuses bytes that are not UTF-8 and lone surrogate escapes ("\ud800"),
        # which could never be encoded again.
        raise ValueError("invalid JSON") from None
    except RecursionError:
        raise ValueError(f"invalid JSON: nested deeper than {MAX_DEPTH} levels") from None
    if not isinstance(value, dict):
        raise ValueError("invalid item data, it should be an object")
    # msgspec refused lone surrogates and invalid UTF-8 above: only the depth is left to check.
    if _too_deep(raw):
        raise ValueError(f"invalid JSON: nested deeper than {MAX_DEPTH} levels")
    return value


def check_tree(value: Any) -> str | None:
    """What makes ``value`` (from ``json.loads``, say) unsafe to re-encode: nesting deeper than
    ``MAX_DEPTH``, a string that is not UTF-8 (a lone surrogate escape). None if it is fine.
    Iterative, so a value nested beyond the recursion limit is measured without hitting it."""
    if _unencodable(value):
        return "a string is not valid UTF-8"
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.items()
        elif isinstance(node, list):
            children = ((None, v) for v in node)
        else:
            continue
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        for k, v in children:
            if _unencodable(k) or _unencodable(v):
                return "a string is not valid UTF-8"
            if isinstance(v, (dict, list)):
                stack.append((v, depth + 1))
    return None


def _too_deep(raw: bytes) -> bool:
    """Whether the valid JSON in ``raw`` nests deeper than ``MAX_DEPTH``, from its bytes alone
    (the decoded value would cost a Python-level walk). Every step runs in C."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False  # the common case: too few brackets to be that deep
    text = raw
    if b"\\" in text:  # escapes go first: an escaped quote does not end a string
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Keep brackets and quotes. Quotes now alternate open/close, so removing adjacent pairs
    # drops empty strings, or merges two strings with nothing kept between them: either way
    # only string content is ever inside a pair. What remains inside quotes is dropped next.
    text = text.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in text:
        text = b"".join(text.split(b'"')[::2])
    for _ in range(MAX_DEPTH):
        if not text:
            return False
        # One pass strips exactly the innermost level: marked first, so a pair that becomes
        # empty in this pass waits for the next one.
        text = text.replace(b"[]", b"x").replace(b"{}", b"x").replace(b"x", b"")
    return bool(text)


def _unencodable(s: Any) -> bool:
    return isinstance(s, str) and not s.isascii() and key_problem(s) is not None
