"""Rejections read as APISIX's validator (api7/jsonschema) words them: clients match on them.

The expected strings are the ones APISIX's own test suite asserts (t/admin/routes.t,
t/admin/schema-validate.t, t/admin/upstream.t) or the shape its validator builds.
"""

from __future__ import annotations

from typing import Any

import pytest

from tollway.errors import ConfigError
from tollway.model import decode_item
from tollway.plugins.registry import load_registry

ROUTE = {"uri": "/index.html", "upstream_id": "1"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            {**ROUTE, "uri": 666},
            'property "uri" validation failed: wrong type: expected string, got number',
        ),
        (
            {**ROUTE, "methods": ["invalid_method"]},
            'property "methods" validation failed: failed to validate item 1: '
            "matches none of the enum values",
        ),
        (
            {"uri": "/a", "service_id": "invalid_id$"},
            'property "service_id" validation failed: object matches none of the required',
        ),
        (
            {**ROUTE, "id": "a b"},
            'property "id" validation failed: object matches none of the required',
        ),
        (
            {**ROUTE, "labels": {"env": ["a"]}},
            'property "labels" validation failed: failed to validate env (matching ".*"): '
            "wrong type: expected string, got table",
        ),
        (
            {**ROUTE, "status": 3},
            'property "status" validation failed: matches none of the enum values',
        ),
        (
            {**ROUTE, "methods": ["GET", "POST", "GET"]},
            'property "methods" validation failed: expected unique items but items 1 and 3 are '
            "equal",
        ),
        (
            {**ROUTE, "uri": ""},
            'property "uri" validation failed: string too short, expected at least 1, got 0',
        ),
        (
            {**ROUTE, "name": "n" * 300},
            'property "name" validation failed: string too long, expected at most 256, got 300',
        ),
        (
            {**ROUTE, "hosts": []},
            'property "hosts" validation failed: expect array to have at least 1 items',
        ),
        (
            {**ROUTE, "hosts": ["a.com", 7]},
            'property "hosts" validation failed: failed to validate item 2: wrong type: '
            "expected string, got number",
        ),
        (
            {"uri": "/a", "upstream": {"nodes": {"127.0.0.1:80": -1}}},
            'property "upstream" validation failed: property "nodes" validation failed: '
            "object matches none of the required",
        ),
        (
            {"uri": "/a", "upstream": {"nodes": {"a:1": 1}, "timeout": {"connect": -1}}},
            'property "upstream" validation failed: property "timeout" validation failed: '
            'property "connect" validation failed: expected -1 to be greater than 0',
        ),
        ({**ROUTE, "foo": 1}, "additional properties forbidden, found foo"),
        ([1], "wrong type: expected object, got table"),
    ],
)
def test_route_messages_are_apisix_words(value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        decode_item("routes", value)
    assert str(e.value) == f"invalid configuration: {message}"


def test_the_same_words_from_bytes_read_out_of_etcd() -> None:
    with pytest.raises(ConfigError) as e:
        decode_item("routes", b'{"uri": 666, "upstream_id": "1"}')
    assert str(e.value) == (
        'invalid configuration: property "uri" validation failed: '
        "wrong type: expected string, got number"
    )


@pytest.mark.parametrize(
    ("name", "conf", "message"),
    [
        ("key-auth", {"header": 1}, 'property "header" validation failed: wrong type: expected '),
        (
            "limit-count",
            {"count": 1, "time_window": 1, "policy": "x"},
            'property "policy" validation failed: matches none of the enum values',
        ),
        ("cors", {"max_age": "x"}, "wrong type: expected integer, got string"),
    ],
)
def test_plugin_messages(name: str, conf: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_registry(None).decode_conf(name, conf)
    assert str(e.value).startswith(f"failed to check the configuration of plugin {name} err: ")
    assert message in str(e.value)


CERT, KEY = "c" * 128, "k" * 32


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        # APISIX ssl.t: the schema's if/then names the clause
        ("ssls", {"sni": "foo.com"}, "invalid configuration: then clause did not match"),
        ("ssls", {"cert": CERT, "key": KEY}, "invalid configuration: then clause did not match"),
        (
            "ssls",
            {"cert": CERT, "key": KEY, "sni": "a.com", "snis": ["b.com"]},
            "invalid configuration: then clause did not match",
        ),
        ("ssls", {"type": "client"}, "invalid configuration: else clause did not match"),
        (
            "upstreams",
            {"nodes": {"127.0.0.1:80": 1}, "type": "chash", "hash_on": "vars", "key": "args_x"},
            'invalid configuration: failed to match pattern "^((uri|server_name|server_addr|'
            "request_uri|remote_port|remote_addr|query_string|host|hostname|mqtt_client_id)|"
            'arg_[0-9a-zA-z_-]+)$" with "args_x"',
        ),
        (
            "routes",
            {"uri": "/x"},
            'invalid configuration: object matches none of the required: ["plugins","uri"] or '
            '["upstream","uri"] or ["upstream_id","uri"] or ["service_id","uri"] or '
            '["plugins","uris"] or ["upstream","uris"] or ["upstream_id","uris"] or '
            '["service_id","uris"] or ["script","uri"] or ["script","uris"]',
        ),
    ],
)
def test_checks_beyond_properties_use_apisix_words(kind: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        decode_item(kind, value)
    assert str(e.value) == message


def test_bounds_in_the_words_of_apisix_3() -> None:
    # t/admin/upstream4.t TEST 6 and health-check.t (3.x): minimum "at least", maximum "at most"
    with pytest.raises(ConfigError) as e:
        decode_item("upstreams", {"nodes": {"127.0.0.1:80": 1}, "retries": -1})
    assert str(e.value).endswith(
        'property "retries" validation failed: expected -1 to be at least 0'
    )
