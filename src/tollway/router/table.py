"""One uri router: exact paths and stored prefixes, each mapped to an ordered bucket of entries.

Invariants:
* a bucket is one Entry or a list of two or more, sorted by ``Entry.order()`` =
  (-priority, -len(path as written), insertion sequence, uri index): radixtree's ``sort_route``
  made total. The first entry whose conditions hold wins (apisix.md §2.2).
* a stored prefix that ends with ``/`` lives in ``_slash`` and its depth (number of ``/``) is
  counted in ``_depths``; any other stored prefix lives in the ``_other`` prefix tree. A request
  path has at most one prefix of a given length, so the two sources never collide.

Why this layout: at 100k routes every object hop is a cache miss, so the common cases (an exact
path; a prefix that ends at a segment boundary) cost one or two dict probes per depth that is
actually in use, and a single route per path needs no list.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from functools import lru_cache
from typing import Any

from tollway.expr import Expr, IpMatcher
from tollway.router.pattern import Capture, UriPattern
from tollway.router.prefix_tree import PrefixTree
from tollway.router.spec import Match, RequestView, RouteSpec

__all__ = ["Entry", "FullEntry", "HostCondition", "UriTable", "make_entry"]

_URI_PARAM = "uri_param_"


class HostCondition:
    """A route's hosts checked per request (radixtree_uri kinds): ``*.foo.com`` is a suffix match on
    ``.foo.com``, ``*`` matches any host. A host containing ``:`` is compared with the raw Host
    header (``http_host``) instead, as radixtree does."""

    __slots__ = ("any", "colon", "exact", "suffixes")

    def __init__(self, hosts: tuple[str, ...]) -> None:
        exact: set[str] = set()
        suffixes: list[str] = []
        colon: list[tuple[bool, str]] = []
        any_host = False
        for raw in hosts:
            host = raw.lower()
            wildcard = host.startswith("*")
            name = host[1:] if wildcard else host
            if ":" in name:
                colon.append((wildcard, name))
            elif wildcard and not name:
                any_host = True
            elif wildcard:
                suffixes.append(name)
            else:
                exact.add(name)
        self.any = any_host
        self.exact = frozenset(exact)
        self.suffixes = tuple(suffixes)
        self.colon = tuple(colon)

    def match(self, req: RequestView) -> bool:
        if self.any:
            return True
        host = req.host
        if host in self.exact:
            return True
        for suffix in self.suffixes:
            if host.endswith(suffix):
                return True
        if self.colon:
            raw = req.var("http_host")
            header = raw.lower() if isinstance(raw, str) else host
            for wildcard, name in self.colon:
                if header.endswith(name) if wildcard else header == name:
                    return True
        return False


# methods, remote addresses, hosts (radixtree_uri kinds only), vars
Conditions = tuple[frozenset[str] | None, IpMatcher | None, HostCondition | None, Expr | None]


class _ParamVars:
    """``var`` during matching: ``uri_param_<name>`` reads the candidate route's captures."""

    __slots__ = ("_params", "_var")

    def __init__(self, var: Any, params: dict[str, str] | None) -> None:
        self._var = var
        self._params = params

    def __call__(self, name: str) -> Any:
        if name.startswith(_URI_PARAM):
            params = self._params
            return None if params is None else params.get(name[len(_URI_PARAM) :])
        return self._var(name)


class Entry:
    """One (route, uri) pair placed in one table: what deciding a match by the path alone needs.

    Memory (issue #17): a route of the common kind (no remote_addrs, vars, hosts as a condition,
    regex capture, host table) is one of these, with 11 slots; the rarer conditions are class
    attributes here (None: no such condition) and slots of :class:`FullEntry`. A lookup of either
    costs the same (a class attribute is found where a slot would be)."""

    __slots__ = (
        "bare",
        "id",
        "is_prefix",
        "length",
        "methods",
        "payload",
        "priority",
        "rest_name",
        "rest_start",
        "seq",
        "stored",
    )

    full = False  # a FullEntry: the conditions below may be set
    # The rarer conditions, slots of FullEntry: see _try for how each is checked.
    ips: IpMatcher | None = None
    hosts: HostCondition | None = None
    expr: Expr | None = None
    param_vars = False
    capture: Capture | None = None
    # radixtree_host_uri: the host of the table the entry is in (None: the host-less table)
    table: UriTable | None = None
    host: str | None = None

    def __init__(
        self,
        spec: RouteSpec,
        pattern: UriPattern,
        seq: int,
        index: int,
        methods: frozenset[str] | None,
    ) -> None:
        self.id = spec.id
        self.payload = spec.payload
        self.methods = methods
        self.priority = spec.priority
        self.length = len(pattern.path_org)
        # The route's insertion sequence and this uri's index among its uris, in one int: the
        # last two keys of the order (a route has far fewer than 2**16 uris).
        self.seq = (seq << 16) | index
        self.stored = pattern.stored
        self.is_prefix = pattern.is_prefix
        capture: Capture | None = pattern.capture
        # "/a/*" needs no regex: the capture is what follows the stored prefix.
        self.rest_name = capture.rest_name if capture is not None else None
        self.rest_start = capture.start if capture is not None else 0
        self.bare = self.methods is None and (capture is None or self.rest_name is not None)

    def order(self) -> tuple[int, int, int]:
        return (-self.priority, -self.length, self.seq)

    @property
    def route_seq(self) -> int:
        """The route's insertion sequence (kept while the route exists)."""
        return self.seq >> 16


