"""Admin API request bodies as plain JSON values (issue #18).

Whatever a client sends, the value handed to the resource verbs is one that every later step
(deep copies, merges, the checks, ``json.dumps`` into etcd, msgspec in the data plane) handles:

- nested at most ``MAX_DEPTH`` objects/arrays deep, the Store's limit for what it reads from
  etcd (lua-cjson, APISIX's, stops at 1000 levels; Python's recursion limit is about that, and
  copies and merges recurse twice per level): no real configuration comes near it;
- every string and key is Unicode text: a lone UTF-16 surrogate (``"\\ud800"``) is refused, as
  lua-cjson refuses it ("invalid unicode escape code"); it cannot be written as UTF-8;
- numbers are finite: ``NaN``/``Infinity`` and ``1e999`` are refused (lua-cjson reads them, but
  they are not JSON, and etcd's value would then be unreadable to the data plane's decoder);
- at most ``MAX_VALUES`` values, which a 1.5 MiB JSON body cannot reach; only YAML aliases can,
  by repeating one node (the "billion laughs").

Every refusal is a ``BodyError`` (a ValueError) whose message names the place.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import yaml

from tollway.config.values import MAX_DEPTH  # one limit: what the Store accepts from etcd

MAX_VALUES = 1_000_000
_SURROGATE = re.compile("[\ud800-\udfff]")
# (parent, key): the place of a value, rendered only when something there is refused
_Where = tuple[Any, str | int] | None


class BodyError(ValueError):
    pass


def decode_json(raw: bytes) -> Any:
    """Raises ValueError (``BodyError``, ``json.JSONDecodeError``, ``UnicodeDecodeError``)."""
    try:
        # strict=False: lua-cjson takes control characters inside strings (a proto's newlines)
        value = json.loads(raw, strict=False, parse_constant=_constant, parse_float=_float)
    except RecursionError:
        raise BodyError(_too_deep(None)) from None
    check_plain(value)
    return value


def decode_yaml(raw: bytes) -> Any:
    """Raises ValueError (``BodyError``, ``UnicodeDecodeError``) or ``yaml.YAMLError``."""
    try:
        value = yaml.safe_load(raw.decode("utf-8"))
    except RecursionError:
        raise BodyError(_too_deep(None)) from None
    check_plain(value)
    return value


def check_plain(value: Any) -> None:
    """Raises BodyError unless ``value`` is plain JSON data within the limits above. Iterative:
    it must not itself recurse on the input it guards against."""
    stack: list[tuple[Any, int, _Where]] = [(value, 0, None)]
    seen = 0
    while stack:
        item, depth, where = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise BodyError(f"more than {MAX_VALUES} values (YAML aliases expand too far)")
        if isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, dict):
            if depth >= MAX_DEPTH:
                raise BodyError(_too_deep(where))
            for key, sub in item.items():
                if isinstance(key, str):
                    _check_text(key, where, what="key")
                elif not isinstance(key, int | float | bool) and key is not None:
                    raise BodyError(f"{_place(where)}: a key of type {_type(key)} is not JSON")
                stack.append((sub, depth + 1, (where, str(key))))
        elif isinstance(item, list):
            if depth >= MAX_DEPTH:
                raise BodyError(_too_deep(where))
            stack.extend((sub, depth + 1, (where, n)) for n, sub in enumerate(item))
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise BodyError(f"{_place(where)}: {item} is not a JSON number")
        elif not isinstance(item, int) and item is not None:  # bool is an int
            raise BodyError(f"{_place(where)}: a value of type {_type(item)} is not JSON")


def _check_text(text: str, where: _Where, what: str = "string") -> None:
    if text.isascii():
        return
    found = _SURROGATE.search(text)
    if found is not None:
        code = f"\\u{ord(found.group()):04x}"
        raise BodyError(
            f"{_place(where)}: the {what} holds a lone UTF-16 surrogate ({code}), "
            "which is not Unicode text"
        )


def _constant(name: str) -> Any:
    raise BodyError(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyError(f"{text} is out of range for a number")
    return value


def _too_deep(where: _Where) -> str:
    at = f" (at {_place(where)})" if where is not None else ""
    return f"objects and arrays are nested deeper than {MAX_DEPTH} levels{at}"


def _place(where: _Where) -> str:
    """``plugins.proxy-rewrite.headers``, ``nodes[0].host``; the body itself is ``the body``."""
    parts: list[str] = []
    while where is not None:
        where, key = where
        if isinstance(key, int):
            parts.append(f"[{key}]")
        elif key.isascii() and key.isprintable() and key and "." not in key:
            parts.append(f".{key}")
        else:
            parts.append(f".{json.dumps(key)}")  # ASCII escapes: a surrogate key stays printable
    if not parts:
        return "the body"
    text = "".join(reversed(parts)).lstrip(".")
    return text if len(text) <= 80 else text[:80] + "..."


def _type(value: Any) -> str:
    return type(value).__name__
