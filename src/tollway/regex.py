"""User-supplied regular expressions, matched in time linear in the input (RE2).

Invariant: every pattern a user writes (route ``vars`` ``~~``/``~*``, ``uri-blocker``,
``proxy-rewrite``/``redirect`` ``regex_uri``, ``response-rewrite`` filters, ``ua-restriction``,
``cors``, ssl ``skip_mtls_uri_regex``, Admin API list filters) is compiled here, once, when the
configuration is checked; a request only runs the compiled automaton. Route uri patterns are
generated, not written: those with several ``*name`` segments run here too (router/pattern.py).

Why: APISIX runs these through PCRE (``ngx.re`` with ``jo``), a backtracking engine, and so did
Tollway with Python's ``re``: ``(a+)+$`` against 24 hostile characters took 1.4 s and doubled with
each one more, while the worker's event loop served nobody. RE2 (the ``google-re2`` bindings) never
backtracks: the cost of a search is bounded by the length of the input.

Deliberate difference (README "Regular expressions"): what RE2 cannot express is refused when the
pattern is written (the Admin API answers 400; an item from etcd or yaml is skipped and logged):
lookahead and lookbehind, backreferences, atomic groups and possessive quantifiers, ``\\K``,
``\\G``, conditionals, recursion and subroutine calls, ``(?|...)``, ``(?#...)``, callouts, the
``x`` option, ``\\h``/``\\R``/``\\e``/``\\cX`` and repetition counts above 1000. Spellings that only
differ are translated: a ``$`` (without the ``m`` option) and ``\\Z`` match at the end or before a
final newline, as in PCRE (RE2's own ``$`` is ``\\z``). ``(?<name>...)``, ``\\Q...\\E``, POSIX
classes and Unicode classes are RE2 syntax too. Matching is on UTF-8 text, so ``.`` is one
character where PCRE without the ``u`` option takes one byte; ``\\w``, ``\\d``, ``\\s`` and ``\\b``
are ASCII-only in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import re2

__all__ = [
    "Regex",
    "RegexError",
    "Replacement",
    "compile_regex",
    "compile_replacement",
    "encode",
    "escape",
    "translate",
]

# ngx.re option letters that change nothing here: j (JIT), o (compile once), u/U (UTF-8: always
# on), D (duplicate names: RE2 refuses them anyway) and J (JavaScript compatibility).
_NO_EFFECT = frozenset("joUuDJ")
# RE2's errors for PCRE-only syntax get a hint: "invalid perl operator: (?=" alone puzzles.
_PCRE_ONLY = ("invalid perl operator", "invalid escape sequence", "bad repetition operator")
_HINT = (
    " (Tollway runs regexes on RE2: no lookaround, backreferences, atomic groups, possessive "
    "quantifiers, \\K, conditionals or recursion)"
)
# The binding of C++ RE2 itself (``RE2::Match`` with its anchors), not the re-like wrapper around
# it: that one builds a generator and re-decodes offsets on every call (about 3 us a search).
_UNANCHORED = re2._re2.RE2.Anchor.UNANCHORED
_ANCHOR_START = re2._re2.RE2.Anchor.ANCHOR_START
_END = "(?:\\n?\\z)"  # PCRE's "$" without the m option, and its "\Z"


class RegexError(ValueError):
    """A pattern RE2 cannot compile, an unsupported option or a bad replacement template; the
    message is RE2's (or says which option or ``$`` reference)."""


