"""Router invariants (Hypothesis): order independence, update == rebuild, an ordering oracle."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.router import Req

from tollway.router import KINDS, Router, RouteSpec, build_router
from tollway.router.pattern import parse_uri

# A small alphabet so that generated routes collide on paths and prefixes often.
_SEGMENTS = ["a", "b", "ab"]
_HOSTS = ["x.com", "y.x.com", "z.org"]
_HOST_PATTERNS = ["x.com", "y.x.com", "*.x.com", "*", "z.org"]
_METHODS = ["GET", "POST"]

segment = st.sampled_from(_SEGMENTS)
path_st = st.lists(segment, min_size=0, max_size=3).map(lambda s: "/" + "/".join(s))
uri_st = st.one_of(
    path_st,
    path_st.map(lambda p: p.rstrip("/") + "/*"),
    path_st.map(lambda p: p + "*"),
    path_st.map(lambda p: p.rstrip("/") + "/:id"),
    path_st.map(lambda p: p.rstrip("/") + "/:id/*rest"),
    path_st.map(lambda p: p.rstrip("/") + "/*/b"),
)
request_st = st.builds(
    Req,
    path=st.one_of(path_st, path_st.map(lambda p: p + "/")),
    method=st.sampled_from(_METHODS),
    host=st.sampled_from(_HOSTS),
)
kind_st = st.sampled_from(sorted(KINDS))


@st.composite
def spec_st(draw: st.DrawFn, route_id: str, priority: int | None = None) -> RouteSpec:
    uris = draw(st.lists(uri_st, min_size=1, max_size=2, unique=True))
    methods = draw(st.none() | st.frozensets(st.sampled_from(_METHODS), min_size=1))
    hosts = draw(st.none() | st.lists(st.sampled_from(_HOST_PATTERNS), min_size=1, max_size=2))
    return RouteSpec(
        id=route_id,
        uris=tuple(uris),
        priority=draw(st.integers(-2, 2)) if priority is None else priority,
        methods=methods,
        hosts=None if hosts is None else tuple(dict.fromkeys(hosts)),
    )


@st.composite
def specs_st(draw: st.DrawFn, distinct_priorities: bool = False) -> list[RouteSpec]:
    n = draw(st.integers(0, 8))
    prios = draw(st.permutations(range(n))) if distinct_priorities else [None] * n
    return [draw(spec_st(f"r{i}", prios[i])) for i in range(n)]


def answer(router: Router, req: Req) -> tuple[str, dict[str, str] | None] | None:
    m = router.match(req)
    return None if m is None else (m.id, m.params)


# --------------------------------------------------------------------------- an oracle


def _host_ok(pattern: str, host: str) -> bool:
    return pattern == host or (pattern.startswith("*") and host.endswith(pattern[1:]))


def _first(kind: str, specs: list[RouteSpec], req: Req, hosts_checked: bool) -> Any:
    """APISIX's order written out naively: exact entries, then prefixes longest first; within a
    path (priority desc, original length desc, insertion order)."""
    with_params = kind == "radixtree_uri_with_parameter"
    exact, prefix = [], []
    for seq, s in enumerate(specs):
        for idx, uri in enumerate(s.uris):
            p = parse_uri(uri, with_params)
            key = (-s.priority, -len(uri), seq, idx)
            if not p.is_prefix and p.stored == req.path:
                exact.append((key, s, p))
            elif p.is_prefix and req.path.startswith(p.stored):
                prefix.append(((-len(p.stored), *key), s, p))
    for _, s, p in sorted(exact, key=lambda t: t[0]) + sorted(prefix, key=lambda t: t[0]):
        if s.methods and req.method not in s.methods:
            continue
        if hosts_checked and s.hosts and not any(_host_ok(h, req.host) for h in s.hosts):
            continue
        params = None if p.capture is None else p.capture.match(req.path)
        if p.capture is not None and params is None:
            continue
        return (s.id, params)
    return None


def oracle(kind: str, specs: list[RouteSpec], req: Req) -> Any:
    if kind != "radixtree_host_uri":
        return _first(kind, specs, req, hosts_checked=True)
    # One table per host pattern: the exact host, then wildcards by suffix length, then no host.
    tables = sorted(
        {h for s in specs for h in s.hosts or ()},
        key=lambda h: (h.startswith("*"), -len(h)),
    )
    for h in tables:
        if _host_ok(h, req.host):
            found = _first(kind, [s for s in specs if s.hosts and h in s.hosts], req, False)
            if found is not None:
                return found
    return _first(kind, [s for s in specs if not s.hosts], req, False)


@settings(max_examples=300)
@given(kind_st, specs_st(), st.lists(request_st, min_size=1, max_size=6))
def test_router_agrees_with_the_oracle(kind: str, specs: list[RouteSpec], reqs: list[Req]) -> None:
    router = build_router(kind, specs)
    for req in reqs:
        assert answer(router, req) == oracle(kind, specs, req)


# --------------------------------------------------------------------------- invariants


@given(kind_st, specs_st(distinct_priorities=True), st.randoms(), st.lists(request_st, max_size=6))
def test_insertion_order_never_changes_the_winner_with_distinct_priorities(
    kind: str, specs: list[RouteSpec], rnd: Any, reqs: list[Req]
) -> None:
    shuffled = list(specs)
    rnd.shuffle(shuffled)
    a, b = build_router(kind, specs), build_router(kind, shuffled)
    for req in reqs:
        assert answer(a, req) == answer(b, req)


@given(kind_st, specs_st(), spec_st("extra"), st.lists(request_st, min_size=1, max_size=6))
def test_a_route_added_then_removed_leaves_matching_as_before(
    kind: str, specs: list[RouteSpec], extra: RouteSpec, reqs: list[Req]
) -> None:
    router = build_router(kind, specs)
    before = [answer(router, r) for r in reqs]
    router.update([extra], [])
    assert len(router) == len(specs) + 1
    router.update([], ["extra"])
    assert [answer(router, r) for r in reqs] == before
    assert len(router) == len(specs)


_op = st.tuples(st.sampled_from(["upsert", "delete"]), st.integers(0, 5), st.data())


@settings(max_examples=200)
@given(kind_st, st.lists(_op, max_size=15), st.lists(request_st, min_size=1, max_size=6))
def test_incremental_updates_equal_a_full_build(
    kind: str, ops: list[tuple[str, int, st.DataObject]], reqs: list[Req]
) -> None:
    router = build_router(kind, [])
    model: dict[str, RouteSpec] = {}  # dicts keep insertion order; replacing keeps the slot
    for op, n, data in ops:
        route_id = f"r{n}"
        if op == "delete":
            router.update([], [route_id])
            model.pop(route_id, None)
        else:
            spec = data.draw(spec_st(route_id))
            router.update([spec], [])
            model[route_id] = spec
    rebuilt = build_router(kind, list(model.values()))
    assert len(router) == len(rebuilt) == len(model)
    for req in reqs:
        assert answer(router, req) == answer(rebuilt, req)


@given(
    st.lists(st.sampled_from(["lit", "seg", "rest"]), min_size=1, max_size=5),
    st.lists(st.text("abc-._~0123456789", min_size=1, max_size=5), min_size=5, max_size=5),
    st.lists(st.sampled_from(["x", "y", "z/w", ""]), min_size=5, max_size=5),
)
def test_parameter_captures_round_trip(
    shape: list[str], values: list[str], rests: list[str]
) -> None:
    pattern, path, expected = "", "", {}
    for i, part in enumerate(shape):
        if part == "lit":
            pattern += f"/lit{i}"
            path += f"/lit{i}"
        elif part == "seg":
            pattern += f"/:p{i}"
            path += "/" + values[i]
            expected[f"p{i}"] = values[i]
        else:
            pattern += f"/*r{i}"
            path += "/" + rests[i]
            expected[f"r{i}"] = rests[i]
            break  # a rest segment takes everything after it
    router = build_router("radixtree_uri_with_parameter", [RouteSpec("p", (pattern,))])
    m = router.match(Req(path))
    assert m is not None
    assert (m.params or {}) == expected


@given(specs_st(), st.lists(request_st, min_size=1, max_size=4))
def test_upsert_keeps_insertion_position(specs: list[RouteSpec], reqs: list[Req]) -> None:
    router = build_router("radixtree_uri", specs)
    for spec in specs:
        router.update([replace(spec, payload="v2")], [])
    rebuilt = build_router("radixtree_uri", specs)
    for req in reqs:
        assert answer(router, req) == answer(rebuilt, req)
