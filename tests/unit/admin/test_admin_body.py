"""Admin API bodies decoded into plain JSON values (issue #18): the limits and their messages,
and properties over arbitrary JSON text."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.admin.body import (
    MAX_DEPTH,
    MAX_VALUES,
    BodyError,
    check_plain,
    decode_json,
    decode_yaml,
)


def nested(depth: int, *, obj: bool = False) -> bytes:
    if obj:
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b"[" * depth + b"]" * depth


def test_depth_up_to_the_limit_is_accepted() -> None:
    assert decode_json(nested(MAX_DEPTH)) is not None
    assert decode_json(nested(MAX_DEPTH, obj=True)) is not None


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 999, 1000, 50_000, 100_000])
@pytest.mark.parametrize("obj", [False, True])
def test_deeper_bodies_are_refused_by_name(depth: int, obj: bool) -> None:
    with pytest.raises(BodyError, match=f"nested deeper than {MAX_DEPTH} levels"):
        decode_json(nested(depth, obj=obj))


def test_the_place_is_named() -> None:
    with pytest.raises(BodyError, match=r"\(at labels\.a\.a"):
        decode_json(b'{"labels":' + nested(MAX_DEPTH, obj=True) + b"}")
    with pytest.raises(BodyError, match=r"^nodes\[1\]\.host: the string holds a lone UTF-16"):
        decode_json(b'{"nodes":[{"host":"a"},{"host":"\\udc00"}]}')
    with pytest.raises(
        BodyError, match=r"^labels: the key holds a lone UTF-16 surrogate \(\\ud800\)"
    ):
        decode_json(b'{"labels":{"\\ud800":"x"}}')
    with pytest.raises(BodyError, match=r'^labels\."a\.b": the string'):
        decode_json(b'{"labels":{"a.b":"\\ud800"}}')
    with pytest.raises(BodyError, match=r"^the body: the string"):
        decode_json(b'"\\ud800"')


@pytest.mark.parametrize(
    "raw",
    [
        b'"\\ud800"',  # a lone high surrogate
        b'"x\\udfff"',  # a lone low surrogate
        b'"\\udc00\\ud800"',  # a pair in the wrong order
        b'"\xed\xa0\x80"',  # a surrogate encoded as UTF-8 (json.loads reads it, surrogatepass)
    ],
)
def test_lone_surrogates_are_refused(raw: bytes) -> None:
    with pytest.raises(BodyError, match="lone UTF-16 surrogate"):
        decode_json(raw)


def test_a_surrogate_pair_is_one_character() -> None:
    assert decode_json(b'"\\ud83d\\ude00"') == "\U0001f600"


@pytest.mark.parametrize("raw", [b"NaN", b"-Infinity", b"[Infinity]", b"1e999", b'{"a":-1e400}'])
def test_numbers_that_are_not_json_are_refused(raw: bytes) -> None:
    with pytest.raises(BodyError):
        decode_json(raw)


def test_huge_integers() -> None:
    big = int("9" * 4000)
    assert decode_json(str(big).encode()) == big
    with pytest.raises(ValueError, match="digits"):  # Python's int limit: also a 400
        decode_json(b"9" * 5000)


def test_control_characters_inside_strings_are_taken() -> None:
    # lua-cjson (APISIX) takes them: a proto's content with raw newlines
    assert decode_json(b'{"content":"a\nb\tc"}') == {"content": "a\nb\tc"}


def test_yaml_values_that_are_not_json_are_refused() -> None:
    with pytest.raises(BodyError, match=r"^routes\[0\]\.desc: a value of type date is not JSON"):
        decode_yaml(b"routes:\n- desc: 2024-01-01\n")
    with pytest.raises(BodyError, match=r"^a: nan is not a JSON number"):
        decode_yaml(b"a: .nan\n")
    with pytest.raises(BodyError, match="lone UTF-16 surrogate"):
        decode_yaml(b'a: "\\ud800"\n')
    with pytest.raises(BodyError, match="nested deeper"):
        decode_yaml(b"a: " + nested(5000) + b"\n")
    assert decode_yaml(b"a: {1: x, null: y}\n") == {"a": {1: "x", None: "y"}}


def test_yaml_aliases_expanding_too_far_are_refused() -> None:
    lines = ["a0: &a0 [1,1,1,1,1,1,1,1,1,1]"]
    lines += [f"a{n}: &a{n} [{','.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 8)]
    with pytest.raises(BodyError, match=f"more than {MAX_VALUES} values"):
        decode_yaml("\n".join(lines).encode())


def test_a_self_referencing_yaml_node_is_refused() -> None:
    with pytest.raises(BodyError):
        decode_yaml(b"a: &a [*a]\n")


def test_check_plain_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(BodyError, match=r"^a\[0\]: a value of type bytes is not JSON"):
        check_plain({"a": [b"x"]})
    with pytest.raises(BodyError, match="a key of type tuple"):
        check_plain({(1, 2): 1})


# -- properties ------------------------------------------------------------------------------

json_text = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
    max_leaves=30,
)


@given(json_text)
def test_valid_json_round_trips_and_the_data_plane_reads_what_is_stored(value: Any) -> None:
    raw = json.dumps(value, ensure_ascii=False).encode()
    decoded = decode_json(raw)
    assert decoded == value
    # what the Admin API writes to etcd, msgspec (the data plane) decodes to the same value
    stored = json.dumps(decoded, ensure_ascii=False, separators=(",", ":")).encode()
    assert msgspec.json.decode(stored) == value


@given(st.text(alphabet=st.characters(codec=None), max_size=20), st.integers(0, 300))
def test_any_string_at_any_depth_is_accepted_or_refused_cleanly(text: str, depth: int) -> None:
    """Surrogates included (st.characters with no codec draws them): either a BodyError or a
    value that encodes as UTF-8."""
    raw = ("[" * depth + json.dumps(text) + "]" * depth).encode()
    bad = depth > MAX_DEPTH or any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    try:
        value = decode_json(raw)
    except BodyError:
        assert bad
        return
    assert not bad
    json.dumps(value, ensure_ascii=False).encode()  # never UnicodeEncodeError


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_a_value_error(raw: bytes) -> None:
    try:
        value = decode_json(raw)
    except ValueError:
        return
    json.dumps(value, ensure_ascii=False).encode()


def test_a_reply_echoing_a_surrogate_is_still_sent() -> None:
    """A value read from etcd or an echoed argument may hold a lone surrogate: the reply falls
    back to JSON's \\u escapes (plain text: a backslash escape) instead of failing (a 500)."""
    from tollway.admin.server import respond

    resp = respond(404, {"error_msg": "route[\ud800] not found"})
    assert isinstance(resp.body, bytes)
    assert json.loads(resp.body) == {"error_msg": "route[\ud800] not found"}
    assert respond(400, "bad \udcff").body == b"bad \\udcff\n"
