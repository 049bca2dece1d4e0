"""Priority groups: highest level first, next level only when the current one is exhausted."""

from __future__ import annotations

import random

import pytest

from tollway.balancer import (
    BALANCER_TYPES,
    BalancerState,
    PickContext,
    Picker,
    PriorityPicker,
    Server,
    create_picker,
)

HIGH = [Server("10.0.0.1", 80, 1, priority=10), Server("10.0.0.2", 80, 1, priority=10)]
MID = [Server("10.0.0.3", 80, 1, priority=0)]
LOW = [Server("10.0.0.1", 80, 1, priority=-5)]  # same host:port as a HIGH node
ALL = [MID[0], LOW[0], HIGH[0], HIGH[1]]  # config order does not matter


def build(kind: str, is_healthy: object = None, state: BalancerState | None = None) -> Picker:
    return create_picker(
        kind,
        ALL,
        resource_key="u",
        is_healthy=is_healthy,  # type: ignore[arg-type]
        state=state or BalancerState(),
        rng=random.Random(5),
    )


def run_to_exhaustion(picker: Picker, ctx: PickContext) -> list[Server]:
    seen = []
    while (server := picker.pick(ctx)) is not None:
        seen.append(server)
        picker.after_balance(server, ctx, failed=True)
        assert len(seen) < 10
    return seen


@pytest.mark.parametrize("kind", BALANCER_TYPES)
def test_levels_are_used_highest_first_and_tried_resets(kind: str) -> None:
    picker = build(kind)
    assert isinstance(picker, PriorityPicker)
    assert picker.priorities == (10, 0, -5)
    seen = run_to_exhaustion(picker, PickContext(hash_key="k"))
    assert set(seen[:2]) == set(HIGH)
    # LOW repeats a HIGH host:port: allowed, because moving down reset the tried set.
    assert seen[2:] == [MID[0], LOW[0]]


def test_success_stays_on_the_level() -> None:
    picker = build("roundrobin")
    ctx = PickContext()
    for _ in range(6):
        server = picker.pick(ctx)
        assert server in HIGH
        picker.after_balance(server, ctx, failed=False)


def test_unhealthy_level_is_skipped() -> None:
    down = {s.addr for s in HIGH}
    picker = build("roundrobin", lambda s: s.addr not in down)
    # 10.0.0.1:80 is also LOW's addr, so it is down there too: MID is the only healthy one.
    assert picker.pick(PickContext()) == MID[0]


def test_all_unhealthy_everywhere_uses_all_levels() -> None:
    picker = build("roundrobin", lambda s: False)
    assert picker.pick(PickContext()) in HIGH


def test_after_balance_goes_to_the_level_of_the_server() -> None:
    state = BalancerState()
    picker = build("least_conn", state=state)
    ctx = PickContext()
    ctx.level = 1  # as if HIGH were exhausted
    server = picker.pick(ctx)
    assert server == MID[0]
    assert state.inflight("u#0") == {MID[0].addr: 1}
    picker.after_balance(server, ctx, failed=False)
    assert state.inflight("u#0") == {}


def test_exhausted_picker_stays_exhausted() -> None:
    picker = build("chash")
    ctx = PickContext(hash_key="x")
    run_to_exhaustion(picker, ctx)
    assert picker.pick(ctx) is None
