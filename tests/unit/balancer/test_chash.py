"""chash: the lua-resty-balancer ring, point for point, and its stability properties."""

from __future__ import annotations

import zlib
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from tollway.balancer import ChashPicker, ChashRing, HealthGate, PickContext, Server
from tollway.balancer.chash import key_hash, node_id, node_points


def local(*ports_weights: tuple[int, int]) -> list[Server]:
    return [Server("127.0.0.1", port, weight) for port, weight in ports_weights]


def chash(servers: list[Server], is_healthy: object = None) -> ChashPicker:
    return ChashPicker(servers, HealthGate(servers, is_healthy))  # type: ignore[arg-type]


def port_for(picker: ChashPicker, key: str) -> int:
    server = picker.pick(PickContext(hash_key=key))
    assert server is not None
    return server.port


# --- the ring, computed by hand -------------------------------------------------------------


def test_node_id_replaces_colons_with_nul() -> None:
    assert node_id(Server("127.0.0.1", 1980, 1)) == b"127.0.0.1\x001980"
    # APISIX gsubs every ':' of "host:port", also inside a bracketed IPv6 host.
    assert node_id(Server("[::1]", 80, 1)) == b"[\x00\x001]\x0080"


def test_first_points_are_a_crc32_chain() -> None:
    ident = b"127.0.0.1\x001980"
    # point 0 = crc32(id ++ LE32(0)); point 1 = crc32(id ++ LE32(point 0)).
    p0 = zlib.crc32(ident + b"\x00\x00\x00\x00")
    p1 = zlib.crc32(ident + p0.to_bytes(4, "little"))
    assert (p0, p1) == (3877489599, 4277466901)
    assert node_points(ident, 3)[:2] == [p0, p1]
    p2 = zlib.crc32(ident + p1.to_bytes(4, "little"))
    assert node_points(ident, 3)[2] == p2


def test_ring_is_sorted_with_160_points_per_weight_unit() -> None:
    ring = ChashRing(local((1980, 1), (1981, 2)))
    assert len(ring) == 3 * 160
    assert ring.hashes == sorted(ring.hashes)
    assert Counter(s.port for s in ring.owners) == {1980: 160, 1981: 320}


def test_weights_are_divided_by_their_gcd() -> None:
    big = ChashRing(local((1980, 20), (1981, 40)))
    small = ChashRing(local((1980, 1), (1981, 2)))
    assert big.hashes == small.hashes
    assert [s.port for s in big.owners] == [s.port for s in small.owners]


def test_lookup_takes_first_point_at_or_after_the_key_hash() -> None:
    ring = ChashRing(local((1980, 1), (1981, 1)))
    h = ring.hashes[10]
    assert ring.find(h) == 10
    assert ring.find(h + 1) == 11
    assert ring.find(ring.hashes[-1] + 1) == 0  # wraps
    assert ring.find(0) == 0


def test_key_hash_is_crc32_of_the_key() -> None:
    assert key_hash("127.0.0.1") == zlib.crc32(b"127.0.0.1") == 3619153832


# --- expectations of apisix t/node/chash-balance.t --------------------------------------------


def test_apisix_remote_addr_two_and_three_nodes() -> None:
    assert port_for(chash(local((1980, 1), (1981, 1))), "127.0.0.1") == 1980
    assert port_for(chash(local((1980, 1), (1981, 1), (1982, 1))), "127.0.0.1") == 1982


def test_apisix_query_string_distribution() -> None:
    picker = chash(local((1980, 1), (1981, 1), (1982, 1)))
    counts = Counter(port_for(picker, f"var=2&var2={i}") for i in range(1, 19))
    assert counts == {1982: 5, 1981: 8, 1980: 5}


def test_apisix_arg_device_id_distribution() -> None:
    picker = chash(local((1980, 1), (1981, 1), (1982, 1)))
    counts = Counter(port_for(picker, str(i)) for i in range(1, 19))
    assert counts == {1982: 5, 1981: 7, 1980: 6}


def test_apisix_zero_weight_nodes() -> None:
    picker = chash(local((1980, 1), (1981, 0), (1982, 0)))
    assert {port_for(picker, f"k{i}") for i in range(50)} == {1980}
    assert chash(local((1980, 0), (1981, 0))).pick(PickContext(hash_key="1")) is None


# --- properties --------------------------------------------------------------------------------

keys = st.text(min_size=0, max_size=30)


