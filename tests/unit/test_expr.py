"""lua-resty-expr v1 (apisix.md §2.4): compile errors, operators, Lua value rules."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.errors import ConfigError
from tollway.expr import ExprError, IpMatcher, compile_expr, lua_tonumber


def ev(rule: list[Any], **variables: Any) -> bool:
    return compile_expr(rule).eval(variables.get)


# --------------------------------------------------------------------------- compile errors


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (["arg_x", "==", "1"], "rule should be wrapped inside brackets"),
        ([1, 2], "rule should be wrapped inside brackets"),
        ([["arg_x", "xx", "1"]], "invalid operator 'xx'"),
        ([["arg_x", "not", "==", "1"]], "bad 'not' expression"),
        ([["arg_x"]], "invalid expression"),
        ([[]], "rule too short"),
        (["OR", ["arg_x", "==", "1"]], "rule too short"),
        (["AND"], "rule too short"),
        ([["arg_x", "ipmatch", ""]], "invalid ip address"),
        ([["arg_x", "ipmatch", []]], "invalid ip address"),
        ([["arg_x", "ipmatch", ["1.2.3"]]], "invalid ip address: 1.2.3"),
        ([["arg_x", "ipmatch", ["10.0.0.0/33"]]], "invalid ip address: 10.0.0.0/33"),
        ([[1, "==", "x"]], "invalid expression"),
        ([["arg_x", None, "x"]], "invalid expression"),
        ([["arg_x", "==", "1"], "x"], "invalid expression"),
        (None, "missing argument rule"),
    ],
)
def test_compile_errors_use_lua_resty_expr_messages(rule: Any, message: str) -> None:
    with pytest.raises(ExprError) as info:
        compile_expr(rule)
    assert str(info.value) == message


def test_expr_error_is_a_value_error_and_a_config_error() -> None:
    with pytest.raises(ValueError):
        compile_expr(["a", "==", "b"])
    assert issubclass(ExprError, ConfigError)


def test_bad_regex_is_rejected_at_compile_time() -> None:
    with pytest.raises(ExprError, match="failed to compile regex"):
        compile_expr([["arg_x", "~~", "(unclosed"]])


def test_empty_rule_matches_everything() -> None:
    assert compile_expr([]).eval(lambda name: None) is True


# --------------------------------------------------------------------------- structure


def test_list_of_expressions_is_and() -> None:
    rule = [["arg_a", "==", "1"], ["arg_b", "==", "2"]]
    assert ev(rule, arg_a="1", arg_b="2")
    assert not ev(rule, arg_a="1", arg_b="3")


@pytest.mark.parametrize(
    ("op", "a", "b", "expected"),
    [
        ("AND", "1", "2", True),
        ("AND", "1", "0", False),
        ("OR", "0", "2", True),
        ("OR", "0", "0", False),
        ("!AND", "1", "2", False),
        ("!AND", "1", "0", True),
        ("!OR", "0", "0", True),
        ("!OR", "1", "0", False),
        ("or", "0", "2", True),  # logic operators are case-insensitive too
    ],
)
def test_logic_operators(op: str, a: str, b: str, expected: bool) -> None:
    rule = [op, ["arg_a", "==", "1"], ["arg_b", "==", "2"]]
    assert ev(rule, arg_a=a, arg_b=b) is expected


def test_nesting() -> None:
    rule = [
        "OR",
        ["AND", ["arg_a", "==", "1"], ["arg_b", "==", "2"]],
        [["arg_c", "==", "3"], ["arg_d", "==", "4"]],
    ]
    assert ev(rule, arg_a="1", arg_b="2")
    assert ev(rule, arg_c="3", arg_d="4")
    assert not ev(rule, arg_a="1", arg_d="4")


def test_negation_with_bang() -> None:
    assert ev([["arg_x", "!", "==", "1"]], arg_x="2")
    assert not ev([["arg_x", "!", "==", "1"]], arg_x="1")
    assert ev([["arg_x", "!", "~~", "^a"]])  # nil does not match, negated: true


def test_two_items_mean_equality_and_lowercase_the_value() -> None:
    assert ev([["arg_x", "abc"]], arg_x="abc")
    # Lua passes the value through string.lower (it sits in the operator slot).
    assert ev([["arg_x", "ABC"]], arg_x="abc")
    assert not ev([["arg_x", "ABC"]], arg_x="ABC")
    assert ev([["arg_x", 5]], arg_x="5")


def test_operators_are_case_insensitive() -> None:
    assert ev([["arg_x", "IN", ["a", "b"]]], arg_x="b")
    assert ev([["arg_x", "IpMatch", ["10.0.0.0/8"]]], arg_x="10.1.2.3")


def test_items_after_the_third_are_ignored() -> None:
    assert ev([["arg_x", "==", "1", "extra", "more"]], arg_x="1")


def test_var_names_lists_every_variable() -> None:
    expr = compile_expr(["OR", ["arg_a", "==", "1"], [["uri_param_id", "==", "2"]]])
    assert expr.var_names == {"arg_a", "uri_param_id"}


# --------------------------------------------------------------------------- operators


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        ("10", 10, True),
        (" 10 ", 10, True),  # tonumber trims blanks
        ("0x0A", 10, True),
        ("1e1", 10, True),
        ("10.0", 10, True),
        ("abc", 10, False),
        (None, 10, False),
        ("10", "10", True),
        ("10", "10.0", False),  # raw string equality when the right side is a string
        (None, None, True),  # ["http_x", "==", null]: true when absent
        ("", None, False),
        (10, "10", True),  # a number from var() stands for nginx's string variable
        ("true", True, False),
        (True, True, True),
        (["a"], ["a"], False),  # Lua tables compare by identity
    ],
)
def test_equality(left: Any, right: Any, expected: bool) -> None:
    assert ev([["v", "==", right]], v=left) is expected
    assert ev([["v", "~=", right]], v=left) is (not expected)


def test_not_equal_with_a_number_is_true_for_unparseable_values() -> None:
    assert ev([["v", "~=", 5]], v="abc")
    assert ev([["v", "~=", 5]])
    assert not ev([["v", "~=", 5]], v="5")


@pytest.mark.parametrize(
    ("op", "left", "right", "expected"),
    [
        (">", "10", 9, True),
        (">", "10", "9", True),  # both sides through tonumber: numeric, not lexical
        (">", "9", "10", False),
        (">=", "10", 10, True),
        ("<", "0x10", 17, True),
        ("<=", " 3 ", "3", True),
        (">", None, 1, False),
        (">", "abc", 1, False),
        ("<", "1", None, False),
        ("<", "1", "abc", False),
        (">", "inf", 1e300, True),
        (">", "nan", 1, False),
    ],
)
def test_ordering(op: str, left: Any, right: Any, expected: bool) -> None:
    assert ev([["v", op, right]], v=left) is expected


def test_regex_search_is_not_anchored() -> None:
    assert ev([["v", "~~", "b+c"]], v="abbbcd")
    assert not ev([["v", "~~", "^b"]], v="abc")
    assert not ev([["v", "~~", "a"]])
    assert ev([["v", "~~", "[0-9]+"]], v=123)


def test_regex_case_insensitive() -> None:
    assert ev([["v", "~*", "ABC"]], v="xabcx")
    assert not ev([["v", "~~", "ABC"]], v="xabcx")


def test_regex_pcre_named_group_and_ascii_classes() -> None:
    assert ev([["v", "~~", r"(?<ver>v\d+)\z"]], v="api-v2")
    assert not ev([["v", "~~", r"^\d$"]], v="\u0663")  # Arabic-Indic 3: PCRE \d is ASCII


def test_in() -> None:
    assert ev([["v", "in", ["a", "b"]]], v="a")
    assert not ev([["v", "in", ["a", "b"]]], v="c")
    assert not ev([["v", "in", ["a", "b"]]])
    assert ev([["v", "in", [1, 2]]], v=2)
    assert not ev([["v", "in", [1, 2]]], v="2")  # "2" ~= 2 in Lua
    assert not ev([["v", "in", "a"]], v="a")  # right side must be an array


def test_has() -> None:
    assert ev([["graphql_root_fields", "has", "owner"]], graphql_root_fields=["repo", "owner"])
    assert not ev([["graphql_root_fields", "has", "x"]], graphql_root_fields=["repo"])
    assert not ev([["graphql_root_fields", "has", "repo"]], graphql_root_fields="repo")


def test_ipmatch() -> None:
    rule = [["remote_addr", "ipmatch", ["127.0.0.3/24", "::1", "fe80::/16"]]]
    assert ev(rule, remote_addr="127.0.0.1")
    assert ev(rule, remote_addr="::1")
    assert ev(rule, remote_addr="fe80::1234")
    assert not ev(rule, remote_addr="127.0.1.1")
    assert not ev(rule, remote_addr="not-an-ip")
    assert not ev(rule)
    assert ev([["remote_addr", "ipmatch", "10.0.0.1"]], remote_addr="10.0.0.1")


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("10", 10.0),
        (" 10 ", 10.0),
        ("\t-10\n", -10.0),
        ("0x1A", 26.0),
        ("-0x10", -16.0),
        ("1e3", 1000.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("0x1p4", 16.0),
        (12, 12.0),
        ("inf", math.inf),
    ],
)
def test_lua_tonumber_accepts(text: Any, number: float) -> None:
    assert lua_tonumber(text) == number


@pytest.mark.parametrize(
    "text", ["", " ", "abc", "10abc", "1_000", "0x", "1e", ".", True, None, []]
)
def test_lua_tonumber_rejects(text: Any) -> None:
    assert lua_tonumber(text) is None


@given(st.integers(min_value=-(2**52), max_value=2**52))
def test_lua_tonumber_round_trips_integers(n: int) -> None:
    assert lua_tonumber(str(n)) == n
    assert lua_tonumber(hex(n)) == n


def test_ip_matcher_host_bits_and_v6() -> None:
    m = IpMatcher(["127.0.0.3/24", "2001:db8::1/32", "[::2]", "0.0.0.0/0"])
    assert m.match("127.0.0.200")
    assert m.match("8.8.8.8")  # /0 matches every IPv4 address
    assert m.match("2001:db8:ffff::")
    assert m.match("::2")
    assert m.match("[::2]")
    assert not m.match("::3")
    assert not m.match(None)
