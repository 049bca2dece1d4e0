"""PATCH semantics of the APISIX Admin API (``core.table.merge`` / ``core.table.patch``).

Pure functions over JSON values; the inputs are never mutated (the caller's copy of the stored
value stays intact, so a rejected PATCH changes nothing).
"""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    """The sub-path crosses a value that is not an object (400 ``invalid sub-path: /a/b``)."""


def merge(old: Any, new: Any) -> Any:
    """Recursive merge: ``null`` deletes the field, objects merge, anything else (arrays
    included) replaces wholesale."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return copy.deepcopy(new)
    out = copy.deepcopy(old)
    for key, val in new.items():
        if val is None:
            out.pop(key, None)
        elif isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], val)
        else:
            out[key] = _strip_nulls(val)
    return out


def _strip_nulls(value: Any) -> Any:
    # A null inside a sub-object that is new (nothing to merge with) means "absent" too;
    # APISIX would keep the null and then fail the schema. Tollway drops it.
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    return copy.deepcopy(value)


def split_sub_path(sub_path: str) -> list[str]:
    return [seg for seg in sub_path.split("/") if seg]


def patch_path(value: dict[str, Any], sub_path: str, conf: Any) -> dict[str, Any]:
    """Replace exactly the value at ``sub_path`` (``upstream/nodes``) with ``conf``; missing
    intermediate objects are created."""
    segs = split_sub_path(sub_path)
    out = copy.deepcopy(value)
    if not segs:
        if not isinstance(conf, dict):
            raise PatchError("invalid configuration")
        return copy.deepcopy(conf)
    node: Any = out
    for i, seg in enumerate(segs[:-1]):
        nxt = node.get(seg)
        if nxt is None:
            nxt = {}
            node[seg] = nxt
        if not isinstance(nxt, dict):
            raise PatchError("invalid sub-path: /" + "/".join(segs[: i + 1]))
        node = nxt
    node[segs[-1]] = copy.deepcopy(conf)
    return out
