"""Uri parameters (radixtree_uri_with_parameter) and the regex check of prefix patterns."""

from __future__ import annotations

import time
from typing import Any

import pytest
from tests.support.router import Req

from tollway.router import Match, RouteSpec, build_router, compile_check
from tollway.router.pattern import parse_uri

P = "radixtree_uri_with_parameter"


def match(kind: str, uris: list[str], path: str, **kw: Any) -> Match | None:
    router = build_router(kind, [RouteSpec(str(i), (u,), **kw) for i, u in enumerate(uris)])
    return router.match(Req(path))


def params(kind: str, uri: str, path: str) -> dict[str, str] | None:
    m = match(kind, [uri], path)
    assert m is not None, f"{uri} should match {path}"
    return m.params


@pytest.mark.parametrize(
    ("uri", "path", "expected"),
    [
        ("/user/:id", "/user/42", {"id": "42"}),
        ("/user/:id/orders/:oid", "/user/1/orders/x-9", {"id": "1", "oid": "x-9"}),
        ("/files/*path", "/files/a/b/c.txt", {"path": "a/b/c.txt"}),
        ("/files/*path", "/files/", {"path": ""}),
        ("/files/*", "/files/a/b", {":ext": "a/b"}),
        ("/u/:id/*rest", "/u/7/x/y", {"id": "7", "rest": "x/y"}),
        ("/v/:id.json", "/v/5.json", {"id.json": "5.json"}),  # the whole segment is the name
    ],
)
def test_captures(uri: str, path: str, expected: dict[str, str]) -> None:
    assert params(P, uri, path) == expected


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("/user/:id", "/user/"),  # one non-empty segment
        ("/user/:id", "/user/1/2"),  # full match
        ("/user/:id/", "/user/1"),  # a trailing "/" in the pattern is required
        ("/user/:id/x.json", "/user/1/xAjson"),  # literal text is literal
        ("/a/*mid/:last", "/a/x/y/z"),  # stored prefix is the literal "/a/*mid/" (see below)
    ],
)
def test_non_matches(uri: str, path: str) -> None:
    assert match(P, [uri], path) is None


def test_trailing_slash_pattern_matches_with_slash() -> None:
    assert params(P, "/user/:id/", "/user/1/") == {"id": "1"}


@pytest.mark.parametrize("kind", ["radixtree_uri", "radixtree_host_uri"])
def test_colon_is_literal_in_other_kinds(kind: str) -> None:
    assert match(kind, ["/user/:id"], "/user/42") is None
    m = match(kind, ["/user/:id"], "/user/:id")
    assert m is not None and m.params is None


@pytest.mark.parametrize("kind", ["radixtree_uri", "radixtree_host_uri"])
def test_star_segments_capture_in_every_kind(kind: str) -> None:
    # radixtree's fetch_pat runs for every prefix route, whatever no_param_match says.
    assert params(kind, "/a/*", "/a/b/c") == {":ext": "b/c"}
    assert params(kind, "/a/*/:id", "/a/b/c") == {":ext": "b", "id": "c"}


def test_star_before_first_colon_is_part_of_the_stored_prefix() -> None:
    # With parameters the stored prefix is the text before the first ":", "*" included, as in
    # radixtree; only a request that literally starts with it can match.
    assert params(P, "/a/*mid/:last", "/a/*mid/z") == {"mid": "*mid", "last": "z"}
    assert params("radixtree_uri", "/a/*mid/:last", "/a/x/y/z") == {"mid": "x/y", "last": "z"}
    assert match("radixtree_uri", ["/a/*mid/:last"], "/a/x/") is None


def test_prefix_without_named_segment_has_no_params() -> None:
    assert params(P, "/foo*", "/foobar") is None


def test_param_prefix_is_text_before_first_colon() -> None:
    pattern = parse_uri("/api/v1/:id/x", with_params=True)
    assert pattern.is_prefix and pattern.stored == "/api/v1/"
    assert parse_uri("/api/v1/:id/x", with_params=False).is_prefix is False


def test_param_routes_order_by_stored_prefix() -> None:
    uris = ["/user/:id", "/user/me/:tab", "/user/me"]
    paths = ["/user/1", "/user/me", "/user/me/x"]
    hits = {p: (m.id if (m := match(P, uris, p)) else None) for p in paths}
    assert hits == {"/user/1": "0", "/user/me": "2", "/user/me/x": "1"}


def test_uri_param_is_visible_to_vars_of_the_candidate_route() -> None:
    specs = [
        RouteSpec("admin", ("/user/:id",), priority=1, vars=[["uri_param_id", "==", "0"]]),
        RouteSpec("user", ("/user/:id",)),
    ]
    router = build_router(P, specs)
    hit = router.match(Req("/user/0"))
    assert hit is not None and hit.id == "admin" and hit.params == {"id": "0"}
    hit = router.match(Req("/user/5"))
    assert hit is not None and hit.id == "user"


def test_uri_param_of_a_route_without_params_is_none() -> None:
    specs = [RouteSpec("r", ("/a",), vars=[["uri_param_id", "==", None]])]
    assert build_router(P, specs).match(Req("/a")) is not None


def test_compile_check() -> None:
    compile_check(RouteSpec("ok", ("/a/:id/*rest",), vars=[["arg_x", "==", "1"]]))
    with pytest.raises(ValueError, match="invalid operator"):
        compile_check(RouteSpec("bad", ("/a",), vars=[["arg_x", "xx", "1"]]))
    with pytest.raises(ValueError, match="invalid ip address"):
        compile_check(RouteSpec("bad", ("/a",), remote_addrs=("1.2.3.4/40",)))
    with pytest.raises(ValueError, match="invalid uri"):
        compile_check(RouteSpec("bad", ("",)))


def test_a_bad_spec_is_skipped_and_the_rest_still_route() -> None:
    specs = [RouteSpec("bad", ("/a",), vars=["x", "==", "y"]), RouteSpec("good", ("/a",))]
    router = build_router("radixtree_uri", specs)
    m = router.match(Req("/a"))
    assert m is not None and m.id == "good" and len(router) == 1


def test_many_star_segments_match_in_linear_time() -> None:
    # issue #18: "(.*)/x/(.*)/x/(.*)/end" backtracks cubically; RE2 does not
    uri = "/rp/*a/x/*b/x/*c/end"
    t0 = time.perf_counter()
    assert match(P, [uri], "/rp/" + "x/" * 20_000) is None
    assert time.perf_counter() - t0 < 0.5
    assert params(P, uri, "/rp/1/x/2/x/3/end") == {"a": "1", "b": "2", "c": "3"}
    assert params(P, "/u/:id/*rest", "/u/é/ü/\n") == {"id": "é", "rest": "ü/\n"}
    assert params(P, "/u/:id/(x)", "/u/7/(x)") == {"id": "7"}  # literal text is escaped
    # one "*name" stays on Python's re, linear there (radixtree_uri: the tree cuts at "*")
    uri = "/a/*rest/:id/edit"
    t0 = time.perf_counter()
    for path in ("/a/" + "x/" * 20_000, "/a/" + "x" * 40_000 + "/", "/a/" + "/" * 40_000 + "y"):
        assert match("radixtree_uri", [uri], path) is None
    assert time.perf_counter() - t0 < 0.5
    assert params("radixtree_uri", uri, "/a/p/q/7/edit") == {"rest": "p/q", "id": "7"}
