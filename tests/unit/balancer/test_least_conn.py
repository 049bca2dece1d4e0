"""least_conn: lowest (1 + inflight) / weight, state shared across picker rebuilds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tollway.balancer import BalancerState, PickContext, Picker, Server, create_picker


def nodes(*weights: int) -> list[Server]:
    return [Server("10.0.0.1", 7000 + i, w) for i, w in enumerate(weights)]


def build(servers: list[Server], state: BalancerState, is_healthy: object = None) -> Picker:
    return create_picker(
        "least_conn",
        servers,
        resource_key="/upstreams/1",
        state=state,
        is_healthy=is_healthy,  # type: ignore[arg-type]
    )


def take(picker: Picker) -> Server:
    server = picker.pick(PickContext())
    assert server is not None
    return server


def test_prefers_the_least_loaded() -> None:
    servers = nodes(1, 1, 1)
    picker = build(servers, BalancerState())
    held = [take(picker) for _ in range(3)]
    assert sorted(s.port for s in held) == [7000, 7001, 7002]  # one each
    picker.after_balance(held[1], PickContext(), failed=False)
    assert take(picker) == held[1]  # the only one with a free slot


def test_weights_scale_the_load() -> None:
    servers = nodes(3, 1)
    picker = build(servers, BalancerState())
    held = [take(picker).port for _ in range(8)]
    assert held.count(7000) == 6 and held.count(7001) == 2


def test_state_survives_rebuilds() -> None:
    state = BalancerState()
    servers = nodes(1, 1)
    old = build(servers, state)
    busy = take(old)
    new = build(servers, state)
    other = take(new)
    assert other != busy
    new.after_balance(busy, PickContext(), failed=False)  # finished on the new picker
    assert state.inflight("/upstreams/1#0") == {other.addr: 1}
    old.after_balance(other, PickContext(), failed=False)
    assert state.inflight("/upstreams/1#0") == {}


def test_sequential_requests_spread_over_idle_nodes() -> None:
    picker = build(nodes(1, 1, 1), BalancerState())
    seen = []
    for _ in range(6):
        server = take(picker)
        seen.append(server.port)
        picker.after_balance(server, PickContext(), failed=False)
    assert sorted(seen) == [7000, 7000, 7001, 7001, 7002, 7002]


def test_tried_are_skipped_and_exhaustion_is_none() -> None:
    picker = build(nodes(1, 1), BalancerState())
    ctx = PickContext()
    first = picker.pick(ctx)
    assert first is not None
    picker.after_balance(first, ctx, failed=True)
    second = picker.pick(ctx)
    assert second is not None and second != first
    picker.after_balance(second, ctx, failed=True)
    assert picker.pick(ctx) is None


def test_single_node_still_respects_tried() -> None:
    # APISIX returns a lone node directly except for least_conn.
    picker = build(nodes(1), BalancerState())
    ctx = PickContext()
    server = picker.pick(ctx)
    assert server is not None
    picker.after_balance(server, ctx, failed=True)
    assert picker.pick(ctx) is None


def test_zero_weight_is_last_resort() -> None:
    servers = nodes(0, 1)
    picker = build(servers, BalancerState())
    assert {take(picker).port for _ in range(5)} == {7001}
    ctx = PickContext()
    ctx.tried.add(servers[1].addr)
    assert picker.pick(ctx) == servers[0]


@settings(max_examples=150, deadline=None)
@given(
    weights=st.lists(st.integers(0, 5), min_size=2, max_size=6),
    load=st.lists(st.integers(0, 5), min_size=6, max_size=6),
    tried=st.sets(st.integers(0, 5)),
    unhealthy=st.sets(st.integers(0, 5)),
)
def test_picks_a_minimum_score_among_allowed(
    weights: list[int], load: list[int], tried: set[int], unhealthy: set[int]
) -> None:
    servers = nodes(*weights)
    state = BalancerState()
    table = state.least_conn_table("/upstreams/1#0").counts
    for server, count in zip(servers, load, strict=False):
        if count:
            table[server.addr] = count
    down = {servers[i].addr for i in unhealthy if i < len(servers)}
    picker = build(servers, state, lambda s: s.addr not in down)
    ctx = PickContext()
    ctx.tried.update(servers[i].addr for i in tried if i < len(servers))
    any_healthy = len(down) < len(servers)
    allowed = [
        s for s in servers if s.addr not in ctx.tried and (not any_healthy or s.addr not in down)
    ]

    def score(s: Server) -> float:
        return (1 + table.get(s.addr, 0)) / s.weight if s.weight else float("inf")

    scores = {s.addr: score(s) for s in allowed}
    picked = picker.pick(ctx)
    if not allowed:
        assert picked is None
        return
    assert picked in allowed
    assert scores[picked.addr] == min(scores.values())


@settings(max_examples=100, deadline=None)
@given(
    weights=st.lists(st.integers(0, 4), min_size=2, max_size=5),
    ops=st.lists(
        st.tuples(st.sampled_from(["pick", "release", "rebuild"]), st.integers(0, 30)),
        max_size=120,
    ),
)
def test_every_pick_is_a_minimum_over_a_long_run(
    weights: list[int], ops: list[tuple[str, int]]
) -> None:
    """Picks, releases and rebuilds in any order: the lazy heap always agrees with a scan
    of the shared counts, including for a picker left behind by a rebuild."""
    servers = nodes(*weights)
    state = BalancerState()
    pickers = [build(servers, state)]
    held: list[tuple[Picker, Server]] = []
    expected: dict[str, int] = {}

    def score(s: Server) -> float:
        return (1 + expected.get(s.addr, 0)) / s.weight if s.weight else float("inf")

    for op, arg in ops:
        if op == "rebuild":
            pickers.append(build(servers, state))
        elif op == "release" and held:
            picker, server = held.pop(arg % len(held))
            picker.after_balance(server, PickContext(), failed=False)
            expected[server.addr] -= 1
        elif op == "pick":
            picker = pickers[arg % len(pickers)]  # old pickers too
            ctx = PickContext()
            ctx.tried.update(s.addr for i, s in enumerate(servers) if arg >> 2 & (1 << i))
            allowed = [s for s in servers if s.addr not in ctx.tried]
            picked = picker.pick(ctx)
            assert (picked is None) == (not allowed)
            if picked is not None:
                assert score(picked) == min(score(s) for s in allowed)
                held.append((picker, picked))
                expected[picked.addr] = expected.get(picked.addr, 0) + 1
        live = {addr: n for addr, n in expected.items() if n}
        assert state.inflight("/upstreams/1#0") == live


def test_repeated_addr_is_one_node_with_the_last_weight() -> None:
    a1 = Server("10.0.0.1", 7000, 1)
    b = Server("10.0.0.1", 7001, 2)
    a5 = Server("10.0.0.1", 7000, 5)
    picker = build([a1, b, a5], BalancerState())
    held = [take(picker) for _ in range(7)]
    assert sum(1 for s in held if s.port == 7000) == 5
    assert all(s in (a5, b) for s in held)


def test_heap_stays_bounded() -> None:
    state = BalancerState()
    picker = build(nodes(1, 2, 3), state)
    for _ in range(2000):
        server = take(picker)
        picker.after_balance(server, PickContext(), failed=False)
    table = state.least_conn_table("/upstreams/1#0")
    assert len(table.heap) <= 2 * 3 + 64
    assert table.counts == {}
