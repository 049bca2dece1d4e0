"""Which route wins (apisix.md §2.2, §2.3): path forms, ordering, conditions, router kinds."""

from __future__ import annotations

from typing import Any

import pytest
from tests.support.router import Req

from tollway.router import KINDS, RouteSpec, build_router


def spec(id: str, *uris: str, **kw: Any) -> RouteSpec:
    return RouteSpec(id=id, uris=uris, **kw)


def winner(kind: str, specs: list[RouteSpec], path: str, **req: Any) -> str | None:
    m = build_router(kind, specs).match(Req(path, **req))
    return None if m is None else m.id


ALL_KINDS = sorted(KINDS)


def test_unknown_kind_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        build_router("radixtree_sni", [])


# --------------------------------------------------------------------------- path forms


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/blog/foo/bar", "bar"),
        ("/blog/foo/a/b/c", "a"),
        ("/blog/foo/gloo", "foo"),
        ("/blog/bar", None),
    ],
)
def test_docs_example(kind: str, path: str, expected: str | None) -> None:
    specs = [
        spec("foo", "/blog/foo/*"),
        spec("a", "/blog/foo/a/*"),
        spec("c", "/blog/foo/c/*"),
        spec("bar", "/blog/foo/bar"),
    ]
    assert winner(kind, specs, path) == expected


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_prefix_forms(kind: str) -> None:
    star = [spec("s", "/foo*")]
    slash_star = [spec("s", "/foo/*")]
    assert winner(kind, star, "/foo") == "s"
    assert winner(kind, star, "/foobar") == "s"
    assert winner(kind, star, "/foo/x") == "s"
    assert winner(kind, star, "/fo") is None
    assert winner(kind, slash_star, "/foo/") == "s"
    assert winner(kind, slash_star, "/foo/x/y") == "s"
    assert winner(kind, slash_star, "/foo") is None


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_star_in_the_middle_matches_anything_including_slashes(kind: str) -> None:
    specs = [spec("m", "/a/*/c")]
    assert winner(kind, specs, "/a/x/c") == "m"
    assert winner(kind, specs, "/a/x/y/c") == "m"
    assert winner(kind, specs, "/a/x/c/d") is None
    assert winner(kind, specs, "/b/x/c") is None


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_exact_path_only_matches_itself(kind: str) -> None:
    specs = [spec("e", "/a/b")]
    assert winner(kind, specs, "/a/b") == "e"
    assert winner(kind, specs, "/a/b/") is None
    assert winner(kind, specs, "/a") is None


def test_root_catch_all() -> None:
    for kind in ALL_KINDS:
        assert winner(kind, [spec("all", "/*")], "/anything/at/all") == "all"
        assert winner(kind, [spec("all", "/*")], "/") == "all"


# --------------------------------------------------------------------------- ordering


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_exact_beats_prefix_even_with_lower_priority(kind: str) -> None:
    specs = [spec("prefix", "/a/*", priority=100), spec("exact", "/a/b", priority=-5)]
    assert winner(kind, specs, "/a/b") == "exact"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_deeper_prefix_beats_shallower_regardless_of_priority(kind: str) -> None:
    specs = [spec("short", "/a/*", priority=100), spec("long", "/a/b/*")]
    assert winner(kind, specs, "/a/b/c") == "long"
    assert winner(kind, specs, "/a/x") == "short"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_priority_orders_routes_of_the_same_path(kind: str) -> None:
    specs = [spec("low", "/a"), spec("high", "/a", priority=5), spec("neg", "/a", priority=-1)]
    assert winner(kind, specs, "/a") == "high"
    specs = [spec("low", "/a/*"), spec("high", "/a/*", priority=5)]
    assert winner(kind, specs, "/a/x") == "high"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_insertion_order_breaks_ties(kind: str) -> None:
    assert winner(kind, [spec("first", "/a"), spec("second", "/a")], "/a") == "first"
    assert winner(kind, [spec("first", "/a/*"), spec("second", "/a/*")], "/a/x") == "first"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_longer_original_path_first_at_the_same_prefix(kind: str) -> None:
    # Both are stored at prefix "/a/"; at equal priority the longer pattern is tried first.
    specs = [spec("short", "/a/*"), spec("long", "/a/*/tail")]
    assert winner(kind, specs, "/a/x/tail") == "long"
    assert winner(kind, specs, "/a/x/other") == "short"
    # ...but priority still comes before length.
    specs = [spec("short", "/a/*", priority=1), spec("long", "/a/*/tail")]
    assert winner(kind, specs, "/a/x/tail") == "short"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_first_route_whose_conditions_hold_wins(kind: str) -> None:
    specs = [
        spec("post", "/a", priority=2, methods=frozenset({"POST"})),
        spec("any", "/a", priority=1),
    ]
    assert winner(kind, specs, "/a", method="POST") == "post"
    assert winner(kind, specs, "/a", method="GET") == "any"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_falls_back_to_shorter_prefix_when_conditions_fail(kind: str) -> None:
    specs = [spec("deep", "/a/b/*", methods=frozenset({"PUT"})), spec("shallow", "/a/*")]
    assert winner(kind, specs, "/a/b/c") == "shallow"
    assert winner(kind, specs, "/a/b/c", method="PUT") == "deep"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_a_route_with_several_uris(kind: str) -> None:
    specs = [spec("multi", "/x", "/y/*")]
    assert winner(kind, specs, "/x") == "multi"
    assert winner(kind, specs, "/y/z") == "multi"
    assert winner(kind, specs, "/z") is None


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_delete_uri_tail_slash(kind: str) -> None:
    router = build_router(kind, [spec("e", "/a/b"), spec("root", "/")], delete_uri_tail_slash=True)
    m = router.match(Req("/a/b/"))
    assert m is not None and m.id == "e"
    m = router.match(Req("/"))
    assert m is not None and m.id == "root"  # "/" is kept
    plain = build_router(kind, [spec("e", "/a/b")])
    assert plain.match(Req("/a/b/")) is None


