"""Roundrobin: the exact lua-resty-balancer sequence and its per-cycle shares."""

from __future__ import annotations

import math
import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from tollway.balancer import (
    HealthCheck,
    HealthGate,
    PickContext,
    Picker,
    RoundRobinPicker,
    Server,
    create_picker,
)


class FixedStart(random.Random):
    """An rng whose randrange returns a chosen start index (get_random_node_id)."""

    def __init__(self, start: int) -> None:
        super().__init__(0)
        self._start = start

    def randrange(self, *args: object, **kwargs: object) -> int:
        return self._start


def servers_with(weights: list[int]) -> list[Server]:
    return [Server("10.0.0.1", 8000 + i, w) for i, w in enumerate(weights)]


def lua_roundrobin(weights: list[int], start: int, count: int) -> list[int]:
    """roundrobin.lua ``find`` transcribed literally: ``next(nodes, last_id)``, with the
    table order being the list order."""
    gcd = 0
    for w in weights:
        gcd = math.gcd(gcd, w)
    max_weight = max(weights)
    last: int | None = start
    cw = max_weight
    out: list[int] = []
    while len(out) < count:
        found = None
        while found is None:
            if last is None:
                last = 0
            elif last + 1 < len(weights):
                last += 1
            else:
                last = None
            if last is None:
                cw -= gcd
                if cw <= 0:
                    cw = max_weight
                continue
            if weights[last] >= cw:
                found = last
        out.append(found)
    return out


def picks(picker: Picker, count: int, ctx: PickContext | None = None) -> list[int]:
    ctx = ctx or PickContext()
    out: list[int] = []
    for _ in range(count):
        server = picker.pick(ctx)
        assert server is not None
        out.append(server.port - 8000)
    return out


def rr(
    weights: list[int], start: int = 0, is_healthy: HealthCheck | None = None
) -> RoundRobinPicker:
    servers = servers_with(weights)
    return RoundRobinPicker(servers, HealthGate(servers, is_healthy), FixedStart(start))


def test_lvs_sequence_is_interleaved_not_smooth() -> None:
    # Start after node 0 with cw=5: b, c are below 5, so a pass ends; cw=4: a; 3: a; 2: a;
    # 1: a, b, c; 5: a. (nginx smooth WRR would give a,a,b,a,c,a,a.)
    assert picks(rr([5, 1, 1], start=0), 14) == [*[0, 0, 0, 0, 1, 2], *[0, 0, 0, 0, 0, 1, 2, 0]]


def test_start_after_last_node_lowers_cw_first() -> None:
    # next(nodes, last) is nil at once, so cw -= gcd before the first pick: cw=2: a, b;
    # cw=1: a, b, c; cw=3: a.
    assert picks(rr([3, 2, 1], start=2), 12) == [0, 1, 0, 1, 2, 0] * 2


weights_lists = st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=7).filter(any)


@settings(max_examples=150, deadline=None)
@given(weights=weights_lists, data=st.data())
def test_matches_lua_reference_from_every_start(weights: list[int], data: st.DataObject) -> None:
    start = data.draw(st.integers(min_value=0, max_value=len(weights) - 1))
    cycle = sum(weights) // math.gcd(*weights)
    assert picks(rr(weights, start), 2 * cycle) == lua_roundrobin(weights, start, 2 * cycle)


@settings(max_examples=150, deadline=None)
@given(weights=weights_lists, seed=st.integers(0, 2**32), warmup=st.integers(0, 50))
def test_each_cycle_gives_exact_shares(weights: list[int], seed: int, warmup: int) -> None:
    servers = servers_with(weights)
    picker = create_picker("roundrobin", servers, resource_key="u", rng=random.Random(seed))
    if len(servers) == 1:
        return  # single node: returned directly
    gcd = math.gcd(*weights)
    cycle = sum(weights) // gcd
    ctx = PickContext()
    for _ in range(warmup):  # any window of one cycle length, not only aligned ones
        picker.pick(ctx)
    counts = Counter(picks(picker, cycle, ctx))
    assert counts == Counter({i: w // gcd for i, w in enumerate(weights) if w > 0})


def test_all_zero_weights_rotate_evenly() -> None:
    assert Counter(picks(rr([0, 0, 0]), 30)) == Counter({0: 10, 1: 10, 2: 10})


def test_zero_weight_node_is_never_used_even_when_others_are_tried() -> None:
    picker = rr([0, 2, 1])
    ctx = PickContext()
    ctx.tried.update({"10.0.0.1:8001", "10.0.0.1:8002"})
    assert picker.pick(ctx) is None


@settings(max_examples=200, deadline=None)
@given(
    weights=weights_lists,
    tried=st.sets(st.integers(0, 6)),
    unhealthy=st.sets(st.integers(0, 6)),
    seed=st.integers(0, 1000),
)
def test_never_tried_or_unhealthy(
    weights: list[int], tried: set[int], unhealthy: set[int], seed: int
) -> None:
    servers = servers_with(weights)
    down = {servers[i].addr for i in unhealthy if i < len(servers)}

    def is_healthy(s: Server) -> bool:
        return s.addr not in down

    picker = RoundRobinPicker(servers, HealthGate(servers, is_healthy), random.Random(seed))
    ctx = PickContext()
    ctx.tried.update(servers[i].addr for i in tried if i < len(servers))
    any_healthy = len(down) < len(servers)
    allowed = [
        s
        for s in servers
        if s.weight > 0 and s.addr not in ctx.tried and (not any_healthy or s.addr not in down)
    ]
    for _ in range(5):
        server = picker.pick(ctx)
        if not allowed:
            assert server is None
        else:
            assert server in allowed


def test_retry_walks_to_untried_nodes_then_gives_up() -> None:
    picker = rr([1, 1, 1])
    ctx = PickContext()
    seen = []
    while (server := picker.pick(ctx)) is not None:
        seen.append(server.addr)
        picker.after_balance(server, ctx, failed=True)
    assert sorted(seen) == [s.addr for s in servers_with([1, 1, 1])]


def test_success_does_not_mark_tried() -> None:
    picker = rr([1, 1])
    ctx = PickContext()
    server = picker.pick(ctx)
    assert server is not None
    picker.after_balance(server, ctx, failed=False)
    assert ctx.tried == set()


def test_all_unhealthy_uses_all() -> None:
    picker = rr([1, 1], is_healthy=lambda s: False)
    assert sorted(picks(picker, 4)) == [0, 0, 1, 1]


def test_unhealthy_node_is_skipped_and_comes_back() -> None:
    down = {"10.0.0.1:8000"}
    picker = rr([1, 1, 1], is_healthy=lambda s: s.addr not in down)
    assert 0 not in picks(picker, 9)
    down.clear()
    assert Counter(picks(picker, 9)) == Counter({0: 3, 1: 3, 2: 3})
