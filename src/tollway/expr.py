"""lua-resty-expr v1: the `vars` expression language of routes and plugin `_meta.filter`.

Invariant: a rule is compiled once (all errors surface in :func:`compile_expr`, with
lua-resty-expr's messages) and evaluating it is pure: it only calls ``var(name)``.

Semantics follow ``lib/resty/expr/v1.lua`` (apisix.md §2.4):

* A rule is an array of expressions joined by AND, or ``["AND"|"OR"|"!AND"|"!OR", e1, e2, ...]``
  with at least two operands (``rule too short`` otherwise). Nesting is allowed. ``[]`` matches
  everything. A bare ``[var, op, val]`` at the top is ``rule should be wrapped inside brackets``.
* An expression is ``[var, op, val]``, ``[var, "!", op, val]`` (negated; any other second item
  gives ``bad 'not' expression``) or ``[var, val]`` meaning ``==``. As in Lua, the 2-item form
  lowercases ``val`` (it goes through the operator slot) and turns a number into its text.
  Items after the third (fourth when negated) are ignored. Operators are case-insensitive.
* Values follow Lua: ``==`` with a JSON number on the right converts the left with ``tonumber``;
  otherwise equality is raw and typed (``"1" ~= 1``); JSON ``null`` is Lua ``nil``, so
  ``["http_x", "==", null]`` is true when the variable is absent. Lists compare by identity in
  Lua, so ``==`` between two lists is false. A number returned by ``var`` stands for nginx's
  string variable and is compared, or searched, as its decimal text.

Deviations, on purpose:

* Regexes (``~~``, ``~*``) run on RE2 (:mod:`tollway.regex`), in time linear in the input, where
  APISIX uses PCRE, which backtracks: a pattern RE2 cannot compile (lookaround, backreferences...)
  is rejected with an ExprError instead of silently never matching at request time as in APISIX.
* A rule that would raise a Lua runtime error in APISIX (a non-string operator, a regex operator
  with a ``null`` pattern) is rejected at compile time with ``invalid expression``.
"""

from __future__ import annotations

import math
import re
import socket
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

from tollway.errors import ConfigError
from tollway.regex import Regex, RegexError, compile_regex

__all__ = ["Expr", "ExprError", "IpMatcher", "compile_expr", "lua_tonumber"]

VarFn = Callable[[str], Any]
_Test = Callable[[VarFn], bool]


class ExprError(ConfigError, ValueError):
    """A rule does not compile; the message is lua-resty-expr's (e.g. ``invalid operator 'xx'``)."""


# --------------------------------------------------------------------------- Lua value helpers

# LuaJIT's lj_strscan as used by tonumber(): optional ASCII blanks around, a sign, then a decimal
# (with exponent), a hex number (with binary exponent), or inf/infinity/nan.
_LUA_SPACE = " \t\n\v\f\r"
_DEC = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?", re.ASCII)
_HEX = re.compile(
    r"([-+]?)0[xX]((?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][-+]?[0-9]+)?)", re.ASCII
)
_SPECIAL = re.compile(r"([-+]?)(inf(?:inity)?|nan)", re.ASCII | re.IGNORECASE)


def lua_tonumber(value: Any) -> float | None:
    """Lua's ``tonumber(v)``: numbers pass, strings such as ``" 10 "``, ``"0x1A"``, ``"1e3"``
    parse, anything else (bool, list, None, ``"10abc"``, ``"1_0"``) is None."""
    cls = type(value)
    if cls is float:
        return float(value)
    if cls is int:
        return float(value)
    if cls is not str:
        return None
    text = value.strip(_LUA_SPACE)
    if not text:
        return None
    if _DEC.fullmatch(text):
        return float(text)
    m = _HEX.fullmatch(text)
    if m:
        number = float.fromhex("0x" + m.group(2))
        return -number if m.group(1) == "-" else number
    m = _SPECIAL.fullmatch(text)
    if m:
        number = math.nan if m.group(2).lower() == "nan" else math.inf
        return -number if m.group(1) == "-" else number
    return None


def lua_tostring(value: Any) -> str:
    """Lua's ``tostring`` for the scalars JSON can hold (numbers use ``%.14g``)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return f"{float(value):.14g}"
    return str(value)


def _as_text(value: Any) -> str | None:
    """The string view of a variable: str as is, numbers as their text, otherwise None."""
    cls = type(value)
    if cls is str:
        return value
    if cls is int or cls is float:
        return lua_tostring(value)
    return None


def _lua_eq_to(right: Any) -> Callable[[Any], bool]:
    """A test ``left == right`` with Lua's typed equality (right is a compile-time constant)."""
    if right is None:
        return _is_none
    if isinstance(right, bool):
        return lambda left: left is right
    if isinstance(right, int | float):
        number = float(right)
        return lambda left: type(left) in (int, float) and left == number
    if isinstance(right, str):
        return lambda left: _as_text(left) == right
    # Lua tables compare by identity: a list or object from the rule equals nothing.
    return _never


