"""Request target, path and Host rules: values in, values out; no socket."""

from __future__ import annotations

from tollway.httprules.target import host_name, origin_form, routed_path, target_bytes


def test_origin_form_is_kept() -> None:
    assert origin_form(b"/a?b=1", "GET") == (b"/a?b=1", None)


def test_absolute_form_names_the_host() -> None:
    # RFC 9112 3.2.2: the target's authority wins over the Host field
    assert origin_form(b"http://Example.com:8080/p?q=1", "GET") == (b"/p?q=1", b"Example.com:8080")
    assert origin_form(b"http://example.com", "GET") == (b"/", b"example.com")


def test_asterisk_form_only_for_options() -> None:
    # RFC 9112 3.2.4
    assert origin_form(b"*", "OPTIONS") == (b"/", None)
    assert origin_form(b"*", "GET") is None


def test_invalid_target() -> None:
    assert origin_form(b"http://[::1/x", "GET") is None


def test_dot_segments_and_escapes_are_resolved_for_routing_and_upstream() -> None:
    # RFC 3986 6.2.2: "/a/../admin" is "/admin", for the router and the upstream alike
    assert routed_path("/a/../admin", "x=1", servlet=False, tail_slash=False) == (
        "/admin",
        b"/admin?x=1",
    )
    assert routed_path("/%61dmin", "", servlet=False, tail_slash=False) == ("/admin", b"/admin")
    # decoded for routing; re-encoded the one way for the upstream
    assert routed_path("/a%20b", "", servlet=False, tail_slash=False) == ("/a b", b"/a%20b")
    assert routed_path("/plain", "", servlet=False, tail_slash=False) == ("/plain", None)


def test_servlet_parameters_are_for_the_upstream_only() -> None:
    # APISIX normalize_uri_like_servlet: routes see the path without ;params, the upstream
    # gets the original uri
    assert routed_path("/a;jsessionid=1/b", "", servlet=True, tail_slash=False) == ("/a/b", None)
    assert routed_path("/a;x/b", "", servlet=False, tail_slash=False) == ("/a;x/b", None)


def test_tail_slash() -> None:
    # APISIX delete_uri_tail_slash: routes, plugins and the upstream see no trailing slash
    assert routed_path("/a/", "q=1", servlet=False, tail_slash=True) == ("/a", b"/a?q=1")
    assert routed_path("/", "", servlet=False, tail_slash=True) == ("/", None)


def test_host_name() -> None:
    assert host_name(b"Example.COM:9080") == "example.com"
    assert host_name(b"example.com.") == "example.com"  # nginx drops one trailing dot
    assert host_name(b"[::1]:8080") == "[::1]"
    assert host_name(b"") == ""
    # nginx ngx_http_validate_host: 400 for these
    for bad in (b"a..b", b"a/b", b"a\\b"):
        assert host_name(bad) is None


def test_plugin_made_target_cannot_split_the_request_line() -> None:
    # RFC 9112 3.2: no whitespace or control characters in a target
    assert target_bytes("/a b\r\nX: 1") == b"/a%20b%0D%0AX:%201"
    assert target_bytes("/caf\u00e9") == b"/caf%C3%A9"
    assert target_bytes("/ok?x=1") == b"/ok?x=1"