# --------------------------------------------------------------------------- conditions


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_methods(kind: str) -> None:
    specs = [spec("r", "/a", methods=frozenset({"GET", "POST"}))]
    assert winner(kind, specs, "/a", method="POST") == "r"
    assert winner(kind, specs, "/a", method="DELETE") is None
    assert winner(kind, specs, "/a", method="get") is None  # methods are case-sensitive
    assert winner(kind, [spec("r", "/a", methods=frozenset())], "/a", method="FOO") == "r"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_remote_addrs_with_cidr_host_bits(kind: str) -> None:
    specs = [spec("r", "/a", remote_addrs=("127.0.0.3/24", "2001:db8::/32", "10.0.0.1"))]
    assert winner(kind, specs, "/a", remote_addr="127.0.0.1") == "r"
    assert winner(kind, specs, "/a", remote_addr="10.0.0.1") == "r"
    assert winner(kind, specs, "/a", remote_addr="2001:db8::5") == "r"
    assert winner(kind, specs, "/a", remote_addr="127.0.1.1") is None
    assert winner(kind, specs, "/a", remote_addr="unix:") is None


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("a.foo.com", True),
        ("a.b.foo.com", True),
        (".foo.com", True),
        ("foo.com", False),
        ("xfoo.com", False),
        ("exact.org", True),
        ("sub.exact.org", False),
    ],
)
def test_hosts(kind: str, host: str, expected: bool) -> None:
    specs = [spec("r", "/a", hosts=("*.foo.com", "exact.org"))]
    assert (winner(kind, specs, "/a", host=host) == "r") is expected


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_bare_star_host_matches_any_host(kind: str) -> None:
    assert winner(kind, [spec("r", "/a", hosts=("*",))], "/a", host="whatever.io") == "r"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_hosts_are_case_insensitive(kind: str) -> None:
    assert winner(kind, [spec("r", "/a", hosts=("API.Example.COM",))], "/a", host="api.example.com")


def test_host_with_port_is_compared_with_the_host_header_in_radixtree_uri() -> None:
    specs = [spec("r", "/a", hosts=("foo.com:8080",))]
    req = {"host": "foo.com", "vars": {"http_host": "foo.com:8080"}}
    assert winner("radixtree_uri", specs, "/a", **req) == "r"
    assert winner("radixtree_uri", specs, "/a", host="foo.com") is None


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_vars(kind: str) -> None:
    specs = [
        spec("beta", "/a", priority=1, vars=[["http_x_beta", "==", "1"]]),
        spec("main", "/a"),
    ]
    assert winner(kind, specs, "/a", vars={"http_x_beta": "1"}) == "beta"
    assert winner(kind, specs, "/a") == "main"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_all_conditions_together(kind: str) -> None:
    r = spec(
        "r",
        "/a",
        methods=frozenset({"GET"}),
        remote_addrs=("10.0.0.0/8",),
        hosts=("api.test",),
        vars=[["arg_k", "==", "v"]],
    )
    ok = {"method": "GET", "remote_addr": "10.1.1.1", "host": "api.test", "vars": {"arg_k": "v"}}
    assert winner(kind, [r], "/a", **ok) == "r"
    for key, bad in [
        ("method", "POST"),
        ("remote_addr", "11.0.0.1"),
        ("host", "other"),
        ("vars", {}),
    ]:
        assert winner(kind, [r], "/a", **{**ok, key: bad}) is None