def _lua_eq(left: Any, right: Any) -> bool:
    if right is None or left is None:
        return left is right
    if isinstance(right, bool) or isinstance(left, bool):
        return left is right
    if isinstance(right, int | float):
        return type(left) in (int, float) and left == right
    if isinstance(right, str):
        return _as_text(left) == right
    return left is right


def _is_none(left: Any) -> bool:
    return left is None


def _never(left: Any) -> bool:
    return False


# --------------------------------------------------------------------------- IP matching


@lru_cache(maxsize=4096)
def _parse_ip(text: str) -> tuple[int, int] | None:
    """(family bits, integer) of an IPv4 or IPv6 address (brackets allowed), or None."""
    try:
        return 32, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError):
        pass
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return 128, int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except (OSError, ValueError):
        return None


class IpMatcher:
    """lua-resty-ipmatcher: IPv4/IPv6 addresses and CIDRs; host bits of a CIDR may be non-zero
    (``127.0.0.3/24`` matches ``127.0.0.1``). Raises ValueError ``invalid ip address: <x>``."""

    __slots__ = ("_masks", "_source")

    def __init__(self, addrs: Iterable[str]) -> None:
        # family bits -> {prefix length: set of (address >> (bits - prefix length))}
        masks: dict[int, dict[int, set[int]]] = {32: {}, 128: {}}
        source: list[str] = []
        for raw in addrs:
            if not isinstance(raw, str):
                raise ValueError(f"invalid ip address: {raw}")
            addr, sep, mask_text = raw.partition("/")
            parsed = _parse_ip(addr)
            if parsed is None:
                raise ValueError(f"invalid ip address: {addr}")
            bits, number = parsed
            plen = bits
            if sep:
                if not mask_text.isdigit() or not mask_text.isascii() or int(mask_text) > bits:
                    raise ValueError(f"invalid ip address: {raw}")
                plen = int(mask_text)
            masks[bits].setdefault(plen, set()).add(number >> (bits - plen))
            source.append(raw)
        # Longest prefixes first: the common exact case is found with one set lookup.
        self._masks = {
            bits: tuple(
                (bits - plen, frozenset(nets)) for plen, nets in sorted(m.items(), reverse=True)
            )
            for bits, m in masks.items()
        }
        self._source = tuple(source)

    def match(self, ip: Any) -> bool:
        """True when ``ip`` is inside one of the networks; an invalid address is False."""
        if type(ip) is not str:
            return False
        parsed = _parse_ip(ip)
        if parsed is None:
            return False
        bits, number = parsed
        for shift, nets in self._masks[bits]:
            if (number >> shift) in nets:
                return True
        return False

    def __repr__(self) -> str:
        return f"IpMatcher({list(self._source)!r})"


# --------------------------------------------------------------------------- regexes


def _compile_regex(pattern: Any, ignore_case: bool) -> Regex:
    text = _as_text(pattern) if not isinstance(pattern, bool) else None
    if text is None:
        raise ExprError("invalid expression")
    try:
        return compile_regex(text, ignore_case=ignore_case)
    except RegexError as e:
        raise ExprError(f"failed to compile regex '{text}': {e}") from None


# --------------------------------------------------------------------------- operators


def _op_eq(name: str, right: Any) -> _Test:
    if isinstance(right, int | float) and not isinstance(right, bool):
        number = float(right)
        return lambda var: lua_tonumber(var(name)) == number
    equal = _lua_eq_to(right)
    return lambda var: equal(var(name))


def _op_ne(name: str, right: Any) -> _Test:
    if isinstance(right, int | float) and not isinstance(right, bool):
        number = float(right)
        # An unparseable left value is "not equal" (lua-resty-expr returns true).
        return lambda var: lua_tonumber(var(name)) != number
    equal = _lua_eq_to(right)
    return lambda var: not equal(var(name))


def _op_order(name: str, right: Any, compare: Callable[[float, float], bool]) -> _Test:
    number = lua_tonumber(right)
    if number is None:
        return lambda var: False

    def test(var: VarFn) -> bool:
        left = lua_tonumber(var(name))
        return left is not None and compare(left, number)

    return test


def _op_regex(name: str, right: Any, ignore_case: bool) -> _Test:
    search = _compile_regex(right, ignore_case).search

    def test(var: VarFn) -> bool:
        value = var(name)
        if type(value) is str:
            return search(value)
        text = _as_text(value)
        return text is not None and search(text)

    return test


def _op_in(name: str, right: Any) -> _Test:
    if not isinstance(right, list):
        return lambda var: False
    items = tuple(right)
    if all(isinstance(v, str) for v in items):
        members = frozenset(items)
        return lambda var: _as_text(var(name)) in members

    def test(var: VarFn) -> bool:
        left = var(name)
        return any(_lua_eq(left, v) for v in items)

    return test


def _op_has(name: str, right: Any) -> _Test:
    def test(var: VarFn) -> bool:
        left = var(name)
        if not isinstance(left, list | tuple):
            return False
        return any(_lua_eq(v, right) for v in left)

    return test


