"""Object schemas: APISIX-style messages naming the property."""

from __future__ import annotations

import pytest

from tollway.errors import ConfigError
from tollway.model import decode_item
from tollway.model.objects import split_host_port


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        ("routes", {"uri": "/a"}, "object matches none of the required"),
        (
            "routes",
            {"uri": "/a", "uris": ["/b"], "upstream_id": 1},
            "allOf 1 failed: value should match only one schema, but matches both schemas 1 and 2",
        ),
        (
            "routes",
            {"upstream_id": 1},
            "allOf 1 failed: value should match only one schema, but matches none",
        ),
        (
            "routes",
            {"uri": "/a", "upstream_id": 1, "foo": 1},
            "additional properties forbidden, found foo",
        ),
        ("routes", {"uri": "/a", "upstream_id": 1, "methods": ["FETCH"]}, 'property "methods"'),
        ("routes", {"uri": "/a", "upstream_id": 1, "host": "a.*.com"}, 'property "host"'),
        (
            "routes",
            {"uri": "/a", "upstream_id": 1, "remote_addr": "300.1.1.1"},
            'property "remote_addr" validation failed: object matches none of the required',
        ),
        (
            "routes",
            {"uri": "/a", "upstream_id": 1, "remote_addrs": ["::1", "x"]},
            'property "remote_addrs" validation failed: failed to validate item 2: object matches'
            " none of the required",
        ),
        ("upstreams", {"nodes": {"127.0.0.1:80": -1}}, 'property "nodes"'),
        ("upstreams", {"nodes": [{"host": "::1", "port": 80, "weight": 1}]}, "enclosed with '['"),
        ("upstreams", {"type": "chash", "nodes": {}}, "missing key"),
        (
            "upstreams",
            {"nodes": {}, "pass_host": "rewrite"},
            "`upstream_host` can't be empty when `pass_host` is `rewrite`",
        ),
        ("upstreams", {}, "nodes or service_name"),
        ("consumers", {"username": "bad name"}, 'property "username"'),
        ("global_rules", {}, '"plugins" is required'),
    ],
)
def test_invalid_items(kind: str, value: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        decode_item(kind, value)
    assert message in str(e.value)


def test_valid_items_and_defaults() -> None:
    r = decode_item("routes", {"uri": "/a", "upstream": {"nodes": {"[::1]:80": 1, "a.com": 2}}})
    assert r.priority == 0 and r.status == 1
    nodes = r.upstream.node_list()
    assert (nodes[0].host, nodes[0].port) == ("[::1]", 80) and nodes[1].port is None


def test_split_host_port() -> None:
    assert split_host_port("1.2.3.4:8080") == ("1.2.3.4", 8080)
    assert split_host_port("[::1]") == ("[::1]", None)
    with pytest.raises(ValueError):
        split_host_port("a:99999")


def test_fields_apisix_schemas_allow() -> None:
    # stream_route does not forbid other properties in APISIX; an SSL may carry exptime.
    assert decode_item("stream_routes", {"server_port": 9100, "upstream_id": 1, "x": 1})
    with pytest.raises(ConfigError, match="exptime"):
        decode_item("ssls", {"cert": "c" * 128, "key": "k" * 32, "snis": ["a"], "exptime": 1})


def test_ssl_skip_mtls_uri_regex_must_run_on_re2() -> None:
    client = {"ca": "c" * 128, "skip_mtls_uri_regex": ["^/health$", "^/a(?=b)"]}
    ssl = {"type": "client", "cert": "x" * 128, "key": "y" * 32, "client": client}
    with pytest.raises(ConfigError) as e:
        decode_item("ssls", ssl)
    assert 'property "skip_mtls_uri_regex" validation failed: invalid perl operator' in str(e.value)
    ok = decode_item("ssls", {**ssl, "client": {**client, "skip_mtls_uri_regex": ["^/health$"]}})
    assert ok.client.skip_mtls_uri_regex == ["^/health$"]
