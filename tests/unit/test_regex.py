"""tollway.regex: user patterns on RE2 (issue #18). Linear time, PCRE spellings, refusals with
their reasons, ngx.re.sub / gsub replacements."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.regex import RegexError, compile_regex, compile_replacement, encode, translate


def test_catastrophic_patterns_run_in_linear_time() -> None:
    # Python's re needs ~1.4 s for 24 characters here, doubling with each one more.
    cases = [
        (r"(a+)+$", "a" * 100_000 + "!"),
        (r"^(a|aa)+$", "a" * 100_000 + "!"),
        (r"(\w+\d+)+c", "1" * 100_000),
        (r"(.*)/(.*)/(.*)/end", "/" * 100_000),
    ]
    for pattern, text in cases:
        rx = compile_regex(pattern)
        t0 = time.perf_counter()
        assert not rx.search(text)
        assert time.perf_counter() - t0 < 0.5, pattern


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("a(?=b)", "invalid perl operator: (?="),
        ("(?<=a)b", "invalid perl operator: (?<="),
        ("(?!a)b", "invalid perl operator: (?!"),
        (r"(a)\1", r"invalid escape sequence: \1"),
        ("a++", "bad repetition operator: ++"),
        ("(?>a)", "invalid perl operator: (?>"),
        (r"a\Kb", r"invalid escape sequence: \K"),
        ("(?(1)a|b)", "invalid perl operator"),
        ("(?R)", "invalid perl operator"),
        ("(?|a)", "invalid perl operator"),
        ("(?#c)a", "invalid perl operator"),
        (r"\h", r"invalid escape sequence: \h"),
        ("a{1001}", "invalid repetition size"),
        ("(", "missing )"),
    ],
)
def test_what_re2_cannot_run_is_refused_with_the_reason(pattern: str, reason: str) -> None:
    with pytest.raises(RegexError) as e:
        compile_regex(pattern)
    assert reason in str(e.value)
    if "perl operator" in reason or "escape" in reason or "repetition operator" in reason:
        assert "RE2" in str(e.value)  # says why a valid PCRE pattern is refused


def test_pcre_syntax_that_re2_reads_the_same() -> None:
    assert compile_regex(r"(?<ver>v\d+)\z").groups == 1
    assert compile_regex(r"(?P<ver>v\d+)").search("api-v2")
    assert compile_regex(r"\Qa.b\E").search("xa.by") and not compile_regex(r"\Qa.b\E").search("axb")
    assert compile_regex("[[:digit:]]+").search("x1")
    assert compile_regex(r"\x{41}").search("A")
    assert not compile_regex(r"^\d$").search("\u0663")  # \d is ASCII in PCRE without "u"
    assert not compile_regex(r"\w").search("é")


def test_dollar_and_big_z_allow_a_final_newline_as_in_pcre() -> None:
    for pattern in ("^/admin$", r"^/admin\Z"):
        rx = compile_regex(pattern)
        assert rx.search("/admin") and rx.search("/admin\n")
        assert not rx.search("/admin\nx") and not rx.search("/admin/")
    assert not compile_regex(r"^/admin\z").search("/admin\n")
    # multi-line: "$" is end of line, as RE2 already reads it
    assert compile_regex("^a$", options="m").search("a\nb")
    assert compile_regex("(?m)^a$").search("a\nb")


def test_translate_leaves_classes_and_quoting_alone() -> None:
    assert translate(r"[$]\$\Q$\E$") == r"[$]\$\Q$\E(?:\n?\z)"
    assert translate(r"[]$][^]$]") == r"[]$][^]$]"
    assert translate("[[:alpha:]$]$") == r"[[:alpha:]$](?:\n?\z)"
    assert translate("(?im)a$") == "(?im)a$"
    assert translate("abc") == "abc"
    assert translate("(?'ver'v\\d+)") == "(?P<ver>v\\d+)"
    assert translate("[(?'x']") == "[(?'x']"
    assert compile_regex("(?'ver'v\\d+)").search("v2")


def test_case_insensitive_and_ngx_options() -> None:
    assert compile_regex("ABC", ignore_case=True).search("xabcx")
    assert not compile_regex("ABC").search("xabcx")
    assert compile_regex("ABC", options="ijo").search("abc")
    assert compile_regex("a.b", options="s").search("a\nb")
    assert not compile_regex("a.b").search("a\nb")
    assert compile_regex("a", options="a").search("ab") and not compile_regex(
        "b", options="a"
    ).search("ab")
    with pytest.raises(RegexError, match="option x"):
        compile_regex("a b", options="x")
    with pytest.raises(RegexError, match='unknown flag "q"'):
        compile_regex("a", options="q")


def test_replacement_templates_follow_ngx_re_sub() -> None:
    rx = compile_regex(r"^/api/(\w+)/(\d+)")
    tpl = compile_replacement("/v1/$1-${2}$$/$0", rx.groups)
    assert rx.sub(tpl, "/api/foo/42/rest") == "/v1/foo-42$//api/foo/42/rest"
    assert rx.sub(tpl, "/other") is None
    for bad, reason in [
        ("$", "invalid capturing variable name"),
        ("$x", "invalid capturing variable name"),
        ("${1", "invalid capturing variable name"),
        ("$3", "capture group 3 is out of range"),
        ("${9}", "capture group 9 is out of range"),
    ]:
        with pytest.raises(RegexError, match=re.escape(reason)):
            compile_replacement(bad, rx.groups)
    # backslashes are literal (only "$" is special in ngx.re.sub)
    assert compile_regex("a").sub(compile_replacement(r"\1\n", 0), "xay") == r"x\1\ny"


def test_gsub_and_empty_matches() -> None:
    dash = compile_replacement("-", 0)
    assert compile_regex("a*").sub_bytes(dash, b"baab") == (b"-b--b-", 4)  # as Perl / PCRE
    assert compile_regex("x*").sub_bytes(dash, b"abc") == (b"-a-b-c-", 4)
    assert compile_regex("é*").sub_bytes(dash, "aé".encode()) == (b"-a--", 3)
    assert compile_regex("o").sub_bytes(dash, b"foo", 1) == (b"f-o", 1)
    assert compile_regex("z").sub_bytes(dash, b"foo") == (b"foo", 0)


def test_non_utf8_bytes_survive() -> None:
    rx = compile_regex("b")
    tpl = compile_replacement("B", 0)
    assert rx.sub_bytes(tpl, b"\xffab\xfe", 0) == (b"\xffaB\xfe", 1)
    # a path's undecodable bytes are surrogate escapes: they go back to the same bytes
    path = b"/a\xffb".decode("utf-8", "surrogateescape")
    assert encode(path) == b"/a\xffb"
    assert rx.sub(tpl, path) == "/a\udcffB"
    with pytest.raises(RegexError, match="invalid UTF-8"):
        compile_regex("\udcff")  # a pattern holding a raw byte 0xFF


def test_match_groups_anchored_at_a_start_offset() -> None:
    rx = compile_regex(r"([^/]+)/(.*)\z", options="s")
    assert rx.match_groups("/a/b\nc", 1) == ("a", "b\nc")
    assert rx.match_groups("/é/ü", 1) == ("é", "ü")
    assert rx.match_groups("/a", 1) is None
    assert rx.match_groups("x/a/b", 1) is None  # anchored at the offset, not searched
    assert compile_regex("(a)|(b)").match_groups("bc") == ("", "b")


@given(st.text(alphabet="ab/.-é\n", max_size=30), st.sampled_from(["a+b", "^/[ab]+$", "b|é", "."]))
def test_search_agrees_with_pythons_re_on_plain_patterns(text: str, pattern: str) -> None:
    # Python's $ also allows a final newline, as PCRE's does
    assert compile_regex(pattern).search(text) == (re.search(pattern, text) is not None)


@given(st.text(alphabet="ab/x", max_size=30))
def test_sub_agrees_with_pythons_re(text: str) -> None:
    rx = compile_regex("(a+)(b?)")
    tpl = compile_replacement("<$2$1>", rx.groups)
    expect, n = re.subn("(a+)(b?)", r"<\2\1>", text)
    assert rx.sub_bytes(tpl, text.encode()) == (expect.encode(), n)
