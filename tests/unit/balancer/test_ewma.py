"""ewma: power of two choices on the decayed latency EWMA (fake clock, seeded rng)."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.clock import Clock

from tollway.balancer import BalancerState, PickContext, Picker, Server, create_picker


def nodes(count: int) -> list[Server]:
    return [Server("10.0.0.1", 6000 + i, 1) for i in range(count)]


def build(servers: list[Server], state: BalancerState, seed: int = 0) -> Picker:
    return create_picker("ewma", servers, resource_key="u", state=state, rng=random.Random(seed))


def record(picker: Picker, server: Server, latency: float) -> None:
    picker.after_balance(server, PickContext(), failed=False, latency=latency)


def test_prefers_the_faster_node() -> None:
    clock = Clock()
    state = BalancerState(now=clock)
    fast, slow = nodes(2)
    picker = build([fast, slow], state)
    record(picker, fast, 0.010)
    record(picker, slow, 0.200)
    assert {picker.pick(PickContext()) for _ in range(50)} == {fast}


def test_faster_node_wins_most_picks_among_many() -> None:
    clock = Clock()
    state = BalancerState(now=clock)
    servers = nodes(4)
    picker = build(servers, state, seed=3)
    for i, server in enumerate(servers):
        record(picker, server, 0.050 * (i + 1))
    counts = [0] * 4
    for _ in range(2000):
        picked = picker.pick(PickContext())
        assert picked is not None
        counts[picked.port - 6000] += 1
    # P2C: the fastest wins whenever drawn (1/2 of draws); the slowest never wins.
    assert counts[0] > counts[1] > counts[2] > counts[3] == 0


def test_ewma_update_and_decay() -> None:
    clock = Clock()
    state = BalancerState(now=clock)
    state.record_latency("a:1", 0.1, clock.now)
    assert state.ewma("a:1", clock.now) == 0.1  # first sample taken as is
    clock.now += 10
    w = math.exp(-1)
    assert math.isclose(state.ewma("a:1", clock.now), 0.1 * w)  # scored with rtt = 0
    state.record_latency("a:1", 0.3, clock.now)
    assert math.isclose(state.ewma("a:1", clock.now), 0.1 * w + 0.3 * (1 - w))
    clock.now += 61
    assert state.ewma("a:1", clock.now) == 0.0  # 60 s TTL


def test_state_survives_rebuilds() -> None:
    clock = Clock()
    state = BalancerState(now=clock)
    fast, slow = nodes(2)
    record(build([fast, slow], state), slow, 0.5)
    assert build([fast, slow], state, seed=9).pick(PickContext()) == fast


def test_weights_are_ignored() -> None:
    servers = [Server("10.0.0.1", 6000, 0), Server("10.0.0.1", 6001, 100)]
    picker = build(servers, BalancerState(now=Clock()), seed=1)
    seen = {picker.pick(PickContext()) for _ in range(100)}
    assert seen == set(servers)


@settings(max_examples=150, deadline=None)
@given(
    count=st.integers(2, 6),
    tried=st.sets(st.integers(0, 5)),
    unhealthy=st.sets(st.integers(0, 5)),
    seed=st.integers(0, 1000),
)
def test_never_tried_or_unhealthy(
    count: int, tried: set[int], unhealthy: set[int], seed: int
) -> None:
    servers = nodes(count)
    down = {servers[i].addr for i in unhealthy if i < count}
    picker = create_picker(
        "ewma",
        servers,
        resource_key="u",
        is_healthy=lambda s: s.addr not in down,
        state=BalancerState(now=Clock()),
        rng=random.Random(seed),
    )
    ctx = PickContext()
    ctx.tried.update(servers[i].addr for i in tried if i < count)
    any_healthy = len(down) < count
    allowed = [
        s for s in servers if s.addr not in ctx.tried and (not any_healthy or s.addr not in down)
    ]
    for _ in range(5):
        picked = picker.pick(ctx)
        assert (picked is None) == (not allowed)
        if picked is not None:
            assert picked in allowed
