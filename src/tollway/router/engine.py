"""The Router: the three APISIX http router kinds over :class:`UriTable`, updated in place.

Invariants: every route id maps to the entries it placed, so an update removes exactly those; a
route keeps its insertion sequence number while it exists (an upsert of a known id keeps its place
among equal-priority routes, a new or re-created id goes last); a spec that does not compile is
skipped and logged, and the version already in the router (if any) stays live. Updates mutate the
router in place: call them from the thread that matches (the event loop), never concurrently.

Kinds (apisix.md §2.1, §2.3):

* ``radixtree_uri``: one uri table; a route's hosts are one of its conditions.
* ``radixtree_uri_with_parameter``: the same, with ``:name`` path parameters.
* ``radixtree_host_uri``: routes with hosts go into one uri table per host: the request's exact
  host is tried first, then wildcard hosts from the longest suffix to the shortest (``*`` last),
  and only when none of them matched, the table of host-less routes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from tollway.expr import Expr, IpMatcher, compile_expr
from tollway.memory import collector_paused
from tollway.router.pattern import UriPattern, parse_uri
from tollway.router.prefix_tree import PrefixTree
from tollway.router.spec import Match, RequestView, RouteSpec
from tollway.router.table import Entry, FullEntry, HostCondition, UriTable, make_entry

__all__ = ["KINDS", "Router", "RouterBuilder", "build_router", "compile_check"]

log = logging.getLogger("tollway.router")

KINDS = frozenset({"radixtree_host_uri", "radixtree_uri", "radixtree_uri_with_parameter"})
_HOST_MEMO_SIZE = 8192


def _lowered(host: str) -> str:
    """``host`` lowercased, the same string when it already is (the spec's, not a copy)."""
    low = host.lower()
    return host if low == host else low


def _unique(items: Sequence[str]) -> Sequence[str]:
    return items if len(items) < 2 else list(dict.fromkeys(items))


class _Compiled(NamedTuple):
    methods: frozenset[str] | None
    ips: IpMatcher | None
    expr: Expr | None
    hosts: tuple[str, ...] | None
    patterns: list[UriPattern]


def _compile_route(spec: RouteSpec, with_params: bool) -> _Compiled:
    """The per-route predicates and uri patterns; raises ValueError / ExprError for a bad spec."""
    methods = spec.methods or None
    if methods is not None and not isinstance(methods, frozenset):
        methods = frozenset(methods)
    ips = IpMatcher(spec.remote_addrs) if spec.remote_addrs else None
    expr = None
    if spec.vars is not None:
        expr = compile_expr(spec.vars)
        if not expr.rule:
            expr = None  # [] matches everything
    hosts = tuple(_unique([_lowered(h) for h in spec.hosts])) if spec.hosts else None
    patterns = []
    for uri in _unique(spec.uris):
        if not isinstance(uri, str) or not uri:
            raise ValueError(f"invalid uri: {uri!r}")
        patterns.append(parse_uri(uri, with_params))
    return _Compiled(methods, ips, expr, hosts, patterns)


def compile_check(spec: RouteSpec) -> None:
    """Raise ValueError (ExprError for vars) when ``spec`` cannot be routed (config validation)."""
    for with_params in (False, True):
        for pattern in _compile_route(spec, with_params).patterns:
            if pattern.capture is not None:
                pattern.capture.compile()


class Router:
    """Matches requests against routes; see the module docstring for the kinds."""

    __slots__ = (
        "_by_host",
        "_exact_hosts",
        "_host_memo",
        "_next_seq",
        "_placed",
        "_plain",
        "_seqless",
        "_strip_tail",
        "_wild_hosts",
        "_with_params",
        "kind",
    )

    def __init__(self, kind: str, *, delete_uri_tail_slash: bool = False) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown router kind: {kind!r}")
        self.kind = kind
        self._by_host = kind == "radixtree_host_uri"
        self._with_params = kind == "radixtree_uri_with_parameter"
        self._strip_tail = delete_uri_tail_slash
        self._plain = UriTable()  # every route, or the host-less ones in host mode
        self._exact_hosts: dict[str, UriTable] = {}
        self._wild_hosts: PrefixTree[UriTable] = PrefixTree()  # key: reversed suffix
        # host -> its tables in match order; valid while the set of host tables is unchanged.
        self._host_memo: dict[str, tuple[UriTable, ...]] = {}
        # route id -> its entries (one Entry for most routes, not a list), whose ``route_seq``
        # is the route's insertion sequence (kept on upsert). One dict per route id, not two.
        self._placed: dict[str, Entry | list[Entry]] = {}
        # A route placed without any uri (no entry to hold them): its sequence and payload.
        self._seqless: dict[str, tuple[int, Any]] = {}
        self._next_seq = 0

    def __len__(self) -> int:
        return len(self._placed)

    def __contains__(self, route_id: object) -> bool:
        return route_id in self._placed

    def __iter__(self) -> Iterator[str]:
        """The ids of the routes placed, in insertion order."""
        return iter(self._placed)

    def payload(self, route_id: str) -> Any:
        """What the route's spec carried (None for an unknown id)."""
        placed = self._placed.get(route_id)
        if isinstance(placed, Entry):
            return placed.payload
        if placed:
            return placed[0].payload
        seqless = self._seqless.get(route_id)
        return None if seqless is None else seqless[1]

    # ------------------------------------------------------------------ matching

    def match(self, req: RequestView) -> Match | None:
        path = req.path
        if self._strip_tail and len(path) > 1 and path[-1] == "/":
            path = path[:-1]
        if self._by_host:
            host = req.host
            tables = self._host_memo.get(host)
            if tables is None:
                tables = self._host_tables_for(host)
            for table in tables:
                found = table.match(req, path)
                if found is not None:
                    return found
        return self._plain.match(req, path)

    def _host_tables_for(self, host: str) -> tuple[UriTable, ...]:
        """The exact host's table, then wildcard tables from the longest suffix (memoised)."""
        exact = self._exact_hosts.get(host)
        tables = [] if exact is None else [exact]
        if len(self._wild_hosts):
            tables += self._wild_hosts.walk(host[::-1])
        memo = self._host_memo
        if len(memo) >= _HOST_MEMO_SIZE + 2 * len(self._exact_hosts) + 2 * len(self._wild_hosts):
            memo.clear()  # bounded: random Host headers cost a walk each, not memory
        found = memo[host] = tuple(tables)
        return found

    # ------------------------------------------------------------------ updates

    def update(self, upserts: Sequence[RouteSpec], deletes: Sequence[str]) -> None:
        """Apply deletes, then upserts, in place. A bad upsert is logged and leaves its route as
        it was; an upserted id that is already present keeps its insertion position."""
        for route_id in deletes:
            placed = self._placed.pop(route_id, None)
            if placed is not None:
                self._seqless.pop(route_id, None)
                self._unplace(placed)
        for spec in upserts:
            self._upsert(spec)

    def repoint(self, route_id: str, payload: object) -> None:
        """Hand back ``payload`` for ``route_id`` from now on, without recompiling it (the
        compiled route changed, its matching did not). Unknown ids are ignored."""
        placed = self._placed.get(route_id)
        if placed is None:
            return
        for entry in placed if isinstance(placed, list) else [placed]:
            entry.payload = payload
        if route_id in self._seqless:
            self._seqless[route_id] = (self._seqless[route_id][0], payload)

    def _upsert(self, spec: RouteSpec) -> bool:
        try:
            compiled = _compile_route(spec, self._with_params)
        except ValueError as e:  # ExprError is a ValueError
            log.error("route %s skipped: %s", spec.id, e)
            return False
        old = self._placed.get(spec.id)
        if old is None:
            seq = self._next_seq
            self._next_seq += 1
        else:
            seq = self._seq_of(spec.id, old)
            self._unplace(old)
        placed = self._placed[spec.id] = self._place(spec, seq, compiled)
        if isinstance(placed, list) and not placed:
            self._seqless[spec.id] = (seq, spec.payload)
        else:
            self._seqless.pop(spec.id, None)
        return True

    def _seq_of(self, route_id: str, placed: Entry | list[Entry]) -> int:
        if isinstance(placed, Entry):
            return placed.route_seq
        return placed[0].route_seq if placed else self._seqless[route_id][0]

    def _place(self, spec: RouteSpec, seq: int, compiled: _Compiled) -> Entry | list[Entry]:
        methods, ips, expr, hosts, patterns = compiled
        condition = None
        tables: list[tuple[UriTable, str | None]] = [(self._plain, None)]
        if hosts is not None:
            if self._by_host:
                tables = [(self._host_table(h), h) for h in hosts]
            else:
                condition = HostCondition(hosts)
        conditions = (methods, ips, condition, expr)
        entries: list[Entry] = []
        for index, pattern in enumerate(patterns):
            for table, host in tables:
                if host is None:
                    entry = make_entry(spec, pattern, seq, index, conditions)
                else:
                    full = FullEntry(spec, pattern, seq, index, conditions)
                    full.table, full.host = table, host
                    entry = full
                table.add(entry)
                entries.append(entry)
        return entries[0] if len(entries) == 1 else entries  # one object per plain route

    def _unplace(self, placed: Entry | list[Entry]) -> None:
        for entry in placed if isinstance(placed, list) else [placed]:
            table = self._plain if entry.table is None else entry.table
            table.remove(entry)
            if entry.host is not None and not len(table):
                self._drop_host_table(entry.host, table)

    def _host_table(self, host: str) -> UriTable:
        if host.startswith("*"):
            key = host[1:][::-1]
            table = self._wild_hosts.get(key)
            if table is None:
                table = UriTable()
                self._wild_hosts.set(key, table)
                self._host_memo.clear()
            return table
        table = self._exact_hosts.get(host)
        if table is None:
            table = self._exact_hosts[host] = UriTable()
            self._host_memo.clear()
        return table

    def _drop_host_table(self, host: str, table: UriTable) -> None:
        self._host_memo.clear()
        if host.startswith("*"):
            key = host[1:][::-1]
            if self._wild_hosts.get(key) is table:
                self._wild_hosts.delete(key)
        elif self._exact_hosts.get(host) is table:
            del self._exact_hosts[host]


class RouterBuilder:
    """Builds a router in chunks (``add`` is cheap; the caller may yield between calls).

    ``add`` has upsert semantics: a repeated id keeps its first place and takes the last spec."""

    __slots__ = ("_router",)

    def __init__(self, kind: str, *, delete_uri_tail_slash: bool = False) -> None:
        self._router: Router | None = Router(kind, delete_uri_tail_slash=delete_uri_tail_slash)

    def add(self, spec: RouteSpec) -> None:
        if self._router is None:
            raise RuntimeError("RouterBuilder.add() after finish()")
        self._router._upsert(spec)

    def add_many(self, specs: Iterable[RouteSpec]) -> None:
        """``add`` each spec of one chunk with the cyclic GC paused (memory.collector_paused)."""
        with collector_paused():
            for spec in specs:
                self.add(spec)

    def finish(self) -> Router:
        router, self._router = self._router, None
        if router is None:
            raise RuntimeError("RouterBuilder.finish() called twice")
        return router


def build_router(
    kind: str, specs: Sequence[RouteSpec], *, delete_uri_tail_slash: bool = False
) -> Router:
    """A router holding ``specs`` in this insertion order (a repeated id keeps its first place)."""
    builder = RouterBuilder(kind, delete_uri_tail_slash=delete_uri_tail_slash)
    builder.add_many(specs)
    return builder.finish()
