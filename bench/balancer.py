"""Picks per second of each balancer at 3 and 100 nodes (run on demand, not a test).

    .venv/bin/python bench/balancer.py [--picks N]

Each row times ``pick`` followed by ``after_balance(failed=False)`` (least_conn needs the
decrement to stay in a steady state; ewma records a latency), cycling over 1024 prebuilt
request contexts with distinct chash keys. The baseline is ``rng.choice(servers)`` timed in the
same loop shape, so the last column is comparable across machines. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from tollway.balancer import BalancerState, PickContext, Picker, Server, create_picker

CONTEXTS = 1024
REPEATS = 5


def make_servers(count: int, rng: random.Random) -> list[Server]:
    if count == 3:
        return [Server("127.0.0.1", 1980 + i, w) for i, w in enumerate((1, 2, 3))]
    return [
        Server(f"10.0.{i // 250}.{i % 250 + 1}", 8080, rng.randint(1, 10)) for i in range(count)
    ]


def time_loop(
    step: Callable[[PickContext], object], contexts: list[PickContext], picks: int
) -> float:
    """Best seconds per pick over REPEATS runs."""
    best = float("inf")
    rounds = max(picks // len(contexts), 1)
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(rounds):
            for ctx in contexts:
                step(ctx)
        best = min(best, (time.perf_counter() - start) / (rounds * len(contexts)))
    return best


def picker_step(picker: Picker, latency: float | None) -> Callable[[PickContext], object]:
    pick = picker.pick
    after = picker.after_balance

    def step(ctx: PickContext) -> object:
        server = pick(ctx)
        if server is not None:
            after(server, ctx, failed=False, latency=latency)
        return server

    return step


def baseline_step(servers: list[Server], rng: random.Random) -> Callable[[PickContext], object]:
    choice = rng.choice

    def step(ctx: PickContext) -> object:
        return choice(servers)

    return step


def health_check(servers: list[Server]) -> Callable[[Server], bool]:
    healthy = {s.addr for s in servers}

    def is_healthy(server: Server) -> bool:
        return server.addr in healthy

    return is_healthy


def bench_nodes(count: int, picks: int) -> list[tuple[str, int, float, float]]:
    rng = random.Random(42)
    contexts = [PickContext(hash_key=f"client-{i}") for i in range(CONTEXTS)]
    servers = make_servers(count, rng)
    baseline = time_loop(baseline_step(servers, rng), contexts, picks)
    rows = [("random.choice (baseline)", count, baseline, baseline)]
    variants = [(kind, kind, False) for kind in ("roundrobin", "chash", "least_conn", "ewma")]
    variants += [(f"{kind} + is_healthy", kind, True) for kind in ("roundrobin", "chash")]
    for label, kind, with_health in variants:
        picker = create_picker(
            kind,
            servers,
            resource_key="/upstreams/bench",
            is_healthy=health_check(servers) if with_health else None,
            state=BalancerState(),
            rng=random.Random(1),
        )
        latency = 0.005 if kind == "ewma" else None
        seconds = time_loop(picker_step(picker, latency), contexts, picks)
        rows.append((label, count, seconds, baseline))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--picks", type=int, default=200_000, help="picks per timed run")
    args = parser.parse_args()
    print("| balancer | nodes | picks/s | ns/pick | x baseline time |")
    print("|---|---:|---:|---:|---:|")
    rows = bench_nodes(3, args.picks) + bench_nodes(100, args.picks)
    for label, count, seconds, baseline in rows:
        print(
            f"| {label} | {count} | {1 / seconds:,.0f} | {seconds * 1e9:,.0f} "
            f"| {seconds / baseline:.1f} |"
        )


if __name__ == "__main__":
    main()
