"""Route paths: how one ``uri`` of a route is stored and checked (lua-resty-radixtree rules).

Invariant: a pattern is either *exact* (stored in a hash) or a *prefix* (stored in the prefix
tree); a prefix pattern may carry a :class:`Capture`, which checks the whole request path and
returns the uri parameters. ``stored`` is always a literal prefix of every path it accepts.

Rules (apisix.md §2.2, ``common_route_data`` and ``fetch_pat`` in radixtree.lua):

* With parameters enabled (radixtree_uri_with_parameter) a path containing ``:`` is a prefix
  pattern stored up to its first ``:``. Otherwise a path containing ``*`` is a prefix pattern
  stored up to its first ``*``. Any other path is exact (``:name`` is then literal).
* A prefix pattern is split on ``/``; a segment starting with ``:`` matches one non-empty segment
  ``[^/]+``, a segment starting with ``*`` matches the rest, ``/`` included and possibly empty
  (a bare ``*`` is named ``:ext``). Other segments are literal. Without such segments there is
  no further check, so ``/foo*`` accepts every path that starts with ``/foo`` and ``/a*b/c`` every
  path that starts with ``/a`` (radixtree behaves the same). As in radixtree this splitting
  happens in every router kind, so ``/a/*/:id`` captures ``id`` in radixtree_uri too.
* The check is a full match of the request path (radixtree: PCRE match, then ``m[0] == path``);
  a trailing ``/`` in the pattern must be present in the request. With two or more ``*name``
  segments it runs on RE2 (:mod:`tollway.regex`): a backtracking engine takes polynomial time in
  the path's length there (``/*a/x/*b/x/*c/end`` against a long hostile path). With at most one,
  Python's ``re`` is linear (every other token ends at a ``/``, so each split of the one ``(.*)``
  costs at most the few segments after it) and a call costs a third of one into RE2.

Deviations: literal segments are escaped (radixtree pastes them into the PCRE pattern, so ``.``
after a parameter matches any character and ``(`` shifts the capture groups), and a ``*name``
segment is one capture group (radixtree's ``((.|\\n)*)`` is two, which misnames any parameter that
follows it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import NamedTuple

from tollway.regex import compile_regex, escape

__all__ = ["Capture", "UriPattern", "parse_uri"]

_SEGMENT = "([^/]+)"
_REST = "(.*)"


_Matcher = Callable[[str, int], Sequence[str] | None]  # (path, start) -> the groups or None


def _matcher(source: str) -> _Matcher:
    """A full match of ``path[start:]``; ``(.*)`` takes newlines too (radixtree's ``(.|\\n)*``)."""
    if source.count(_REST) > 1:
        return compile_regex(source + r"\z", options="sa").match_groups
    match = re.compile(source + r"\Z", re.DOTALL).match  # linear here: see the module docstring

    def groups(path: str, start: int) -> Sequence[str] | None:
        m = match(path, start)
        return None if m is None else m.groups()

    return groups


class Capture:
    """Full-path check of a prefix pattern with named segments; returns the parameters."""

    __slots__ = ("_compiled", "names", "rest_name", "source", "start")

    def __init__(self, source: str, start: int, names: tuple[str, ...], rest_name: str | None):
        self.source = source  # regex for path[start:]
        self.start = start
        self.names = names
        self.rest_name = rest_name  # set when the regex is just "(.*)": no regex needed
        self._compiled: _Matcher | None = None

    def match(self, path: str) -> dict[str, str] | None:
        if self.rest_name is not None:
            return {self.rest_name: path[self.start :]}
        compiled = self._compiled
        if compiled is None:
            # Compiled on first use: a full build of 100k routes compiles nothing.
            compiled = self._compiled = _matcher(self.source)
        groups = compiled(path, self.start)
        if groups is None:
            return None
        return dict(zip(self.names, groups, strict=True))

    def compile(self) -> None:
        """Compile now (config validation wants errors early; escaping makes them impossible)."""
        if self.rest_name is None and self._compiled is None:
            self._compiled = _matcher(self.source)


class UriPattern(NamedTuple):
    """A uri as stored: a NamedTuple, not a frozen dataclass (one per uri at every build, and a
    frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``: ~1 us more
    each at 100k routes)."""

    path_org: str
    is_prefix: bool
    stored: str
    capture: Capture | None


def parse_uri(path: str, with_params: bool) -> UriPattern:
    """How ``path`` (one of a route's uris) is stored and checked in a router of this kind."""
    cut = path.find(":") if with_params else -1
    if cut < 0:
        cut = path.find("*")
        if cut < 0:
            return UriPattern(path, False, path, None)
    stored = path[:cut]
    return UriPattern(path, True, stored, _capture(path, stored))


def _capture(path: str, stored: str) -> Capture | None:
    """radixtree's ``fetch_pat``: None when the path has no ``:name`` / ``*name`` segment."""
    if "/:" not in path and "/*" not in path and path[:1] not in (":", "*"):
        return None  # e.g. "/foo*": the stored prefix is the whole check
    if path.endswith("/*") and len(stored) == len(path) - 1 and "/:" not in path:
        return _shared_capture(_REST, len(stored), (":ext",), ":ext")  # "/a/*", the common form
    items = path.split("/")
    while len(items) > 1 and items[-1] == "":
        items.pop()  # ngx.re.split drops empty trailing items; the trailing "/" is re-added below
    # Tokens: a str is literal text; a tuple (name, regex) is a parameter.
    tokens: list[str | tuple[str, str]] = []
    for i, item in enumerate(items):
        if i:
            tokens.append("/")
        if item[:1] == ":":
            tokens.append((item[1:], _SEGMENT))
        elif item[:1] == "*":
            tokens.append((item[1:] or ":ext", _REST))
        else:
            tokens.append(item)
    if path.endswith("/") and len(path) > 1:
        tokens.append("/")
    names = tuple(t[0] for t in tokens if isinstance(t, tuple))
    if not names:
        return None
    lead = 0
    literal = ""
    for token in tokens:
        if not isinstance(token, str):
            break
        literal += token
        lead += 1
    # The tree already checked `stored`; the regex starts after it when the literal text allows.
    start = len(stored) if literal.startswith(stored) else 0
    parts = [escape(literal[start:])]
    parts += [escape(t) if isinstance(t, str) else t[1] for t in tokens[lead:]]
    source = "".join(parts)
    rest = tokens[lead:]
    rest_name = None
    if source == _REST and len(rest) == 1 and isinstance(rest[0], tuple):
        rest_name = rest[0][0]
    return _shared_capture(source, start, names, rest_name)


@lru_cache(maxsize=8192)
def _shared_capture(
    source: str, start: int, names: tuple[str, ...], rest_name: str | None
) -> Capture:
    """Routes of the same shape share one Capture (and its compiled regex)."""
    return Capture(source, start, names, rest_name)
