"""Router.update / RouterBuilder: in-place changes keep the rules of a full build."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from tests.support.router import Req

from tollway.router import RouterBuilder, RouteSpec, build_router
from tollway.router.table import Entry, FullEntry


def win(router: Any, path: str, **kw: Any) -> str | None:
    m = router.match(Req(path, **kw))
    return None if m is None else m.id


@pytest.mark.parametrize("kind", ["radixtree_uri", "radixtree_host_uri"])
def test_upsert_of_existing_id_keeps_its_position(kind: str) -> None:
    router = build_router(kind, [RouteSpec("a", ("/x",)), RouteSpec("b", ("/x",))])
    assert win(router, "/x") == "a"
    router.update([RouteSpec("a", ("/x",), payload=2)], [])
    assert win(router, "/x") == "a"
    m = router.match(Req("/x"))
    assert m is not None and m.payload == 2


def test_new_id_is_appended_and_a_readded_id_goes_last() -> None:
    router = build_router("radixtree_uri", [RouteSpec("a", ("/x",))])
    router.update([RouteSpec("b", ("/x",))], [])
    assert win(router, "/x") == "a"
    router.update([], ["a"])
    assert win(router, "/x") == "b"
    router.update([RouteSpec("a", ("/x",))], [])
    assert win(router, "/x") == "b"


def test_update_moves_a_route_to_new_uris_and_hosts() -> None:
    router = build_router("radixtree_host_uri", [RouteSpec("r", ("/old",), hosts=("a.com",))])
    router.update([RouteSpec("r", ("/new/*",), hosts=("*.b.com",))], [])
    assert win(router, "/old", host="a.com") is None
    assert win(router, "/new/x", host="c.b.com") == "r"
    assert len(router) == 1


def test_deletes_apply_before_upserts_and_unknown_ids_are_ignored() -> None:
    router = build_router("radixtree_uri", [RouteSpec("a", ("/x",))])
    router.update([RouteSpec("a", ("/y",))], ["a", "nope"])
    assert win(router, "/y") == "a" and win(router, "/x") is None


def test_a_bad_upsert_keeps_the_live_version() -> None:
    router = build_router("radixtree_uri", [RouteSpec("a", ("/x",))])
    router.update([RouteSpec("a", ("/y",), vars=[["arg_x", "bogus", 1]])], [])
    assert win(router, "/x") == "a" and win(router, "/y") is None


def test_empty_host_tables_are_dropped() -> None:
    router = build_router("radixtree_host_uri", [RouteSpec("r", ("/a",), hosts=("*.x.com", "y"))])
    router.update([], ["r"])
    assert router._exact_hosts == {} and len(router._wild_hosts) == 0


def test_builder_in_chunks_equals_build_router() -> None:
    specs = [RouteSpec(str(i), (f"/p{i % 7}/*",), priority=i % 3) for i in range(50)]
    builder = RouterBuilder("radixtree_uri", delete_uri_tail_slash=True)
    for s in specs:
        builder.add(s)
    built = builder.finish()
    full = build_router("radixtree_uri", specs, delete_uri_tail_slash=True)
    for i in range(7):
        assert win(built, f"/p{i}/q/") == win(full, f"/p{i}/q/") is not None
    assert len(built) == len(full) == 50


def test_duplicate_ids_in_a_build_keep_the_first_place_and_the_last_value() -> None:
    router = build_router(
        "radixtree_uri",
        [
            RouteSpec("a", ("/x",), payload=1),
            RouteSpec("b", ("/x",)),
            RouteSpec("a", ("/x",), payload=3),
        ],
    )
    m = router.match(Req("/x"))
    assert m is not None and m.id == "a" and m.payload == 3 and len(router) == 2


def test_builder_refuses_use_after_finish() -> None:
    builder = RouterBuilder("radixtree_uri")
    builder.add_many([RouteSpec("a", ("/a",))])
    router = builder.finish()
    assert len(router) == 1
    with pytest.raises(RuntimeError):
        builder.add(RouteSpec("b", ("/b",)))
    with pytest.raises(RuntimeError):
        builder.finish()


def test_deleting_the_last_mid_segment_prefix_keeps_slash_prefixes_working() -> None:
    router = build_router("radixtree_uri", [RouteSpec("mid", ("/a*",)), RouteSpec("s", ("/a/*",))])
    assert win(router, "/a/x") == "s" and win(router, "/ab") == "mid"
    router.update([], ["mid"])
    assert win(router, "/a/x") == "s" and win(router, "/ab") is None
    router.update([], ["s"])
    assert win(router, "/a/x") is None and len(router) == 0


def test_host_tables_created_or_dropped_after_a_lookup_are_seen() -> None:
    router = build_router("radixtree_host_uri", [RouteSpec("hostless", ("/a",))])
    assert win(router, "/a", host="b.com") == "hostless"  # remembers: no table for b.com
    router.update([RouteSpec("b", ("/a",), hosts=("b.com",))], [])
    assert win(router, "/a", host="b.com") == "b"
    router.update([RouteSpec("w", ("/a",), hosts=("*.com",))], ["b"])
    assert win(router, "/a", host="b.com") == "w"
    router.update([], ["w"])
    assert win(router, "/a", host="b.com") == "hostless"


def test_build_restores_the_garbage_collector_state() -> None:
    assert gc.isenabled()
    build_router("radixtree_uri", [RouteSpec("a", ("/a",))])
    assert gc.isenabled()
    gc.disable()
    try:
        build_router("radixtree_uri", [RouteSpec("a", ("/a",))])
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_entries_are_compact_for_plain_routes_and_full_for_conditions() -> None:
    router = build_router(
        "radixtree_uri",
        [
            RouteSpec("exact", ("/a",), methods=frozenset({"GET"})),
            RouteSpec("rest", ("/b/*",)),
            RouteSpec("host", ("/c",), hosts=("c.com",)),
            RouteSpec("param", ("/d/*/e",)),
            RouteSpec("ip", ("/f",), remote_addrs=("10.0.0.0/8",)),
        ],
    )
    kinds = {rid: type(router._placed[rid]) for rid in router}
    assert kinds == {
        "exact": Entry,
        "rest": Entry,
        "host": FullEntry,
        "param": FullEntry,
        "ip": FullEntry,
    }
    assert win(router, "/a", method="POST") is None and win(router, "/a") == "exact"
    m = router.match(Req("/b/x/y"))
    assert m is not None and m.id == "rest" and m.params == {":ext": "x/y"}
    assert win(router, "/c", host="d.com") is None and win(router, "/c", host="c.com") == "host"
    assert win(router, "/f", remote_addr="11.0.0.1") is None
    assert win(router, "/f", remote_addr="10.1.2.3") == "ip"
    # A plain route that gains a condition becomes a FullEntry in place, and back
    router.update([RouteSpec("exact", ("/a",), vars=[["arg_k", "==", "v"]])], [])
    assert type(router._placed["exact"]) is FullEntry and win(router, "/a") is None
    router.update([RouteSpec("exact", ("/a",))], [])
    assert type(router._placed["exact"]) is Entry and win(router, "/a", method="POST") == "exact"


def test_a_route_without_uris_keeps_its_place_until_deleted() -> None:
    router = build_router("radixtree_uri", [RouteSpec("a", (), payload=1), RouteSpec("b", ("/x",))])
    assert "a" in router and len(router) == 2 and router.payload("a") == 1
    router.update([RouteSpec("a", ("/x",), payload=2)], [])
    m = router.match(Req("/x"))
    assert m is not None and m.id == "a" and m.payload == 2  # its first place, before b
    router.update([RouteSpec("a", ())], ["a"])  # deleted, then a new route: it goes last
    router.update([RouteSpec("a", ("/x",))], [])
    assert win(router, "/x") == "b"
    router.repoint("b", 9)
    assert router.payload("b") == 9 and router.payload("nope") is None
