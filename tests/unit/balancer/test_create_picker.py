"""create_picker dispatch, config conversion and the public surface."""

from __future__ import annotations

import random

import msgspec
import pytest

import tollway.balancer as balancer
from tollway.balancer import (
    ChashPicker,
    EwmaPicker,
    LeastConnPicker,
    NoServerPicker,
    PickContext,
    RoundRobinPicker,
    Server,
    SingleNodePicker,
    create_picker,
    default_retries,
    servers_from_upstream,
)
from tollway.model import Upstream

TWO = [Server("10.0.0.1", 80, 1), Server("10.0.0.2", 80, 1)]


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("roundrobin", RoundRobinPicker),
        ("chash", ChashPicker),
        ("least_conn", LeastConnPicker),
        ("ewma", EwmaPicker),
        ("no-such-type", RoundRobinPicker),
    ],
)
def test_type_dispatch(kind: str, cls: type) -> None:
    assert isinstance(create_picker(kind, TWO, resource_key="u"), cls)


@pytest.mark.parametrize("kind", ["roundrobin", "chash", "ewma"])
def test_single_node_is_returned_directly(kind: str) -> None:
    only = Server("10.0.0.1", 80, 0)  # even weight 0, even tried, even unhealthy
    picker = create_picker(kind, [only], resource_key="u", is_healthy=lambda s: False)
    assert isinstance(picker, SingleNodePicker)
    ctx = PickContext()
    ctx.tried.add(only.addr)
    assert picker.pick(ctx) == only


def test_single_node_least_conn_uses_the_algorithm() -> None:
    picker = create_picker("least_conn", TWO[:1], resource_key="u")
    assert isinstance(picker, LeastConnPicker)


def test_no_servers() -> None:
    picker = create_picker("roundrobin", [], resource_key="u")
    assert isinstance(picker, NoServerPicker)
    assert picker.pick(PickContext()) is None


def test_default_retries() -> None:
    assert [default_retries(n) for n in (0, 1, 2, 5)] == [0, 0, 1, 4]


def test_server_addr_and_value_semantics() -> None:
    server = Server("[::1]", 8080, 3, priority=1)
    assert server.addr == "[::1]:8080"
    assert server == Server("[::1]", 8080, 3, priority=1)
    assert hash(server) == hash(Server("[::1]", 8080, 3, priority=1))
    with pytest.raises(AttributeError):
        server.port = 1  # type: ignore[misc]


def test_servers_from_upstream_hash_and_array_forms() -> None:
    up = msgspec.convert(
        {"nodes": {"127.0.0.1:1980": 2, "[::1]:81": 1, "example.com": 1}, "scheme": "https"},
        Upstream,
    )
    assert servers_from_upstream(up) == [
        Server("127.0.0.1", 1980, 2),
        Server("[::1]", 81, 1),
        Server("example.com", 443, 1),
    ]
    up = msgspec.convert(
        {
            "nodes": [
                {"host": "a", "weight": 1, "priority": 2},
                {"host": "b", "port": 9, "weight": 0},
            ]
        },
        Upstream,
    )
    assert servers_from_upstream(up) == [Server("a", 80, 1, 2), Server("b", 9, 0)]


def test_seeded_rng_makes_roundrobin_reproducible() -> None:
    def sequence(seed: int) -> list[str]:
        picker = create_picker("roundrobin", TWO * 1, resource_key="u", rng=random.Random(seed))
        ctx = PickContext()
        return [picker.pick(ctx).addr for _ in range(5)]  # type: ignore[union-attr]

    assert sequence(7) == sequence(7)


def test_public_surface() -> None:
    for name in balancer.__all__:
        assert hasattr(balancer, name), name
    assert {
        "create_picker",
        "PickContext",
        "Server",
        "Picker",
        "PickerCache",
        "BalancerState",
        "hash_key_for",
        "default_retries",
    } <= set(balancer.__all__)