def encode(text: str) -> bytes:
    """The UTF-8 bytes regexes see. A path's undecodable bytes (kept as surrogate escapes) go
    back to the bytes they were; any other lone surrogate is passed through (invalid UTF-8)."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return text.encode("utf-8", "surrogatepass")


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _utf8_len(data: bytes, pos: int) -> int:
    """Bytes in the character at ``pos`` (one for a byte that does not start a sequence)."""
    lead = data[pos]
    if lead < 0xC2 or lead > 0xF4:
        return 1
    return 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def _skip_quoted(pattern: str, i: int, out: list[str]) -> int:
    """Copy ``\\Q...\\E`` (everything literal) from ``i`` (at the Q); returns the next index."""
    end = pattern.find("\\E", i + 1)
    stop = len(pattern) if end < 0 else end + 2
    out.append("\\" + pattern[i:stop])
    return stop


def _skip_class(pattern: str, i: int, out: list[str]) -> int:
    """Copy a character class from ``i`` (at its ``[``); returns the index after its ``]``."""
    n = len(pattern)
    j = i + 1
    if j < n and pattern[j] == "^":
        j += 1
    if j < n and pattern[j] == "]":
        j += 1  # a "]" first is literal
    while j < n and pattern[j] != "]":
        if pattern[j] == "\\":
            j += 2
        elif pattern.startswith("[:", j):
            close = pattern.find(":]", j + 2)
            j = close + 2 if close >= 0 else j + 1
        else:
            j += 1
    out.append(pattern[i : j + 1])
    return j + 1


def _multiline(pattern: str, options: str) -> bool:
    """The ``m`` option or an inline ``(?m`` / ``(?im`` ... anywhere: ``$`` means end of line."""
    if "m" in options:
        return True
    start = pattern.find("(?")
    while start >= 0:
        j = start + 2
        while j < len(pattern) and pattern[j].isalpha():
            if pattern[j] == "m":
                return True
            j += 1
        start = pattern.find("(?", start + 2)
    return False


def _quoted_name(pattern: str, i: int) -> int:
    """The index of the quote closing PCRE's ``(?'name'`` opened at ``i``, or -1."""
    close = pattern.find("'", i + 3)
    name = pattern[i + 3 : close]
    ok = close > 0 and name.isidentifier() and name.isascii()
    return close if ok else -1


def translate(pattern: str, options: str = "") -> str:
    """Rewrite the PCRE spellings RE2 reads differently: ``$`` (unless multi-line) and ``\\Z``
    become "end, or before a final newline" (PCRE), which RE2 spells ``(?:\\n?\\z)``;
    ``(?'name'...)`` becomes ``(?P<name>...)``."""
    if "$" not in pattern and "\\Z" not in pattern and "(?'" not in pattern:
        return pattern
    dollar = "$" if _multiline(pattern, options) else _END
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        close = _quoted_name(pattern, i) if pattern.startswith("(?'", i) else -1
        if close > 0:
            out.append(f"(?P<{pattern[i + 3 : close]}>")
            i = close + 1
        elif ch == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if nxt == "Q":
                i = _skip_quoted(pattern, i + 1, out)
                continue
            out.append(_END if nxt == "Z" else pattern[i : i + 2])
            i += 2
        elif ch == "[":
            i = _skip_class(pattern, i, out)
        else:
            out.append(dollar if ch == "$" else ch)
            i += 1
    return "".join(out)


class Regex:
    """A compiled pattern. ``search`` answers whether it occurs; ``sub`` replaces matches
    (ngx.re.sub / gsub); ``match_groups`` returns the groups of a match at a position."""

    __slots__ = ("_anchor", "_match", "groups", "pattern")

    def __init__(self, pattern: str, regexp: Any, anchored: bool) -> None:
        self.pattern = pattern  # as the user wrote it
        self._match = regexp.Match  # (anchor, bytes, start, end) -> [(start, end)] per group
        self._anchor = _ANCHOR_START if anchored else _UNANCHORED
        self.groups: int = regexp.NumberOfCapturingGroups()

    def search(self, text: str) -> bool:
        """True when the pattern occurs in ``text`` (ngx.re.find: unanchored)."""
        try:
            data = text.encode()
        except UnicodeEncodeError:
            data = encode(text)
        return self._match(self._anchor, data, 0, len(data))[0][0] >= 0

    def match_groups(self, text: str, start: int = 0) -> tuple[str, ...] | None:
        """The groups ("" for one that took no part) when the pattern matches at ``start``
        (anchored there; a pattern ending in ``\\z`` must take the rest), else None."""
        if text.isascii():  # byte offsets are character offsets
            spans = self._match(_ANCHOR_START, text.encode(), start, len(text))
            if spans[0][0] < 0:
                return None
            return tuple(text[a:b] for a, b in spans[1:])
        data = encode(text)
        spans = self._match(_ANCHOR_START, data, len(encode(text[:start])), len(data))
        if spans[0][0] < 0:
            return None
        return tuple(_decode(data[a:b]) for a, b in spans[1:])

    def sub(self, template: Replacement, text: str, count: int = 1) -> str | None:
        """``text`` with the first ``count`` matches (0: all) replaced, None when none matched."""
        if count != 1 or not text.isascii():
            out, n = self.sub_bytes(template, encode(text), count)
            return _decode(out) if n else None
        # ngx.re.sub on an ASCII uri (the common case): byte offsets are character offsets
        spans = self._match(self._anchor, text.encode(), 0, len(text))
        start, stop = spans[0]
        if start < 0:
            return None
        parts = [text[:start]]
        for piece in template.text_pieces:
            if isinstance(piece, int):
                a, b = spans[piece]
                parts.append(text[a:b])  # (-1, -1), a group that took no part, gives ""
            else:
                parts.append(piece)
        parts.append(text[stop:])
        return "".join(parts)

    def sub_bytes(self, template: Replacement, data: bytes, count: int = 0) -> tuple[bytes, int]:
        """ngx.re.gsub (``count`` 0) or sub (1) on bytes: the result and how many replaced.
        After an empty match the next search starts one character further on."""
        match, anchor, pieces = self._match, self._anchor, template.pieces
        end = len(data)
        out: list[bytes] = []
        pos = last = n = 0
        while pos <= end:
            spans = match(anchor, data, pos, end)
            start, stop = spans[0]
            if start < 0:
                break
            out.append(data[last:start])
            for piece in pieces:
                if isinstance(piece, int):
                    a, b = spans[piece]
                    if a >= 0:
                        out.append(data[a:b])
                else:
                    out.append(piece)
            last, n = stop, n + 1
            if n == count:
                break
            if stop > start:
                pos = stop  # an empty match right after this one is still replaced (PCRE)
            elif stop < end:
                pos = stop + _utf8_len(data, stop)
            else:
                break
        if not n:
            return data, 0
        out.append(data[last:])
        return b"".join(out), n

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"


class Replacement:
    """An ngx.re.sub replacement split once into literals and group numbers (``pieces`` with
    UTF-8 literals, ``text_pieces`` with the same as str)."""

    __slots__ = ("pieces", "source", "text_pieces")

    def __init__(self, source: str, pieces: Sequence[str | int]) -> None:
        self.source = source
        self.text_pieces = tuple(pieces)
        self.pieces = tuple(p if isinstance(p, int) else encode(p) for p in pieces)


def _options(options: str, ignore_case: bool) -> tuple[Any, bool]:
    opts = re2.Options()
    opts.log_errors = False  # errors are raised (and reported by the caller), not printed
    opts.case_sensitive = not (ignore_case or "i" in options)
    opts.dot_nl = "s" in options
    opts.longest_match = "d" in options  # PCRE's DFA mode finds the longest match
    for letter in options:
        if letter == "x":
            raise RegexError("option x (extended syntax) is not supported by RE2")
        if letter not in "imsad" and letter not in _NO_EFFECT:
            raise RegexError(f'unknown flag "{letter}" (flags "{options}")')
    return opts, "a" in options


@lru_cache(maxsize=4096)
def compile_regex(pattern: str, *, ignore_case: bool = False, options: str = "") -> Regex:
    """Compile a user's pattern (PCRE spelling) with ngx.re ``options`` letters (``i`` caseless,
    ``m`` multi-line, ``s`` dot matches newline, ``a`` anchored at the start, ``d`` longest
    match; ``j``, ``o``, ``u``, ``U``, ``D``, ``J`` change nothing). Raises RegexError."""
    if not isinstance(pattern, str):
        raise RegexError("pattern must be a string")
    opts, anchored = _options(options, ignore_case)
    source = ("(?m)" if "m" in options else "") + translate(pattern, options)
    regexp = re2._re2.RE2(encode(source), opts)
    if not regexp.ok():
        err = regexp.error()
        text = err.decode("utf-8", "replace") if isinstance(err, bytes) else str(err)
        raise RegexError(text + (_HINT if text.startswith(_PCRE_ONLY) else ""))
    return Regex(pattern, regexp, anchored)


def compile_replacement(text: str, groups: int) -> Replacement:
    """An ngx.re.sub replacement: ``$N`` / ``${N}`` insert group N (0 is the whole match),
    ``$$`` a dollar; any other ``$`` or a group the regex lacks is refused (RegexError with
    ngx.re's wording)."""
    pieces: list[str | int] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$":
            literal.append(ch)
            i += 1
            continue
        j = i + 1
        braced = j < n and text[j] == "{"
        if braced:
            j += 1
        k = j
        while k < n and text[k].isdigit() and text[k].isascii():
            k += 1
        if not braced and k == j and j < n and text[j] == "$":
            literal.append("$")
            i = j + 1
            continue
        if k == j or (braced and (k >= n or text[k] != "}")):
            raise RegexError("invalid capturing variable name")
        number = int(text[j:k])
        if number > groups:
            raise RegexError(f"capture group {number} is out of range")
        if literal:
            pieces.append("".join(literal))
            literal = []
        pieces.append(number)
        i = k + 1 if braced else k
    if literal:
        pieces.append("".join(literal))
    return Replacement(text, pieces)


def escape(literal: str) -> str:
    """``literal`` as a pattern that matches exactly it."""
    return str(re2.escape(literal))
