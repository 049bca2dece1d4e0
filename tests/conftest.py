"""Shared fixtures: real upstream servers and the real tollway process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.etcd import etcd, shared_etcd
from tests.support.upstream import Upstream

__all__ = ["etcd", "shared_etcd"]  # fixtures shared by every test module


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream("up1").start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def upstream2() -> Iterator[Upstream]:
    up = Upstream("up2").start()
    yield up
    up.stop()
