"""PATCH merge and sub-path semantics (APISIX core.table.merge / core.table.patch)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.admin.patch import PatchError, merge, patch_path

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=10,
)
objects = st.dictionaries(st.text(max_size=3), json_values, max_size=4)


def test_null_deletes_objects_merge_arrays_replace() -> None:
    old = {"a": 1, "b": {"c": 1, "d": 2}, "arr": [1, 2, 3], "gone": True}
    new = {"gone": None, "b": {"c": None, "e": 3}, "arr": [9]}
    assert merge(old, new) == {"a": 1, "b": {"d": 2, "e": 3}, "arr": [9]}


def test_remove_one_node() -> None:
    old = {"upstream": {"nodes": {"127.0.0.1:1980": 1, "127.0.0.1:1981": 1}}}
    new = {"upstream": {"nodes": {"127.0.0.1:1980": None}}}
    assert merge(old, new) == {"upstream": {"nodes": {"127.0.0.1:1981": 1}}}


def test_object_replaces_array_and_back() -> None:
    assert merge({"x": [1]}, {"x": {"a": 1}}) == {"x": {"a": 1}}
    assert merge({"x": {"a": 1}}, {"x": [1]}) == {"x": [1]}


def test_null_inside_a_new_object_is_dropped() -> None:
    assert merge({}, {"x": {"a": None, "b": 1}}) == {"x": {"b": 1}}


@given(objects, objects)
def test_merge_never_mutates_inputs(old: dict[str, Any], new: dict[str, Any]) -> None:
    a, b = copy.deepcopy(old), copy.deepcopy(new)
    merge(old, new)
    assert (old, new) == (a, b)


@given(objects, objects)
def test_merge_result_has_no_key_set_to_null_by_the_patch(
    old: dict[str, Any], new: dict[str, Any]
) -> None:
    out = merge(old, new)
    for k, v in new.items():
        if v is None:
            assert k not in out
        elif not isinstance(v, dict):
            assert out[k] == v


@given(objects)
def test_merge_with_empty_patch_is_identity(old: dict[str, Any]) -> None:
    assert merge(old, {}) == old


def test_sub_path_replaces_exactly_that_value() -> None:
    old = {"upstream": {"nodes": {"a:1": 1}, "type": "roundrobin"}}
    out = patch_path(old, "upstream/nodes", {"b:2": 2})
    assert out == {"upstream": {"nodes": {"b:2": 2}, "type": "roundrobin"}}
    assert old["upstream"]["nodes"] == {"a:1": 1}


def test_sub_path_creates_missing_objects() -> None:
    assert patch_path({}, "a/b/c", 1) == {"a": {"b": {"c": 1}}}


def test_sub_path_through_a_scalar_is_rejected() -> None:
    with pytest.raises(PatchError, match=r"^invalid sub-path: /uri$"):
        patch_path({"uri": "/x"}, "uri/deeper", 1)
    with pytest.raises(PatchError, match=r"^invalid sub-path: /a/b$"):
        patch_path({"a": {"b": [1]}}, "a/b/c", 1)
