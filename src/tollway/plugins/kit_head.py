"""The response head as header_filter plugins see and edit it (``RequestContext``'s response
header methods work on one of these).

The upstream's header lines stay the bytes the connection parsed (the flat ``name, b": ",
value, CRLF`` pieces of a head) until a plugin needs them as text: reading one header decodes
that one, adding a header (or setting one the head does not have, as the quota headers of
limit-count or a response-rewrite ``set`` usually do) appends it to the edits, and the proxy
writes the head with the original pieces reused. Only replacing or removing a header the
upstream sent, or reading the whole list (``pairs``), decodes the head into (name, value)
text pairs; from then on the pairs are the head.

Content-Length is one of the headers here (a plugin may drop or replace it), kept apart from
the lines as the proxy frames the body with it.

Invariant: values given to ``add``/``set`` went through the kit's ``wire_value`` (latin-1 safe,
no CR/LF), so ``wire`` encodes them as latin-1 without checking.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

_CL = "content-length"


class HeaderGroup:
    """Response headers a plugin sets together on many responses (limit-count's quota
    headers): the names are lowercased and checked once, here; a response gives only the
    values (``ResponseHead.set_group``, or its lines already encoded: ``EarlyHeaders``)."""

    __slots__ = ("line_names", "lnames", "lwire", "names", "others", "plain", "wire_names")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.lnames = frozenset(n.lower() for n in names)
        # as the upstream's lines hold them (a name beyond latin-1 matches no line)
        self.lwire = frozenset(_latin1(n) for n in self.lnames) - {b""}
        # Distinct names other than Content-Length: set by appending, when the head lacks them.
        self.plain = len(self.lnames) == len(names) and _CL not in self.lnames
        # The names as a head's pieces hold them, when every one can go out as it is: then a
        # response may give its lines already encoded (``ResponseHead.set_group_wire``).
        wire = tuple(_latin1(n) for n in names)
        ok = self.plain and all(n and set(n) <= _TOKEN for n in wire)
        self.wire_names = wire if ok else None
        # The names an ``EarlyHeaders`` entry's pieces carry: the wire names, else placeholders
        # (such a group's values are set from the pieces' values, by name, as text).
        self.line_names = wire if ok else tuple(n.encode("latin-1", "replace") for n in names)
        # Raw upstream header names (as sent, any case) seen to be none of the group's: a
        # head whose names all came before is checked with one C-level ``issuperset``.
        self.others: set[bytes] = set()

    def absent_from(self, raw_names: list[bytes]) -> bool:
        """None of ``raw_names`` (an upstream head's names, any case) is one of the group's."""
        others = self.others
        if others.issuperset(raw_names):
            return True
        lwire = self.lwire
        for name in raw_names:
            if name.lower() in lwire:
                return False
        if len(others) >= _OTHERS_MAX:  # bounded: upstreams with ever-new header names
            others.clear()
        others.update(raw_names)
        return True


_OTHERS_MAX = 1024
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _latin1(name: str) -> bytes:
    try:
        return name.encode("latin-1")
    except UnicodeEncodeError:
        return b""


EarlyHeaders = tuple[HeaderGroup, tuple[bytes, ...]]
"""Response headers a plugin knows in access (limit-count's quota headers; APISIX sets them
there with ``core.response.set_header``), set on whatever answer the request gets
(``RequestContext.set_early_headers``): a group and its lines as a head's flat pieces,
``name, b": ", value, b"\\r\\n"`` for each of the group's names in order, the names its
``line_names``, the values clean (``wire_value``'s output) and latin-1 encoded. A plain tuple
a plugin builds from pre-encoded parts: nothing else is allocated per request, and the
common answer appends the pieces as they are."""


def early_texts(pieces: tuple[bytes, ...]) -> tuple[str, ...]:
    """The values of an ``EarlyHeaders`` entry's pieces as text (the group's order)."""
    return tuple(v.decode("latin-1") for v in pieces[2::4])


def early_lines(
    early: Sequence[EarlyHeaders], lines: list[bytes], length: bytes | None
) -> tuple[list[bytes], bytes | None]:
    """The upstream's head pieces with the access-time headers (no header_filter plugin):
    their encoded lines appended when the upstream sent none of their names (the usual
    case, nothing decoded: ``early_tail``); else set semantics (APISIX: the plugin's value
    replaces the upstream's) through a ``ResponseHead``."""
    tail = early_tail(early, lines)
    if tail is None:
        head = ResponseHead(lines, length)
        apply_early(head, early)
        return head.wire()
    return [*lines, *tail], length


def early_tail(early: Sequence[EarlyHeaders], lines: list[bytes]) -> tuple[bytes, ...] | None:
    """The access-time headers' pieces to append to the upstream's head ``lines`` as they
    are: when every group has wire names and none of a group's names is in the head or an
    earlier group (one group, the usual case: its own tuple, nothing built). None when not:
    the head is then edited (``early_lines``, ``apply_early``). The proxy writes an answer's
    head with this when no header_filter plugin sees it."""
    if len(early) == 1:
        group, pieces = early[0]
        names = lines[0::4]
        # (absent_from's first test inlined: this runs on every answer)
        if group.wire_names is not None and (
            group.others.issuperset(names) or group.absent_from(names)
        ):
            return pieces
        return None
    tail: tuple[bytes, ...] = ()
    for group, pieces in early:
        names = [*lines[0::4], *tail[0::4]]
        if group.wire_names is None or not group.absent_from(names):
            return None
        tail += pieces
    return tail


def apply_early(head: ResponseHead, early: Sequence[EarlyHeaders]) -> None:
    """Set the access-time headers on a head header_filter plugins will see (encoded lines
    kept as they are until a plugin reads or edits the head)."""
    for group, pieces in early:
        if group.wire_names is None or not head.set_group_wire(group, pieces):
            head.set_group(group, early_texts(pieces))


def early_pairs(
    early: Sequence[EarlyHeaders], headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """A local answer's (name, value) pairs with the access-time headers set on them."""
    for group, pieces in early:
        headers = [(k, v) for k, v in headers if k.lower() not in group.lwire]
        headers += [
            (n.encode("latin-1", "replace"), v)
            for n, v in zip(group.names, pieces[2::4], strict=True)
        ]
    return headers


class ResponseHead:
    __slots__ = ("_added", "_added_names", "_length", "_lines", "_names", "_pairs", "_wire")

    def __init__(
        self,
        lines: list[bytes] | None = None,
        length: bytes | None = None,
        pairs: list[tuple[str, str]] | None = None,
    ) -> None:
        self._lines = lines or []  # as the upstream sent them (without Content-Length)
        self._length = length
        self._added: list[tuple[str, str]] = []  # appended, while not decoded
        self._added_names: set[str] = set()  # their names, lowercase
        self._names: frozenset[str] | None = None  # the lines' names, lowercase (on demand)
        # The whole head as text, once decoded (None until then): then the only truth.
        self._pairs = pairs
        # A group's lines given already encoded (set_group_wire), while nothing else was
        # added; any other edit or read decodes them into ``_added`` first (``_unwire``).
        self._wire: tuple[bytes, ...] | None = None

    def get(self, lname: str) -> str | None:
        """The first value of the header ``lname`` (lowercase), or None."""
        if self._wire is not None:
            self._unwire()
        pairs = self._pairs
        if pairs is not None:
            for k, v in pairs:
                if k.lower() == lname:
                    return v
            return None
        if lname == _CL and self._length is not None:
            return self._length.decode("latin-1")
        if self._has(lname):
            i = self._find(lname)
            return self._lines[i + 2].decode("latin-1")
        if lname in self._added_names:
            for k, v in self._added:
                if k.lower() == lname:
                    return v
        return None

    def add(self, name: str, value: str) -> None:
        if self._wire is not None:
            self._unwire()
        if self._pairs is not None:
            self._pairs.append((name, value))
        elif name.lower() == _CL:
            self.pairs().append((name, value))
        else:
            self._added.append((name, value))
            self._added_names.add(name.lower())

    def set(self, name: str, value: str | None) -> None:
        """Replace every ``name`` header by one with ``value``; remove them with None."""
        if self._wire is not None:
            self._unwire()
        lname = name.lower()
        if self._pairs is None and lname != _CL and not self._has(lname):
            # Not among the upstream's lines: an edit of the added ones only.
            added = self._added
            names = self._added_names
            if lname in names:
                self._added = added = [(k, v) for k, v in added if k.lower() != lname]
                names.discard(lname)
            if value is not None:
                added.append((name, value))
                names.add(lname)
            return
        pairs = [(k, v) for k, v in self.pairs() if k.lower() != lname]
        if value is not None:
            pairs.append((name, value))
        self._pairs = pairs

    def set_all(self, headers: Mapping[str, str | None], clean: Callable[[str], str]) -> None:
        """``set`` for each item; ``clean`` makes a value safe (the kit's ``wire_value``). In
        one pass when none of the names is in the head yet (the usual case)."""
        if self._wire is not None:
            self._unwire()
        if self._pairs is None:
            names = self._names
            if names is None:
                names = self._line_names()
            added = self._added_names
            for name in headers:
                lname = name.lower()
                if lname in names or lname in added or lname == _CL:
                    break
            else:
                for name, value in headers.items():
                    if value is not None:
                        if not (value.isprintable() and value.isascii()):
                            value = clean(value)
                        self._added.append((name, value))
                        added.add(name.lower())
                return
        for name, value in headers.items():
            self.set(name, clean(value) if value is not None else None)

    def set_group(self, group: HeaderGroup, values: tuple[str, ...]) -> None:
        """``set`` for each of the group's names with its value (clean ones: ``wire_value``'s
        output): appended in one step when the head has none of them yet (the usual case)."""
        if self._wire is not None:
            self._unwire()
        if self._pairs is None and group.plain:
            names = self._names
            if names is not None:
                absent = group.lnames.isdisjoint(names)
            else:  # the raw names: nothing decoded
                absent = group.absent_from(self._lines[0::4])
            added = self._added_names
            if absent and group.lnames.isdisjoint(added):
                self._added += zip(group.names, values, strict=True)
                added |= group.lnames
                return
        for name, value in zip(group.names, values, strict=True):
            self.set(name, value)

    def set_group_wire(self, group: HeaderGroup, pieces: tuple[bytes, ...]) -> bool:
        """``set_group`` with the lines already encoded (``pieces``: the flat ``name, ": ",
        value, CRLF`` pieces of the group's names, in order): kept as they are when the head
        has none of the names and nothing else was added (the usual case), so ``wire`` only
        appends them. False when not: the caller then uses ``set_group``."""
        if self._pairs is None and self._wire is None and not self._added:
            names = self._names
            if names is not None:
                absent = group.lnames.isdisjoint(names)
            else:  # the raw names: nothing decoded
                absent = group.absent_from(self._lines[0::4])
            if absent:
                self._wire = pieces
                return True
        return False

    def _unwire(self) -> None:
        """The encoded group as added text pairs, for the edits and reads other than ``wire``
        (``_added`` was empty when it was kept)."""
        pieces = self._wire or ()
        self._wire = None
        added = [
            (pieces[i].decode("latin-1"), pieces[i + 2].decode("latin-1"))
            for i in range(0, len(pieces), 4)
        ]
        self._added = added + self._added
        self._added_names.update(n.lower() for n, _ in added)

    def pairs(self) -> list[tuple[str, str]]:
        """The whole head as text pairs (decoded once; edits through the list are kept)."""
        if self._wire is not None:
            self._unwire()
        pairs = self._pairs
        if pairs is None:
            lines = self._lines
            pairs = [
                (lines[i].decode("latin-1"), lines[i + 2].decode("latin-1"))
                for i in range(0, len(lines), 4)
            ]
            if self._length is not None:
                pairs.append(("Content-Length", self._length.decode("latin-1")))
            pairs += self._added
            self._pairs = pairs
            self._added = []
            self._added_names.clear()
        return pairs

    def wire(self) -> tuple[list[bytes], bytes | None]:
        """(header pieces, Content-Length) to send: the upstream's pieces as they came when
        nothing was edited, with the added headers after them when only that was."""
        pairs = self._pairs
        if pairs is None:
            lines = self._lines
            if self._wire is not None:  # nothing else was added
                return [*lines, *self._wire], self._length
            if self._added:
                lines = lines.copy()
                for name, value in self._added:
                    lines += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
            return lines, self._length
        out: list[bytes] = []
        length = None
        for name, value in pairs:
            if len(name) == 14 and name.lower() == _CL:
                length = value.encode("latin-1")
            else:
                out += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
        return out, length

    def _has(self, lname: str) -> bool:
        """The upstream sent a ``lname`` line."""
        names = self._names
        if names is None:
            names = self._line_names()
        return lname in names

    def _line_names(self) -> frozenset[str]:
        # a few C calls whatever the number of lines (a name never holds a newline)
        blob = b"\n".join(self._lines[0::4]).lower().decode("latin-1")
        names = self._names = frozenset(blob.split("\n")) if blob else frozenset()
        return names

    def _find(self, lname: str) -> int:
        """The index of the upstream's ``lname`` line in the pieces, or -1."""
        try:
            key = lname.encode("latin-1")
        except UnicodeEncodeError:
            return -1  # no line can have that name
        lines = self._lines
        n = len(key)
        for i in range(0, len(lines), 4):
            name = lines[i]
            if len(name) == n and name.lower() == key:
                return i
        return -1
