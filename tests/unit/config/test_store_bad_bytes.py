"""Any bytes etcd can hold, as a key or a value, are one rejected item: never an exception out
of the Store, never an accepted item that a later step (IPC, snapshot, JSON) cannot encode
(issue #18: one bad value wedged the whole config pipeline)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway.admin.resource import AdminError
from tollway.admin.standalone import StandaloneConfigs
from tollway.checks import ItemChecker
from tollway.config.source import KeyValue
from tollway.config.store import Store
from tollway.config.values import MAX_DEPTH, check_tree, decode_value, key_problem, printable_key
from tollway.config.yaml_source import parse_config_file
from tollway.errors import ConfigError, SourceError
from tollway.ipc import TO_WORKER, Load, encode, read_message
from tollway.model import KINDS
from tollway.plugins.registry import load_registry

ROUTE = {"uri": "/a", "upstream": {"nodes": {"127.0.0.1:1980": 1}}}
ROUTE_RAW = json.dumps(ROUTE).encode()
BAD_KEY = b"/apisix/routes/\xff".decode("utf-8", "surrogateescape")  # as the etcd client gives it


def nested(depth: int) -> bytes:
    return b'{"uri":"/a","x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


# -- values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty value"),
        (b"  \n", "empty value"),
        (b"{oops", "invalid JSON"),
        (b'{"uri":"\xff"}', "invalid JSON"),  # not UTF-8
        (b'{"uri":"\\ud800"}', "invalid JSON"),  # a lone surrogate: could never be encoded again
        (b"[1]", "it should be an object"),
        (nested(MAX_DEPTH + 1), f"nested deeper than {MAX_DEPTH} levels"),
        (nested(100_000), f"nested deeper than {MAX_DEPTH} levels"),  # beyond the recursion limit
    ],
)
def test_decode_value_refuses_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode_value(raw)


def test_decode_value_accepts_the_deepest_allowed() -> None:
    assert decode_value(nested(MAX_DEPTH))["uri"] == "/a"


def test_check_tree_finds_what_json_loads_lets_through() -> None:
    deep: list[object] = []
    node = deep
    for _ in range(10_000):  # built without recursion, measured without recursion
        child: list[object] = []
        node.append(child)
        node = child
    assert check_tree(deep) == f"nested deeper than {MAX_DEPTH} levels"
    assert check_tree(json.loads('{"a": "\\udc80"}')) == "a string is not valid UTF-8"
    assert check_tree(json.loads('{"\\udc80": 1}')) == "a string is not valid UTF-8"
    assert check_tree(json.loads('["\\udc80"]')) == "a string is not valid UTF-8"
    assert check_tree({"a": ["é", {"b": None}]}) is None


def depth_of(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


tricky_text = st.text(alphabet='[]{}"\\ab', max_size=6)
json_trees = st.recursive(
    st.none() | st.integers() | tricky_text,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(tricky_text, kids, max_size=3),
    max_leaves=12,
)


@settings(max_examples=500)
@given(json_trees, st.integers(0, 2 * MAX_DEPTH), st.booleans())
def test_the_depth_limit_is_exact_whatever_the_strings_hold(
    leaf: object, extra: int, as_dict: bool
) -> None:
    value: object = leaf
    for _ in range(extra):  # deepen it, alternating lists and objects
        value = {"k[": value} if as_dict else [value, "]}"]
        as_dict = not as_dict
    doc = {"v": value}
    raw = json.dumps(doc).encode()
    if depth_of(doc) > MAX_DEPTH:
        with pytest.raises(ValueError, match="nested deeper"):
            decode_value(raw)
    else:
        assert decode_value(raw) == doc


def test_keys_that_are_not_utf8_are_named_and_printable() -> None:
    assert key_problem("/apisix/routes/é") is None
    assert key_problem(BAD_KEY) == "key is not valid UTF-8"
    assert printable_key(BAD_KEY) == "/apisix/routes/\\xff"
    printable_key(BAD_KEY).encode()  # a log line or a JSON answer can carry it


# -- the store ---------------------------------------------------------------------------------


def test_a_bad_key_is_rejected_logged_and_counted_once_per_revision(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = Store()
    caplog.set_level(logging.WARNING, "tollway.config")
    bad = KeyValue(BAD_KEY, ROUTE_RAW, 2, 2)
    s.load(2, [KeyValue("/apisix/routes/1", ROUTE_RAW, 1, 1), bad])
    assert list(s["routes"].items) == ["1"] and s.rejected == 1
    s.load(3, [KeyValue("/apisix/routes/1", ROUTE_RAW, 1, 1), bad])  # a full reload: same item
    assert s.rejected == 1
    assert caplog.text.count("rejected config item /apisix/routes/\\xff: key is not valid") == 1
    s.apply(4, [KeyValue(BAD_KEY, ROUTE_RAW, 4, 2)])  # written again: a new revision
    assert s.rejected == 2
    s.apply(5, [KeyValue(BAD_KEY, None, 5)])  # its deletion changes nothing
    assert list(s["routes"].items) == ["1"] and s.last_changes == []
    s.apply(6, [KeyValue(BAD_KEY, ROUTE_RAW, 4, 2)])  # gone and back: said again
    assert s.rejected == 3


def test_empty_values_are_rejected_out_loud_placeholders_are_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = Store()
    caplog.set_level(logging.WARNING, "tollway.config")
    s.load(1, [KeyValue("/apisix/routes/e", b"", 1), KeyValue("/apisix/routes/d", b"init_dir", 1)])
    assert s.rejected == 1
    assert "rejected config item /apisix/routes/e: empty value" in caplog.text
    assert "/apisix/routes/d" not in caplog.text


def test_a_checker_that_crashes_costs_one_item(caplog: pytest.LogCaptureFixture) -> None:
    def checker(kind: str, item_id: str, obj: object, store: Store) -> None:
        if item_id == "boom":
            raise RecursionError("maximum recursion depth exceeded")
        if item_id == "no":
            raise ConfigError("no")

    s = Store(checker=checker)
    kvs = [KeyValue(f"/apisix/routes/{i}", ROUTE_RAW, 1) for i in ("a", "boom", "no", "b")]
    s.load(1, kvs)
    assert list(s["routes"].items) == ["a", "b"] and s.rejected == 2
    assert "rejected config item /apisix/routes/boom: internal error: RecursionError" in caplog.text


# -- property: any bytes, every collection -------------------------------------------------------

CHECKER = ItemChecker(load_registry(), strict=False)  # as the supervisor checks etcd items
VALID = {
    "routes": ROUTE,
    "services": {"upstream": {"nodes": {"127.0.0.1:1980": 1}}},
    "upstreams": {"nodes": {"127.0.0.1:1980": 1}},
    "consumers": {"username": "jack"},
    "global_rules": {"plugins": {}},
    "plugin_configs": {"plugins": {}},
    "consumer_groups": {"plugins": {}},
    "protos": {"content": "syntax = 'proto3';"},
}
DIRS = [*KINDS, "consumers/jack/credentials", "secrets/vault"]
etcd_bytes = st.binary(max_size=40) | st.sampled_from(
    [b"\xff", b"\xed\xa0\x80", b"\x00", b"/", b"init_dir", b"\\ud800", b'"\\udc80"']
)
values = (
    etcd_bytes
    | st.sampled_from([json.dumps(v).encode() for v in VALID.values()])
    | st.integers(0, 2000).map(nested)
    | st.builds(lambda v, junk: v[:-1] + b',"x":"' + junk + b'"}', st.just(ROUTE_RAW), etcd_bytes)
)
keys = st.builds(lambda d, tail: f"/apisix/{d}/".encode() + tail, st.sampled_from(DIRS), etcd_bytes)


@settings(max_examples=300)
@given(st.lists(st.tuples(keys, st.none() | values), min_size=1, max_size=6), st.booleans())
def test_any_bytes_never_escape_and_accepted_items_always_encode(
    changes: list[tuple[bytes, bytes | None]], full: bool
) -> None:
    s = Store(checker=CHECKER)
    s.load(1, [KeyValue("/apisix/routes/good", ROUTE_RAW, 1, 1)])
    kvs = [
        KeyValue(k.decode("utf-8", "surrogateescape"), v, rev, rev)
        for rev, (k, v) in enumerate(changes, start=2)
    ]
    if full:
        s.load(len(kvs) + 1, [kv for kv in kvs if kv.value is not None])
    else:
        s.apply(len(kvs) + 1, kvs)
    snapshot = s.snapshot()
    encode(Load.of(1, snapshot))  # to the workers
    msgspec.msgpack.encode(s.snapshot_rows())  # to the disk snapshot
    for coll in s.collections.values():
        for item in coll.items.values():
            json.dumps({"key": item.key, "value": item.value}).encode()  # Admin / control API
    # A good write made afterwards always lands.
    s.apply(100, [KeyValue("/apisix/routes/after", ROUTE_RAW, 100, 100)])
    assert "after" in s["routes"].items


# -- IPC ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"\xc1", msgspec.msgpack.encode([1, 2]), b"\x92\x01"])
def test_an_unreadable_ipc_frame_is_a_value_error(body: bytes) -> None:
    async def read() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(len(body).to_bytes(4, "big") + body)
        reader.feed_eof()
        await read_message(reader, TO_WORKER)

    with pytest.raises(ValueError):
        asyncio.run(read())


# -- standalone documents (apisix.yaml / apisix.json / PUT /apisix/admin/configs) ---------------


def test_a_standalone_item_that_cannot_be_encoded_is_skipped_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw = b'routes:\n  - id: "1"\n    uri: "/\\ud800"\n  - id: "2"\n    uri: /b\n#END\n'
    kvs = parse_config_file(Path("apisix.yaml"), raw)
    assert [kv.key for kv in kvs] == ["/apisix/routes/2"]
    assert "rejected config item /apisix/routes/1: a string is not valid UTF-8" in caplog.text


@pytest.mark.parametrize("name", ["apisix.yaml", "apisix.json"])
def test_a_standalone_file_nested_beyond_the_parser_is_unusable_not_a_crash(name: str) -> None:
    deep = b"[" * 5000 + b"]" * 5000
    raw = (
        b"routes:\n  - id: '1'\n    uri: " + deep + b"\n#END\n"
        if name.endswith("yaml")
        else b'{"routes":[{"id":"1","uri":' + deep + b"}]}"
    )
    with pytest.raises(SourceError, match="nested deeper than the parser can read"):
        parse_config_file(Path(name), raw)


@pytest.mark.parametrize(
    "body",
    [b'{"routes":[{"uri":"/\\ud800"}]}', b'{"routes":[{"uri":' + b"[" * 100 + b"]" * 100 + b"}]}",
     b'{"routes":' + b"[" * 5000 + b"]" * 5000 + b"}"],
)  # fmt: skip
def test_the_standalone_api_refuses_a_body_the_store_cannot_hold(body: bytes) -> None:
    with pytest.raises(AdminError) as e:
        StandaloneConfigs._parse("application/json", body)
    assert e.value.status == 400
