"""Local config loading and apisix.yaml parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tollway.config.yaml_source import parse_config_file, parse_yaml_config
from tollway.errors import SettingsError, SourceError
from tollway.settings import load_settings, parse_duration, parse_size


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "conf" / "config.yaml"
    p.parent.mkdir(exist_ok=True)
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path: Path) -> None:
    s = load_settings(
        write(tmp_path, "apisix:\n  node_listen: [{ip: 127.0.0.1, port: 9999}, 8000]\n")
    )
    assert s.listens == (("127.0.0.1", 9999), ("0.0.0.0", 8000))
    assert s.conf.apisix.router.http == "radixtree_host_uri"
    assert s.config_provider == "etcd"
    assert s.conf.deployment.admin.admin_listen.ip == "127.0.0.1"


def test_wrong_type_names_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as e:
        load_settings(write(tmp_path, "deployment:\n  etcd:\n    timeout: fast\n"))
    assert e.value.key == "deployment.etcd.timeout"
    assert "config.yaml" in str(e.value)


def test_unknown_key_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    load_settings(write(tmp_path, "apisix:\n  no_such_key: 1\n"))
    assert "unknown key apisix.no_such_key" in caplog.text


def test_sizes_and_durations() -> None:
    assert parse_size("1m") == 1 << 20 and parse_size("10k") == 10240 and parse_size(0) == 0
    assert parse_duration("60s") == 60 and parse_duration("500ms") == 0.5
    with pytest.raises(ValueError):
        parse_size("lots")


def test_redirect_https_port_defaults_to_the_https_listener(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "apisix: {ssl: {listen: [{port: 8443}]}}\n"))
    assert s.plugin_attr["redirect"]["https_port"] == 8443
    text = "apisix: {ssl: {listen: [{port: 8443}]}}\nplugin_attr: {redirect: {https_port: 443}}\n"
    assert load_settings(write(tmp_path, text)).plugin_attr["redirect"]["https_port"] == 443
    off = load_settings(write(tmp_path, "apisix: {ssl: {enable: false}}\n"))
    assert "redirect" not in off.plugin_attr


def test_yaml_nested_credentials_are_keys_of_their_own() -> None:
    kvs = parse_yaml_config(
        b"consumers:\n  - username: jill\n    labels: {team: a}\n    credentials:\n"
        b"      - {id: c1, plugins: {key-auth: {key: k}}}\n#END\n"
    )
    assert [kv.key for kv in kvs] == [
        "/apisix/consumers/jill",
        "/apisix/consumers/jill/credentials/c1",
    ]
    assert json.loads(kvs[0].value or b"") == {"username": "jill", "labels": {"team": "a"}}


def test_json_provider_reads_apisix_json(tmp_path: Path) -> None:
    conf = "deployment: {role: data_plane, role_data_plane: {config_provider: json}}\n"
    s = load_settings(write(tmp_path, conf))
    assert s.yaml_path.name == "apisix.json" and not s.api_driven
    kvs = parse_config_file(
        s.yaml_path, b'{"routes": [{"id": "1", "uri": "/j", "upstream_id": 1}]}'
    )
    assert [kv.key for kv in kvs] == ["/apisix/routes/1"]  # no #END in JSON
    with pytest.raises(SourceError, match="invalid JSON"):
        parse_config_file(s.yaml_path, b"{routes")


def test_yaml_needs_end_marker() -> None:
    with pytest.raises(SourceError, match="#END"):
        parse_yaml_config(b"routes: []\n")


def test_yaml_ids_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("URI", "/env")
    kvs = parse_yaml_config(
        b"routes:\n  - {uri: '${{URI}}', upstream_id: 1}\n  - {id: x, uri: '${{NOPE:=/d}}', upstream_id: 1}\n"
        b"consumers:\n  - {username: jack}\n#END\n"
    )
    keys = [kv.key for kv in kvs]
    assert keys == ["/apisix/routes/arr_0", "/apisix/routes/x", "/apisix/consumers/jack"]
    assert json.loads(kvs[0].value or b"")["uri"] == "/env"
    assert json.loads(kvs[1].value or b"")["uri"] == "/d"
    with pytest.raises(SourceError, match="NOT_SET"):
        parse_yaml_config(b"routes:\n  - {uri: '${{NOT_SET}}'}\n#END\n")


def test_enable_http2_global_and_legacy_per_listener(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "apisix: {}\n")).http2  # APISIX 3.9+: default true
    off = "apisix: {enable_http2: false}\n"
    assert not load_settings(write(tmp_path, off)).http2
    # APISIX <= 3.8: per listener; the keys load, and one listener asking for it turns it on
    legacy = (
        "apisix:\n  node_listen: [{port: 9080, enable_http2: false}, 9081]\n"
        "  ssl: {listen: [{port: 9443, enable_http2: true}]}\n"
    )
    s = load_settings(write(tmp_path, legacy))
    assert s.http2 and s.listens == (("0.0.0.0", 9080), ("0.0.0.0", 9081))
    only_off = "apisix:\n  node_listen: [{port: 9080, enable_http2: false}]\n"
    assert not load_settings(write(tmp_path, only_off)).http2
    # the global key wins over legacy ones, as in APISIX 3.9 (which deprecated them)
    both = "apisix:\n  enable_http2: true\n  node_listen: [{port: 9080, enable_http2: false}]\n"
    assert load_settings(write(tmp_path, both)).http2
