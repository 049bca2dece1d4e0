"""The Store: validated config collections, one per etcd directory, each with a version.

Invariants: a rejected item never changes the store (the last valid value keeps serving);
``Collection.version`` (APISIX's conf_version) bumps once per applied change; items keep
insertion order (key order after a full load, append order for keys created later), which is the
router's tie-break for equal priorities.

A worker's store is ``lean``: its items come validated from the supervisor, so it keeps what the
Compiler reads and nothing more (issue #17). Routes, the kind that scales, are not decoded by
the store (``obj`` None): after a full load each keeps a digest of its bytes (enough to tell
what a later load changed), and ``Store.decoded`` decodes it from the load's rows while the
Compiler compiles it, until ``release``; a route with a service or plugin config keeps its bytes
(``keep``), since a change of those recompiles it. No item keeps its decoded JSON (``value``
None) except ``plugin_metadata``, which the Compiler reads as JSON.
"""

from __future__ import annotations

import gc
import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tollway.config.source import KeyValue
from tollway.config.values import decode_value, is_placeholder, key_problem, printable_key
from tollway.errors import ConfigError
from tollway.model import KINDS, decode_item, kind_of_key

log = logging.getLogger("tollway.config")

# checker(kind, item_id, obj, store) -> None, raises ConfigError. Injected by whoever assembles
# the store (plugin schema checks live in tollway.plugins, which config must not import).
Checker = Callable[[str, str, Any, "Store"], None]

ALL_KINDS: tuple[str, ...] = (*KINDS, "credentials")

# (key, value, mod_revision, create_revision): an item as the snapshot carries it; a full load
# also takes views for values (the IPC Load's, into its one buffer of values).
Row = tuple[str, bytes | None, int, int]
RowIn = tuple[str, bytes | memoryview | None, int, int]

# Bound on remembered rejections (each is a bad key still in etcd); past it, forget them all.
_MAX_REMEMBERED = 65536


class Item:
    """An accepted item: a :class:`FullItem`, or a lean store's route (:class:`LeanRouteItem`)."""

    __slots__ = ("id", "mod_revision", "raw", "settled")

    kind: str
    id: str
    obj: Any  # the typed object; None for a lean store's routes (``Store.decoded``)
    value: dict[str, Any] | None  # the decoded JSON; None in a lean store (but plugin_metadata)
    raw: bytes  # the value; once ``settled``, a digest of it
    mod_revision: int
    create_revision: int  # 0 in a lean store
    settled: bool

    @property
    def key(self) -> str:
        raise NotImplementedError


class FullItem(Item):
    __slots__ = ("create_revision", "key", "kind", "obj", "value")

    def __init__(
        self,
        kind: str,
        item_id: str,
        key: str,
        obj: Any,
        value: dict[str, Any] | None,
        raw: bytes,
        mod_revision: int,
        create_revision: int,
    ) -> None:
        self.kind = kind
        self.id = item_id
        self.key = key  # type: ignore[misc]  # the slot stands for Item's property
        self.obj = obj
        self.value = value
        self.raw = raw
        self.mod_revision = mod_revision
        self.create_revision = create_revision
        self.settled = False


class LeanRouteItem(Item):
    """A lean store's route (issue #17: 100k of them): its id, bytes or digest, mod revision;
    its key is derived (the store's routes directory and its id), the rest is constant."""

    __slots__ = ("dir",)

    kind = "routes"
    obj = None
    value = None
    create_revision = 0

    def __init__(self, routes_dir: str, item_id: str, raw: bytes, mod: int, settled: bool) -> None:
        self.dir = routes_dir  # one string per store: "<prefix>/routes/"
        self.id = item_id
        self.raw = raw
        self.mod_revision = mod
        self.settled = settled

    @property
    def key(self) -> str:
        return self.dir + self.id


