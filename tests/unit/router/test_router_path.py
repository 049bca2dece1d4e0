"""normalize_path: the path routes see (nginx decoding, merge_slashes, RFC 3986 §5.2.4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.router import normalize_path, servlet_path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/../b", "/b"),
        ("/a/./b", "/a/b"),
        ("/a/%2e%2e/b", "/b"),
        ("/a/%2E%2e/b", "/b"),
        ("/a/.%2e/b", "/b"),
        ("//a//b//", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a%2Fb", "/a/b"),  # %2F is decoded before matching, like nginx
        ("/a%2F..%2Fb", "/b"),
        ("/a%20b", "/a b"),
        ("/caf%C3%A9", "/caf\u00e9"),
        ("/caf\u00c3\u00a9", "/caf\u00e9"),  # raw UTF-8 bytes given as latin-1
        ("/%25", "/%"),  # decoded once only
        ("/%252e%252e/x", "/%2e%2e/x"),
        ("/a+b", "/a+b"),
        ("/.hidden/x", "/.hidden/x"),
        ("/a/...", "/a/..."),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "a/b",
        "*",
        "/%",
        "/%zz",
        "/%2",
        "/a%0",
        "/a\x00b",
        "/a%00b",
        "/..",
        "/../../a",
        "/a/../..",
        # Not UTF-8 once decoded (RFC 3629 §3): never a 5xx, never another spelling of a path.
        "/public/%ff",
        "/public/%c3%28",
        "/%c0%ae%c0%ae/private",  # overlong "..": not a dot segment, and not valid at all
        "/a\u00ff",  # a raw 0xff byte (the target as latin-1)
    ],
)
def test_invalid(raw: str) -> None:
    assert normalize_path(raw) is None


_segment = st.sampled_from(["a", "b", ".", "..", "", "%2e", "%2F", "c%20d", "x.y"])


@given(st.lists(_segment, max_size=8))
def test_result_is_normal(segments: list[str]) -> None:
    out = normalize_path("/" + "/".join(segments))
    if out is None:  # only a ".." above the root (nginx: 400)
        depth = 0
        for seg in "/".join(segments).replace("%2F", "/").replace("%2e", ".").split("/"):
            depth += -1 if seg == ".." else (0 if seg in ("", ".") else 1)
            if depth < 0:
                return
        raise AssertionError(f"refused without climbing above the root: {segments}")
    assert out.startswith("/")
    assert "//" not in out
    assert all(s not in (".", "..") for s in out.split("/"))
    assert normalize_path(out.replace("%", "%25")) == out  # idempotent on its own output


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/a/b", "/a/b"),
        ("/a;jsessionid=1/b", "/a/b"),
        ("/a/b;v=1", "/a/b"),
        ("/a/b;", "/a/b"),
        ("/a/;x", "/a/"),  # an empty last segment with parameters is the trailing slash
        ("/public/..;/private/y", None),  # Tomcat: /private/y
        ("/public/.;x/y", None),
        ("/public/%2e%2e;/private", None),  # %252e%252e once decoded
        ("/public/%2E;/private", None),
        ("/a/;x/b", None),  # an empty segment with parameters before the last
        ("/public/..\\private", None),  # a backslash: IIS reads it as "/"
        ("/a\\b", None),
    ],
)
def test_servlet_path(path: str, expected: str | None) -> None:
    assert servlet_path(path) == expected
