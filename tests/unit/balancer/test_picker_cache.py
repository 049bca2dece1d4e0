"""PickerCache: LRU of 256 by resource key, rebuilt when the version changes."""

from __future__ import annotations

import pytest

from tollway.balancer import NoServerPicker, Picker, PickerCache


def factory(log: list[str], name: str) -> Picker:
    log.append(name)
    return NoServerPicker()


def test_hit_when_version_matches() -> None:
    cache = PickerCache()
    built: list[str] = []
    first = cache.get_or_create("/upstreams/1", "v1", lambda: factory(built, "a"))
    again = cache.get_or_create("/upstreams/1", "v1", lambda: factory(built, "b"))
    assert first is again and built == ["a"]


def test_new_version_rebuilds_and_replaces() -> None:
    cache = PickerCache()
    built: list[str] = []
    old = cache.get_or_create("/upstreams/1", "v1", lambda: factory(built, "a"))
    new = cache.get_or_create("/upstreams/1", "v2", lambda: factory(built, "b"))
    assert new is not old and len(cache) == 1
    # going back to v1 is a rebuild too: one entry per key.
    cache.get_or_create("/upstreams/1", "v1", lambda: factory(built, "c"))
    assert built == ["a", "b", "c"]


def test_least_recently_used_is_evicted() -> None:
    cache = PickerCache(size=3)
    built: list[str] = []
    for key in "abc":
        cache.get_or_create(key, 1, lambda k=key: factory(built, k))  # type: ignore[misc]
    cache.get_or_create("a", 1, lambda: factory(built, "a2"))  # hit: a is now recent
    cache.get_or_create("d", 1, lambda: factory(built, "d"))
    assert "b" not in cache and {"a", "c", "d"} <= {k for k in "abcd" if k in cache}
    assert built == ["a", "b", "c", "d"]


def test_default_size_is_apisix_256() -> None:
    cache = PickerCache()
    for i in range(300):
        cache.get_or_create(str(i), 0, NoServerPicker)
    assert len(cache) == 256 and "43" not in cache and "44" in cache


def test_factory_errors_are_not_cached() -> None:
    cache = PickerCache()

    def broken() -> Picker:
        raise ValueError("bad")

    with pytest.raises(ValueError):
        cache.get_or_create("k", 1, broken)
    assert "k" not in cache


def test_invalidate_and_clear() -> None:
    cache = PickerCache()
    cache.get_or_create("k", 1, NoServerPicker)
    cache.invalidate("k")
    assert "k" not in cache
    cache.get_or_create("k", 1, NoServerPicker)
    cache.clear()
    assert len(cache) == 0