@settings(max_examples=200, deadline=None)
@given(key=keys)
def test_same_key_same_node_across_rebuilds(key: str) -> None:
    servers = local((1980, 1), (1981, 3), (1982, 2))
    assert port_for(chash(servers), key) == port_for(chash(servers), key)
    assert port_for(chash(servers), key) == port_for(chash(list(reversed(servers))), key)


def ten_nodes() -> list[Server]:
    return [Server(f"10.0.0.{i}", 80, 1) for i in range(1, 11)]


KEYS = [f"user-{i}" for i in range(4000)]


def mapping(servers: list[Server], is_healthy: object = None) -> dict[str, str]:
    picker = chash(servers, is_healthy)
    out = {}
    for key in KEYS:
        server = picker.pick(PickContext(hash_key=key))
        assert server is not None
        out[key] = server.addr
    return out


def test_adding_a_node_moves_about_one_nth_of_keys_all_to_it() -> None:
    before = mapping(ten_nodes())
    new = Server("10.0.0.11", 80, 1)
    after = mapping([*ten_nodes(), new])
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == new.addr for k in moved)
    assert 0.5 / 11 < len(moved) / len(KEYS) < 1.6 / 11


def test_removing_a_node_moves_only_its_keys() -> None:
    before = mapping(ten_nodes())
    gone = ten_nodes()[3]
    after = mapping([s for s in ten_nodes() if s != gone])
    moved = [k for k in KEYS if before[k] != after[k]]
    assert moved == [k for k in KEYS if before[k] == gone.addr]
    assert 0.5 / 10 < len(moved) / len(KEYS) < 1.6 / 10


def test_health_change_moves_no_other_key() -> None:
    before = mapping(ten_nodes())
    down = ten_nodes()[3].addr
    after = mapping(ten_nodes(), lambda s: s.addr != down)
    for key in KEYS:
        if before[key] == down:
            assert after[key] != down
        else:
            assert after[key] == before[key]
    # ... and keys come back when it recovers: the ring never changed.
    assert mapping(ten_nodes(), lambda s: True) == before


def test_unhealthy_owner_goes_to_next_point_owner() -> None:
    servers = local((1980, 1), (1981, 1), (1982, 1))
    ring = ChashRing(servers)
    key = "session-7"
    index = ring.find(key_hash(key))
    owner = ring.owners[index]
    following = next(
        ring.owners[(index + k) % len(ring)]
        for k in range(1, len(ring))
        if ring.owners[(index + k) % len(ring)] != owner
    )
    picker = chash(servers, lambda s: s != owner)
    assert picker.pick(PickContext(hash_key=key)) == following


@settings(max_examples=200, deadline=None)
@given(
    key=keys,
    weights=st.lists(st.integers(0, 4), min_size=1, max_size=6),
    tried=st.sets(st.integers(0, 5)),
    unhealthy=st.sets(st.integers(0, 5)),
)
def test_never_tried_or_unhealthy(
    key: str, weights: list[int], tried: set[int], unhealthy: set[int]
) -> None:
    servers = [Server("10.1.0.1", 9000 + i, w) for i, w in enumerate(weights)]
    down = {servers[i].addr for i in unhealthy if i < len(servers)}
    picker = chash(servers, lambda s: s.addr not in down)
    ctx = PickContext(hash_key=key)
    ctx.tried.update(servers[i].addr for i in tried if i < len(servers))
    any_healthy = len(down) < len(servers)
    allowed = [
        s
        for s in servers
        if s.weight > 0 and s.addr not in ctx.tried and (not any_healthy or s.addr not in down)
    ]
    server = picker.pick(ctx)
    assert (server is None) == (not allowed)
    if server is not None:
        assert server in allowed


def test_retries_visit_every_node_once_in_ring_order() -> None:
    servers = local((1980, 1), (1981, 1), (1982, 1))
    picker = chash(servers)
    ctx = PickContext(hash_key="abc")
    order = []
    while (server := picker.pick(ctx)) is not None:
        order.append(server.port)
        picker.after_balance(server, ctx, failed=True)
    assert sorted(order) == [1980, 1981, 1982]
    ring = ChashRing(servers)
    start = ring.find(key_hash("abc"))
    walk: list[int] = []
    for k in range(len(ring)):
        port = ring.owners[(start + k) % len(ring)].port
        if port not in walk:
            walk.append(port)
    assert order == walk
