"""Which upstream objects the config holds, by APISIX resource key.

An upstream lives at ``/apisix/upstreams/<id>``, or inline in a route or a service (keys
``/apisix/routes/<id>``, ``/apisix/services/<id>``), exactly the keys the workers' compiler gives
its pickers. An inline upstream next to an ``upstream_id`` is never used, so it is skipped.
The store is duck-typed (``store[kind].items`` / ``.get(id)`` with ``.obj``): this package does
not import ``tollway.config``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from tollway.model import Upstream

KINDS = ("upstreams", "routes", "services")


class _Collection(Protocol):
    @property
    def items(self) -> Mapping[str, Any]: ...

    def get(self, item_id: str) -> Any: ...


class StoreView(Protocol):
    def __getitem__(self, kind: str) -> _Collection: ...


def resource_key(kind: str, item_id: str) -> str:
    return f"/apisix/{kind}/{item_id}"


def upstream_of(kind: str, obj: Any) -> Upstream | None:
    if kind == "upstreams":
        return obj if isinstance(obj, Upstream) else None
    if getattr(obj, "upstream_id", None) is not None:
        return None
    up = getattr(obj, "upstream", None)
    return up if isinstance(up, Upstream) else None


def all_upstreams(store: StoreView) -> dict[str, Upstream]:
    out: dict[str, Upstream] = {}
    for kind in KINDS:
        for item_id, item in store[kind].items.items():
            up = upstream_of(kind, item.obj)
            if up is not None:
                out[resource_key(kind, item_id)] = up
    return out


def changed_upstreams(
    store: StoreView, changes: Iterable[tuple[str, str, str]]
) -> dict[str, Upstream | None]:
    """The upstream now at each changed key (None: gone) for ``Store.last_changes``."""
    out: dict[str, Upstream | None] = {}
    for kind, item_id, _key in changes:
        if kind not in KINDS:
            continue
        item = store[kind].get(item_id)
        out[resource_key(kind, item_id)] = None if item is None else upstream_of(kind, item.obj)
    return out
