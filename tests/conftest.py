"""Shared fixtures: real upstream servers and the real tollway process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.support.etcd import etcd, shared_etcd
from tests.support.gateway import Gateway, StartGateway
from tests.support.upstream import Upstream

__all__ = ["etcd", "shared_etcd"]  # fixtures shared by every test module

# Property tests assert behaviour, never speed: no per-example deadline and no "too slow" health
# check, which fail on a loaded CI machine for reasons that are not bugs. `HYPOTHESIS_PROFILE=deep`
# explores ten times further (tests that set their own max_examples keep it).
settings.register_profile(
    "tollway", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("deep", settings.get_profile("tollway"), max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "tollway"))


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


@pytest.fixture(scope="module")
def standalone_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartGateway]:
    """``standalone_gateway(apisix_yaml, **options)``: a started standalone ``Gateway`` (options
    as ``Gateway``'s: ``workers``, ``config``...) serving that apisix.yaml; every one this
    module started stops after its last test."""
    started: list[Gateway] = []

    def start(apisix_yaml: str, **options: Any) -> Gateway:
        g = Gateway(tmp_path_factory.mktemp("gw"), apisix_yaml=apisix_yaml, **options)
        started.append(g)
        return g.start()

    yield start
    for g in reversed(started):
        g.stop()
