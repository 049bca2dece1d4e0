"""PrefixTree against a dict: same answers after any sequence of sets and deletes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tollway.router.prefix_tree import PrefixTree

key_st = st.text("ab/", max_size=6)


@given(st.lists(st.tuples(st.booleans(), key_st), max_size=40), st.lists(key_st, max_size=10))
def test_tree_behaves_like_a_dict(ops: list[tuple[bool, str]], probes: list[str]) -> None:
    tree: PrefixTree[str] = PrefixTree()
    model: dict[str, str] = {}
    for is_set, key in ops:
        if is_set:
            tree.set(key, key.upper() or "<root>")
            model[key] = key.upper() or "<root>"
        else:
            tree.delete(key)
            model.pop(key, None)
    assert len(tree) == len(model)
    for probe in probes + list(model):
        assert tree.get(probe) == model.get(probe)
        expected = [model[k] for k in sorted(model, key=len, reverse=True) if probe.startswith(k)]
        assert tree.walk(probe) == expected


def test_delete_compacts_back_to_an_empty_root() -> None:
    tree: PrefixTree[int] = PrefixTree()
    for i, key in enumerate(["/a", "/ab", "/abc", "/b", "/"]):
        tree.set(key, i)
    for key in ["/ab", "/abc", "/a", "/", "/b"]:
        tree.delete(key)
    assert len(tree) == 0 and tree._root.children is None