# --------------------------------------------------------------------------- host_uri vs uri


def test_host_route_beats_exact_hostless_route_in_radixtree_host_uri() -> None:
    # t/router/radixtree-host-uri2.t
    specs = [spec("wild", "/*", hosts=("*.test.com",)), spec("port", "/server_port")]
    assert winner("radixtree_host_uri", specs, "/server_port", host="www.test.com") == "wild"
    assert winner("radixtree_host_uri", specs, "/server_port", host="other.com") == "port"


def test_exact_hostless_route_wins_in_radixtree_uri() -> None:
    specs = [spec("wild", "/*", hosts=("*.test.com",)), spec("port", "/server_port")]
    assert winner("radixtree_uri", specs, "/server_port", host="www.test.com") == "port"
    assert winner("radixtree_uri_with_parameter", specs, "/server_port", host="www.test.com") == (
        "port"
    )


def test_host_uri_order_exact_host_then_longest_wildcard_then_star() -> None:
    specs = [
        spec("star", "/*", hosts=("*",), priority=100),
        spec("short", "/*", hosts=("*.com",), priority=50),
        spec("long", "/*", hosts=("*.b.com",)),
        spec("exact", "/x", hosts=("a.b.com",)),
        spec("hostless", "/x", priority=1000),
    ]
    k = "radixtree_host_uri"
    assert winner(k, specs, "/x", host="a.b.com") == "exact"
    assert winner(k, specs, "/y", host="a.b.com") == "long"  # the exact host's table has no /y
    assert winner(k, specs, "/y", host="c.com") == "short"
    assert winner(k, specs, "/y", host="c.org") == "star"


def test_host_uri_falls_back_to_hostless_routes() -> None:
    specs = [spec("hosted", "/a", hosts=("a.com",)), spec("hostless", "/*")]
    k = "radixtree_host_uri"
    assert winner(k, specs, "/b", host="a.com") == "hostless"
    assert winner(k, specs, "/a", host="a.com") == "hosted"
    assert winner(k, specs, "/a", host="b.com") == "hostless"


def test_host_uri_a_route_with_several_hosts() -> None:
    specs = [spec("r", "/a", hosts=("a.com", "*.b.com"))]
    k = "radixtree_host_uri"
    assert winner(k, specs, "/a", host="a.com") == "r"
    assert winner(k, specs, "/a", host="x.b.com") == "r"
    assert winner(k, specs, "/a", host="b.com") is None


def test_host_uri_priority_applies_within_one_host_table() -> None:
    specs = [
        spec("low", "/a", hosts=("a.com",)),
        spec("high", "/a", hosts=("a.com",), priority=3),
    ]
    assert winner("radixtree_host_uri", specs, "/a", host="a.com") == "high"


def test_payload_is_returned() -> None:
    router = build_router("radixtree_uri", [RouteSpec("1", ("/a",), payload={"upstream": 1})])
    m = router.match(Req("/a"))
    assert m is not None and m.payload == {"upstream": 1} and m.params is None


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_prefixes_of_every_depth_and_mid_segment_are_tried_longest_first(kind: str) -> None:
    # "/a/b/" and "/" end at a segment boundary; "/a/b/c" and "/a" end mid-segment.
    specs = [
        spec("root", "/*"),
        spec("a", "/a*"),
        spec("ab", "/a/b/*"),
        spec("abc", "/a/b/c*", methods=frozenset({"POST"})),
        spec("deep", "/a/b/c/d/e/*"),
    ]
    assert winner(kind, specs, "/a/b/c/d/e/f") == "deep"
    assert winner(kind, specs, "/a/b/cx", method="POST") == "abc"
    assert winner(kind, specs, "/a/b/cx") == "ab"
    assert winner(kind, specs, "/a/x") == "a"
    assert winner(kind, specs, "/ax") == "a"
    assert winner(kind, specs, "/b") == "root"