class FullEntry(Entry):
    """An entry with a condition beyond the path and methods, a regex capture, or a host table."""

    __slots__ = ("capture", "expr", "host", "hosts", "ips", "param_vars", "table")

    full = True

    def __init__(
        self,
        spec: RouteSpec,
        pattern: UriPattern,
        seq: int,
        index: int,
        conditions: Conditions,
    ) -> None:
        super().__init__(spec, pattern, seq, index, conditions[0])
        _, self.ips, self.hosts, self.expr = conditions
        self.param_vars = self.expr is not None and any(
            n.startswith(_URI_PARAM) for n in self.expr.var_names
        )
        capture = pattern.capture
        self.capture = capture if capture is not None and self.rest_name is None else None
        self.table = None
        self.host = None
        # No condition beyond the path and no regex: the match is decided by the table lookup.
        self.bare = (
            self.bare
            and self.ips is None
            and self.hosts is None
            and self.expr is None
            and self.capture is None
        )


def make_entry(
    spec: RouteSpec, pattern: UriPattern, seq: int, index: int, conditions: Conditions
) -> Entry:
    """The smallest entry that holds these conditions (one placed in a host table: see
    ``Router._place``, which makes a FullEntry for it)."""
    methods, ips, hosts, expr = conditions
    capture = pattern.capture
    if (
        ips is None
        and hosts is None
        and expr is None
        and (capture is None or capture.rest_name is not None)
    ):
        return Entry(spec, pattern, seq, index, methods)
    return FullEntry(spec, pattern, seq, index, conditions)


def _try(e: Entry, req: RequestView, path: str) -> Match | None:
    """Check one entry in radixtree's ``match_route_opts`` order: method, remote address, host,
    then the path regex and vars (the regex first, so vars can read this route's uri_param_*)."""
    methods = e.methods
    if methods is not None and req.method not in methods:
        return None
    if not e.full:  # one class attribute read instead of the four rare conditions
        rest = e.rest_name
        return Match(e.id, e.payload, None if rest is None else {rest: path[e.rest_start :]})
    ips = e.ips
    if ips is not None and not ips.match(req.remote_addr):
        return None
    hosts = e.hosts
    if hosts is not None and not hosts.match(req):
        return None
    params = None
    if e.rest_name is not None:
        params = {e.rest_name: path[e.rest_start :]}
    elif e.capture is not None:
        params = e.capture.match(path)
        if params is None:
            return None
    expr = e.expr
    if expr is not None:
        var = _ParamVars(req.var, params) if e.param_vars else req.var
        if not expr.eval(var):
            return None
    return Match(e.id, e.payload, params)


def _scan(bucket: Entry | list[Entry], req: RequestView, path: str) -> Match | None:
    if isinstance(bucket, Entry):
        return _try(bucket, req, path)
    for e in bucket:
        found = _try(e, req, path)
        if found is not None:
            return found
    return None


def _with(bucket: Entry | list[Entry] | None, entry: Entry) -> Entry | list[Entry]:
    """The bucket with ``entry`` added in order."""
    if bucket is None:
        return entry
    if isinstance(bucket, Entry):
        bucket = [bucket]
    insort(bucket, entry, key=Entry.order)
    return bucket


def _without(bucket: Entry | list[Entry], entry: Entry) -> Entry | list[Entry] | None:
    """The bucket without ``entry`` (None when empty)."""
    if isinstance(bucket, Entry):
        return None if bucket is entry else bucket
    i = bisect_left(bucket, entry.order(), key=Entry.order)
    if i < len(bucket) and bucket[i] is entry:
        del bucket[i]
    return bucket[0] if len(bucket) == 1 else bucket


@lru_cache(maxsize=1024)
def _depth_order(depths: frozenset[int]) -> tuple[int, ...]:
    """Depths deepest first; interned so that tables share (cache-hot) tuples."""
    return tuple(sorted(depths, reverse=True))


