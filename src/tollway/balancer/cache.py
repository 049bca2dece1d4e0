"""The server-picker LRU (APISIX ``lrucache_server_picker``: 256 entries keyed by upstream key,
versioned). One entry per resource key: a new version replaces the old picker at once.

APISIX's 300 s TTL is not kept: an expired entry whose version still matches is reused as is
(lrucache ``{val, ver}`` semantics), so only the LRU bound matters.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

from tollway.balancer.picker import Picker

DEFAULT_PICKER_CACHE_SIZE = 256


class PickerCache:
    __slots__ = ("_entries", "_size")

    def __init__(self, size: int = DEFAULT_PICKER_CACHE_SIZE) -> None:
        if size < 1:
            raise ValueError("PickerCache size must be >= 1")
        self._size = size
        self._entries: OrderedDict[str, tuple[Hashable, Picker]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get_or_create(self, key: str, version: Hashable, factory: Callable[[], Picker]) -> Picker:
        """The cached picker of ``key`` if it was built for ``version``; otherwise
        ``factory()``, cached (an exception is not cached and propagates)."""
        entries = self._entries
        entry = entries.get(key)
        if entry is not None and entry[0] == version:
            entries.move_to_end(key)
            return entry[1]
        picker = factory()
        entries[key] = (version, picker)
        entries.move_to_end(key)
        if len(entries) > self._size:
            entries.popitem(last=False)
        return picker

    def invalidate(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