@dataclass(slots=True)
class Collection:
    kind: str
    items: dict[str, Item] = field(default_factory=dict)
    version: int = 0

    def get(self, item_id: str) -> Item | None:
        return self.items.get(item_id)

    def __len__(self) -> int:
        return len(self.items)


# Kinds a lean store keeps as raw bytes only: decoded when compiled, then dropped.
_RAW_KINDS = frozenset({"routes"})


class Store:
    def __init__(
        self, prefix: str = "/apisix", checker: Checker | None = None, *, lean: bool = False
    ) -> None:
        self.prefix = prefix.rstrip("/")
        self.checker = checker
        self.lean = lean
        self._routes_dir = self.prefix + "/routes/"
        # A lean store's last full load, while the Compiler compiles it: routes keep only a
        # digest from the start and are decoded from their row (route id -> row index).
        self._source: Sequence[RowIn] | None = None
        self._spans: dict[str, int] = {}
        self.collections: dict[str, Collection] = {k: Collection(k) for k in ALL_KINDS}
        self.revision = 0
        self.rejected = 0
        self.loaded = False
        # (kind, id) of every item changed by the last load()/apply(), for incremental compiles.
        self.last_changes: list[tuple[str, str, str]] = []
        # Kinds whose order the last load() changed beyond appending (apisix.yaml reordered, a
        # new item placed first, a full etcd reload in key order): a compile must rebuild.
        self.reordered: set[str] = set()
        # key -> (mod_revision, value) of items rejected and still in the source: a full reload
        # that meets them again neither logs nor counts them a second time.
        self._rejected: dict[str, tuple[int, bytes]] = {}

    def __getitem__(self, kind: str) -> Collection:
        return self.collections[kind]

    def versions(self) -> dict[str, int]:
        return {k: c.version for k, c in self.collections.items()}

    # -- decoding -------------------------------------------------------------------------

    def decoded(self, item: Item) -> Any:
        """``item``'s typed object, decoded from its bytes when the store did not keep it (a
        lean store's routes: a ``LeanRoute``, its inline upstream raw JSON). Raises ConfigError
        if they do not decode, or if a settled route's row is gone (a bug)."""
        obj = item.obj
        if obj is None:
            obj = decode_item(item.kind, self._raw(item), lean=True)
        return obj

    def _raw(self, item: Item) -> bytes | memoryview:
        if not item.settled:
            return item.raw
        at = self._spans.get(item.id)
        if at is None or self._source is None:
            raise ConfigError(f"{item.key}: its bytes are no longer held")
        return self._source[at][1] or b""

    def settle(self, item: Item) -> None:
        """Keep only a digest of ``item``'s bytes (a lean store's route, once compiled, that
        no other item's change recompiles: one without a service or plugin config). A full
        load brings the bytes again (``load_rows``)."""
        if self.lean and not item.settled:
            item.raw = _digest(item.raw)
            item.settled = True

    def keep(self, item: Item) -> None:
        """Keep ``item``'s bytes (a route that a change of its service or plugin config
        recompiles): copied out of the load's buffer, which ``release`` lets go."""
        if item.settled:
            item.raw = bytes(self._raw(item))
            item.settled = False

    def release(self) -> None:
        """The Compiler is done with the last full load: drop its rows (and their buffer) and
        its list of changes (after a first load, a tuple per item: ~70 bytes per route)."""
        self._source = None
        self._spans = {}
        self.last_changes = []

    def _decode_lean(self, kind: str, item_id: str, kv: RowIn, at: int | None) -> Item | None:
        """A lean store's Item: the supervisor validated it (and rejected the bad ones), so
        routes are not decoded here at all (with ``at``, their row in a full load, only their
        digest is kept) and other kinds straight from their bytes."""
        key, raw, mod, _ = kv
        raw = raw or b""
        if len(raw) < 32 and is_placeholder(bytes(raw)):
            return None
        if kind in _RAW_KINDS:
            if at is None:
                return LeanRouteItem(self._routes_dir, item_id, bytes(raw), mod, False)
            self._spans[item_id] = at
            return LeanRouteItem(self._routes_dir, item_id, _digest(raw), mod, True)
        raw = bytes(raw)
        obj: Any = None
        value: dict[str, Any] | None = None
        try:
            if kind == "plugin_metadata":
                value = decode_value(raw)
                obj = decode_item(kind, value)
            else:
                obj = decode_item(kind, raw)
        except (ValueError, ConfigError) as e:
            self._reject(kv, str(e))
            return None
        return FullItem(kind, item_id, key, obj, value, raw, mod, 0)

    def _decode(self, kind: str, item_id: str, kv: RowIn, at: int | None = None) -> Item | None:
        """The accepted Item, or None. Never raises: whatever bytes the key and value hold, a
        bad item is rejected on its own (logged and counted once per key and revision)."""
        if self.lean:
            return self._decode_lean(kind, item_id, kv, at)
        key, value_in, mod, create = kv
        raw = bytes(value_in or b"")
        try:
            problem = key_problem(key)
            if problem is not None:
                raise ValueError(problem)
            if len(raw) < 32 and is_placeholder(raw):
                return None  # APISIX's directory marker, not an item
            value = decode_value(raw)
            obj = decode_item(kind, value)
            if self.checker is not None:
                self.checker(kind, item_id, obj, self)
        except (ValueError, ConfigError) as e:
            self._reject(kv, str(e))
            return None
        except Exception as e:  # a bug in a schema or a checker: costs this item, nothing more
            self._reject(kv, f"internal error: {type(e).__name__}: {e}", error=e)
            return None
        self._rejected.pop(key, None)
        return FullItem(kind, item_id, key, obj, value, raw, mod, create)

    def _reject(self, kv: RowIn, reason: str, error: Exception | None = None) -> None:
        key, value, mod, _ = kv
        seen = (mod, bytes(value or b""))
        if self._rejected.get(key) == seen:
            return  # the same rejected value met again (a full reload): said and counted already
        if len(self._rejected) >= _MAX_REMEMBERED:
            self._rejected.clear()
        self._rejected[key] = seen
        self.rejected += 1
        log.warning("rejected config item %s: %s", printable_key(key), reason, exc_info=error)

    # -- loading --------------------------------------------------------------------------

    def load(self, revision: int, kvs: Iterable[KeyValue]) -> set[str]:
        """Full load. Items whose raw value did not change are reused; versions bump only for
        collections that changed. An invalid new value keeps the previous valid one."""
        return self.load_rows(
            revision, [(kv.key, kv.value, kv.mod_revision, kv.create_revision) for kv in kvs]
        )

    def load_rows(self, revision: int, rows: Iterable[RowIn]) -> set[str]:
        """``load`` from ``(key, value, mod_revision, create_revision)`` rows, the form of the
        IPC ``Load`` and ``snapshot_rows``: at 100k items, no object per item to build first."""
        # The cyclic GC paused: a load allocates long-lived objects by the 100k, and a collection
        # every few hundred of them would walk the growing heap again and again.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            if self.lean:  # rows stay readable until release(): routes decode from them
                self._source = rows if isinstance(rows, Sequence) else list(rows)
                self._spans = {}
                rows = self._source
            return self._load_rows(revision, rows)
        finally:
            if was_enabled:
                gc.enable()

    def _load_rows(self, revision: int, rows: Iterable[RowIn]) -> set[str]:
        fresh: dict[str, dict[str, Item]] = {k: {} for k in ALL_KINDS}
        self.last_changes = []
        present: set[str] = set()
        lean = self.lean
        for at, kv in enumerate(rows):
            key, value, mod, _ = kv
            where = kind_of_key(key, self.prefix)
            if where is None or value is None:
                continue
            present.add(key)
            kind, item_id = where
            old = self.collections[kind].items.get(item_id)
            if old is not None and old.raw == (_digest(value) if old.settled else value):
                old.mod_revision = mod or old.mod_revision
                fresh[kind][item_id] = old
                if old.settled:
                    self._spans[item_id] = at
                continue
            item = self._decode(kind, item_id, kv, at if lean else None)
            if item is None:
                if old is not None:
                    fresh[kind][item_id] = old
                continue
            fresh[kind][item_id] = item
        self._rejected = {k: v for k, v in self._rejected.items() if k in present}
        changed: set[str] = set()
        self.reordered = set()
        for kind, items in fresh.items():
            coll = self.collections[kind]
            moved = _moved(coll.items, items)
            if moved or _differs(coll.items, items):
                # In the order of the new load (then the removed ones), never set order:
                # the router breaks priority ties by this order.
                for item_id in [*items, *(k for k in coll.items if k not in items)]:
                    old_it, new_it = coll.items.get(item_id), items.get(item_id)
                    if old_it is not new_it:
                        key = (new_it or old_it).key  # type: ignore[union-attr]
                        self.last_changes.append((kind, item_id, key))
                if moved:
                    self.reordered.add(kind)
                coll.items = items
                coll.version += 1
                changed.add(kind)
        self.revision = revision
        self.loaded = True
        return changed

    def apply(self, revision: int, changes: Iterable[KeyValue]) -> set[str]:
        """Incremental changes. Returns the kinds that changed."""
        changed: set[str] = set()
        self.last_changes = []
        self.reordered = set()
        for kv in changes:
            where = kind_of_key(kv.key, self.prefix)
            if where is None:
                continue
            kind, item_id = where
            coll = self.collections[kind]
            if kv.value is None:
                self._rejected.pop(kv.key, None)
                if coll.items.pop(item_id, None) is not None:
                    coll.version += 1
                    changed.add(kind)
                    self.last_changes.append((kind, item_id, kv.key))
                continue
            item = self._decode(
                kind, item_id, (kv.key, kv.value, kv.mod_revision, kv.create_revision)
            )
            if item is None:
                continue
            coll.items[item_id] = item
            coll.version += 1
            changed.add(kind)
            self.last_changes.append((kind, item_id, kv.key))
        self.revision = max(self.revision, revision)
        return changed

    def snapshot(self) -> list[KeyValue]:
        """Every accepted item as key/values (what a late worker gets)."""
        return [KeyValue(*row) for row in self.snapshot_rows()]

    def items_now(self) -> list[Item]:
        """Every accepted item, as of now: one quick list on the event loop; the snapshot
        writer makes its rows from it in a thread while this store goes on changing."""
        return [it for coll in self.collections.values() for it in coll.items.values()]

    @staticmethod
    def rows_of(items: list[Item]) -> list[Row]:
        return [(it.key, it.raw, it.mod_revision, it.create_revision) for it in items]

    def snapshot_rows(self) -> list[Row]:
        """Every accepted item as ``(key, value, mod_revision, create_revision)``: the IPC Load's
        rows (and the disk snapshot's, see ``items_now``), without an object per item (10k
        routes: a few ms instead of tens). Not of a lean store: its routes hold digests."""
        return [
            (it.key, it.raw, it.mod_revision, it.create_revision)
            for coll in self.collections.values()
            for it in coll.items.values()
        ]


def _digest(raw: bytes | memoryview) -> bytes:
    # 8 bytes: a 41-byte object instead of 49 per route; a full reload compares each route's
    # new bytes with its own digest only, so 2**-64 is the odds of missing one change.
    return hashlib.blake2b(raw, digest_size=8).digest()


def _moved(old: dict[str, Item], new: dict[str, Item]) -> bool:
    """The new order is not the old one (minus removed keys) followed by the added keys."""
    kept = [k for k in old if k in new]
    return list(new) != kept + [k for k in new if k not in old]


def _differs(old: dict[str, Item], new: dict[str, Item]) -> bool:
    if old.keys() != new.keys() or list(old) != list(new):
        return True
    return any(old[k] is not new[k] for k in new)