class UriTable:
    """Routes keyed by path: exact paths first, then stored prefixes from longest to shortest."""

    __slots__ = ("_depth_counts", "_depths", "_exact", "_other", "_size", "_slash")

    def __init__(self) -> None:
        self._exact: dict[str, Entry | list[Entry]] = {}
        self._slash: dict[str, Entry | list[Entry]] = {}
        self._depth_counts: dict[int, int] = {}  # depth -> number of stored "/"-ended prefixes
        self._depths: tuple[int, ...] = ()  # the keys of _depth_counts, deepest first
        self._other: PrefixTree[Entry | list[Entry]] | None = None  # created on first use
        self._size = 0

    def __len__(self) -> int:
        """Number of entries (a route with two uris counts twice)."""
        return self._size

    def add(self, entry: Entry) -> None:
        stored = entry.stored
        self._size += 1
        if not entry.is_prefix:
            self._exact[stored] = _with(self._exact.get(stored), entry)
        elif stored.endswith("/"):
            old = self._slash.get(stored)
            self._slash[stored] = _with(old, entry)
            if old is None:
                self._count_depth(stored.count("/"), 1)
        else:
            if self._other is None:
                self._other = PrefixTree()
            self._other.set(stored, _with(self._other.get(stored), entry))

    def remove(self, entry: Entry) -> None:
        stored = entry.stored
        if not entry.is_prefix:
            bucket = self._exact.get(stored)
        elif stored.endswith("/"):
            bucket = self._slash.get(stored)
        else:
            bucket = None if self._other is None else self._other.get(stored)
        if bucket is None:
            return
        self._size -= 1
        rest = _without(bucket, entry)
        if not entry.is_prefix:
            _put(self._exact, stored, rest)
        elif stored.endswith("/"):
            _put(self._slash, stored, rest)
            if rest is None:
                self._count_depth(stored.count("/"), -1)
        elif self._other is not None:
            if rest is not None:
                self._other.set(stored, rest)
            else:
                self._other.delete(stored)
                if not len(self._other):
                    self._other = None

    def _count_depth(self, depth: int, delta: int) -> None:
        count = self._depth_counts.get(depth, 0) + delta
        if count:
            self._depth_counts[depth] = count
        else:
            del self._depth_counts[depth]
        if count in (0, 1):
            self._depths = _depth_order(frozenset(self._depth_counts))

    def match(self, req: RequestView, path: str) -> Match | None:
        bucket = self._exact.get(path)
        if bucket is not None:
            found = _scan(bucket, req, path)
            if found is not None:
                return found
        depths = self._depths
        if self._other is None and len(depths) == 1:
            # The common table: "/"-ended prefixes of one depth. One lookup, inlined.
            deepest = depths[0]
            parts = path.split("/", deepest)
            if len(parts) <= deepest:
                return None
            bucket = self._slash.get(path[: len(path) - len(parts[deepest])])
            if bucket is None:
                return None
            if isinstance(bucket, Entry) and bucket.bare:
                rest = bucket.rest_name
                return Match(
                    bucket.id,
                    bucket.payload,
                    None if rest is None else {rest: path[bucket.rest_start :]},
                )
            return _scan(bucket, req, path)
        if self._other is not None:
            buckets = self._other.walk(path)
            if self._depths:
                buckets += self._slash_buckets(path)
                buckets.sort(key=_stored_length, reverse=True)
        elif self._depths:
            buckets = self._slash_buckets(path)
        else:
            return None
        for bucket in buckets:
            found = _scan(bucket, req, path)
            if found is not None:
                return found
        return None

    def _slash_buckets(self, path: str) -> list[Entry | list[Entry]]:
        """Buckets of the stored ``.../`` prefixes of ``path``, the deepest first. The prefix of
        depth d (its d-th ``/`` included) is what precedes the rest of ``path.split("/", d)``."""
        depths = self._depths
        deepest = depths[0]
        parts = path.split("/", deepest)
        found = []
        if len(depths) == 1:  # the common case: one depth in use in this table
            if len(parts) > deepest:
                bucket = self._slash.get(path[: len(path) - len(parts[deepest])])
                if bucket is not None:
                    found.append(bucket)
            return found
        get = self._slash.get
        count = len(parts)
        for depth in depths:
            if depth < count:
                bucket = get(path[: sum(map(len, parts[:depth])) + depth])
                if bucket is not None:
                    found.append(bucket)
        return found


def _stored_length(bucket: Entry | list[Entry]) -> int:
    return len(bucket.stored if isinstance(bucket, Entry) else bucket[0].stored)


def _put(
    store: dict[str, Entry | list[Entry]], key: str, bucket: Entry | list[Entry] | None
) -> None:
    if bucket is None:
        store.pop(key, None)
    else:
        store[key] = bucket