def _op_ipmatch(name: str, right: Any) -> _Test:
    if right is None or right == "":
        raise ExprError("invalid ip address")
    addrs = right if isinstance(right, list) else [right]
    if not addrs:
        raise ExprError("invalid ip address")
    try:
        matcher = IpMatcher(addrs)
    except ValueError as e:
        raise ExprError(str(e)) from None
    return lambda var: matcher.match(var(name))


_OPS: dict[str, Callable[[str, Any], _Test]] = {
    "==": _op_eq,
    "~=": _op_ne,
    ">": lambda n, r: _op_order(n, r, float.__gt__),
    ">=": lambda n, r: _op_order(n, r, float.__ge__),
    "<": lambda n, r: _op_order(n, r, float.__lt__),
    "<=": lambda n, r: _op_order(n, r, float.__le__),
    "~~": lambda n, r: _op_regex(n, r, False),
    "~*": lambda n, r: _op_regex(n, r, True),
    "in": _op_in,
    "has": _op_has,
    "ipmatch": _op_ipmatch,
}

_LOGIC_OPS = frozenset({"AND", "OR", "!AND", "!OR"})
_MISSING = object()


# --------------------------------------------------------------------------- compiler


def _operator_text(op: Any) -> str | None:
    """Lua's ``string.lower(op)``: strings and numbers only."""
    if isinstance(op, str):
        return op.lower()
    if isinstance(op, int | float) and not isinstance(op, bool):
        return lua_tostring(op)
    return None


def _compile_leaf(expr: list[Any], names: set[str]) -> _Test:
    """One ``[var, op, val]`` / ``[var, "!", op, val]`` / ``[var, val]`` expression."""
    negate = len(expr) == 4
    if negate:
        if expr[1] != "!":
            raise ExprError("bad 'not' expression")
        left, op_raw, right = expr[0], expr[2], expr[3]
    else:
        left = expr[0]
        op_raw = expr[1] if len(expr) > 1 else _MISSING
        right = expr[2] if len(expr) > 2 else _MISSING
    op = _operator_text(op_raw) if op_raw is not _MISSING else None
    if op_raw is not _MISSING and op is None:
        raise ExprError("invalid expression")
    if right is _MISSING and op not in _OPS:
        # [var, val] means ==; Lua passed val through string.lower on the way.
        if op is None:
            raise ExprError("invalid expression")
        right, op = op, "=="
    if right is _MISSING:
        right = None
    if not isinstance(left, str) or op is None:
        raise ExprError("invalid expression")
    build = _OPS.get(op)
    if build is None:
        raise ExprError(f"invalid operator '{op}'")
    names.add(left)
    test = build(left, right)
    if negate:
        return lambda var: not test(var)
    return test


def _all(tests: tuple[_Test, ...]) -> _Test:
    if len(tests) == 1:
        return tests[0]

    def test(var: VarFn) -> bool:
        for t in tests:
            if not t(var):
                return False
        return True

    return test


def _any(tests: tuple[_Test, ...]) -> _Test:
    def test(var: VarFn) -> bool:
        for t in tests:
            if t(var):
                return True
        return False

    return test


def _compile(rule: Any, names: set[str]) -> _Test:
    """lua-resty-expr's ``compile``: a list of rules, a logic node, or a leaf expression."""
    if isinstance(rule, dict) or (isinstance(rule, list) and not rule):
        raise ExprError("rule too short")
    if not isinstance(rule, list):
        raise ExprError("invalid expression")
    head = rule[0]
    if isinstance(head, list | dict):
        return _all(tuple(_compile(sub, names) for sub in rule))
    logic = head.upper() if isinstance(head, str) else None
    if logic in _LOGIC_OPS:
        if len(rule) <= 2:
            raise ExprError("rule too short")
        tests = tuple(_compile(sub, names) for sub in rule[1:])
        if logic == "AND":
            return _all(tests)
        if logic == "OR":
            return _any(tests)
        inner = _all(tests) if logic == "!AND" else _any(tests)
        return lambda var: not inner(var)
    return _compile_leaf(rule, names)


class Expr:
    """A compiled rule. ``eval(var)`` calls ``var(name)`` for each variable it needs."""

    __slots__ = ("_test", "rule", "var_names")

    def __init__(self, test: _Test | None, rule: list[Any], var_names: frozenset[str]) -> None:
        self._test = test
        self.rule = rule
        self.var_names = var_names  # every variable the rule may read (e.g. to spot uri_param_*)

    def eval(self, var: VarFn) -> bool:
        test = self._test
        return True if test is None else test(var)

    def __repr__(self) -> str:
        return f"Expr({self.rule!r})"


def compile_expr(rule: Any) -> Expr:
    """Compile a lua-resty-expr v1 rule; raises ExprError with lua-resty-expr's message."""
    if rule is None:
        raise ExprError("missing argument rule")
    if not isinstance(rule, list):
        raise ExprError("rule should be wrapped inside brackets")
    if not rule:
        return Expr(None, rule, frozenset())
    head = rule[0]
    if not isinstance(head, list | dict) and (
        not isinstance(head, str) or head.upper() not in _LOGIC_OPS
    ):
        raise ExprError("rule should be wrapped inside brackets")
    names: set[str] = set()
    test = _compile(rule, names)
    return Expr(test, rule, frozenset(names))
