"""The Compiler's protos: compiled once per content, shared by the runtimes that keep it."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from tollway.config.source import KeyValue
from tollway.config.store import Store
from tollway.plugins.registry import load_registry
from tollway.runtime.compiler import Compiler
from tollway.settings import default_settings

HELLO = 'syntax = "proto3"; package p; service S { rpc M (A) returns (A); } message A {}'
OTHER = 'syntax = "proto3"; package q; service T { rpc N (B) returns (B); } message B {}'


def kv(key: str, value: Any, rev: int) -> KeyValue:
    raw = json.dumps(value).encode() if value is not None else None
    return KeyValue(f"/apisix/{key}", raw, rev, 1)


def test_protos_are_compiled_once_per_content_and_held_runtimes_keep_theirs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Store()
    store.load(1, [kv("protos/1", {"content": HELLO}, 1), kv("protos/2", {"content": OTHER}, 1)])
    comp = Compiler(default_settings(Path("/tmp/conf")), load_registry())
    first = asyncio.run(comp.rebuild(store))
    p1 = first.proto_by_id("1")
    assert p1 is not None and p1.method("p.S", "M") is not None
    assert first.proto_by_id("3") is None

    # an unrelated change: the same runtime's protos are shared, nothing recompiled
    store.apply(2, [kv("upstreams/u", {"nodes": {"10.0.0.1:80": 1}}, 2)])
    comp.apply(store, store.last_changes)
    assert comp.runtime.protos is first.protos

    # proto 2 changes: it is recompiled, proto 1 (same content) is the very same object
    store.apply(3, [kv("protos/2", {"content": HELLO.replace("package p", "package r")}, 3)])
    second = comp.apply(store, store.last_changes)
    assert second.proto_by_id("1") is p1
    p2 = second.proto_by_id("2")
    assert p2 is not None and p2.method("r.S", "M") is not None
    old2 = first.proto_by_id("2")
    assert old2 is not None and old2.method("q.T", "N") is not None  # what requests held

    # a full rebuild does not recompile unchanged contents either
    rebuilt = asyncio.run(comp.rebuild(store))
    assert rebuilt.proto_by_id("1") is p1 and rebuilt.proto_by_id("2") is p2

    # deleted: gone from the next runtime
    store.apply(4, [kv("protos/2", None, 4)])
    assert comp.apply(store, store.last_changes).proto_by_id("2") is None

    # one that does not compile (the supervisor's checks stop these; a worker logs it)
    caplog.set_level(logging.WARNING, logger="tollway.runtime")
    store.apply(5, [kv("protos/9", {"content": "message {"}, 5)])
    assert comp.apply(store, store.last_changes).proto_by_id("9") is None
    assert "protos/9 does not compile" in caplog.text
