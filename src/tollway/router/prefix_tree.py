"""A compressed prefix (radix) tree: which stored keys are prefixes of a string, longest first.

Invariant: every node but the root has a non-empty label; sibling labels start with distinct
characters; a node without a value has at least two children (paths are merged on delete), so the
walk for a string of length n visits at most one node per branching point, and never more than n.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["PrefixTree"]

V = TypeVar("V")


class _Node(Generic[V]):
    __slots__ = ("children", "label", "value")

    def __init__(self, label: str, value: V | None) -> None:
        self.label = label
        self.value = value
        self.children: dict[str, _Node[V]] | None = None


def _common_length(a: str, b: str, b_start: int) -> int:
    n = min(len(a), len(b) - b_start)
    i = 0
    while i < n and a[i] == b[b_start + i]:
        i += 1
    return i


class PrefixTree(Generic[V]):
    """Maps string keys to values (None is not a value); ``walk`` is the lookup used per request."""

    __slots__ = ("_root", "_size")

    def __init__(self) -> None:
        self._root: _Node[V] = _Node("", None)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def walk(self, text: str) -> list[V]:
        """Values of all stored keys that are prefixes of ``text``, the longest first."""
        node = self._root
        found: list[V] = [] if node.value is None else [node.value]
        pos = 0
        end = len(text)
        while pos < end:
            children = node.children
            if children is None:
                break
            child = children.get(text[pos])
            if child is None:
                break
            label = child.label
            if not text.startswith(label, pos):
                break
            pos += len(label)
            node = child
            if child.value is not None:
                found.append(child.value)
        found.reverse()
        return found

    def get(self, key: str) -> V | None:
        node = self._root
        pos = 0
        while pos < len(key):
            children = node.children
            child = children.get(key[pos]) if children is not None else None
            if child is None or not key.startswith(child.label, pos):
                return None
            pos += len(child.label)
            node = child
        return node.value

    def set(self, key: str, value: V) -> None:
        node = self._root
        pos = 0
        while pos < len(key):
            if node.children is None:
                node.children = {}
            child = node.children.get(key[pos])
            if child is None:
                node.children[key[pos]] = _Node(key[pos:], value)
                self._size += 1
                return
            common = _common_length(child.label, key, pos)
            if common < len(child.label):
                # Split the edge: node -> middle (common part) -> child (the rest).
                middle: _Node[V] = _Node(child.label[:common], None)
                child.label = child.label[common:]
                middle.children = {child.label[0]: child}
                node.children[key[pos]] = middle
                child = middle
            pos += common
            node = child
        if node.value is None:
            self._size += 1
        node.value = value

    def delete(self, key: str) -> None:
        """Remove ``key`` (no-op when absent) and merge the nodes it leaves redundant."""
        trail: list[_Node[V]] = [self._root]
        node = self._root
        pos = 0
        while pos < len(key):
            children = node.children
            child = children.get(key[pos]) if children is not None else None
            if child is None or not key.startswith(child.label, pos):
                return
            pos += len(child.label)
            node = child
            trail.append(node)
        if node.value is None:
            return
        node.value = None
        self._size -= 1
        # Drop the node if it is now a leaf, then fold single-child, valueless nodes into
        # their child; at most the node and its parent can become redundant.
        for depth in (len(trail) - 1, len(trail) - 2):
            if depth <= 0:
                break
            self._compact(trail[depth - 1], trail[depth])

    @staticmethod
    def _compact(parent: _Node[V], node: _Node[V]) -> None:
        if node.value is not None or parent.children is None:
            return
        children = node.children
        if not children:
            del parent.children[node.label[0]]
            if not parent.children:
                parent.children = None
        elif len(children) == 1:
            (only,) = children.values()
            only.label = node.label + only.label
            parent.children[node.label[0]] = only
