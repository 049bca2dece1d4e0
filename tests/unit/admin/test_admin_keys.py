"""Admin key policy: secure by default, generated key persisted, token check."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tollway.admin.keys import AdminKey, AdminKeyError, check_token, is_loopback, resolve_keys

KNOWN = "edd1c9f034335f136f87ad84b625c8f1"


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"])
def test_loopback(ip: str) -> None:
    assert is_loopback(ip)


@pytest.mark.parametrize("ip", ["0.0.0.0", "::", "10.0.0.1", "example.com"])
def test_not_loopback(ip: str) -> None:
    assert not is_loopback(ip)


def test_exposed_listener_refuses_empty_or_known_keys(tmp_path: Path) -> None:
    for key in ("", KNOWN, "4054f7cf07e344346cd3f287985e76a2"):
        with pytest.raises(AdminKeyError, match=r"admin_key\[admin\]"):
            resolve_keys(
                [AdminKey("admin", key, "admin")],
                listen_ip="0.0.0.0",
                required=True,
                run_dir=tmp_path,
            )
    with pytest.raises(AdminKeyError, match="admin_key_required: false while"):
        resolve_keys([], listen_ip="0.0.0.0", required=False, run_dir=tmp_path)


def test_exposed_listener_with_a_real_key_starts(tmp_path: Path) -> None:
    keys = [AdminKey("admin", "s3cret-s3cret", "admin")]
    assert resolve_keys(keys, listen_ip="0.0.0.0", required=True, run_dir=tmp_path) == keys


def test_no_key_generates_one_and_keeps_it(tmp_path: Path) -> None:
    keys = resolve_keys([], listen_ip="127.0.0.1", required=True, run_dir=tmp_path / "run")
    path = tmp_path / "run" / "admin_key"
    assert len(keys) == 1 and keys[0].role == "admin" and len(keys[0].key) == 32
    assert path.read_text().strip() == keys[0].key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = resolve_keys([], listen_ip="127.0.0.1", required=True, run_dir=tmp_path / "run")
    assert again == keys


def test_empty_key_on_loopback_gets_the_generated_key(tmp_path: Path) -> None:
    keys = resolve_keys(
        [AdminKey("ops", "", "viewer"), AdminKey("admin", "k", "admin")],
        listen_ip="127.0.0.1",
        required=True,
        run_dir=tmp_path,
    )
    assert keys[0].name == "ops" and keys[0].role == "viewer" and len(keys[0].key) == 32
    assert keys[1] == AdminKey("admin", "k", "admin")


def test_check_token() -> None:
    keys = [AdminKey("a", "ka", "admin"), AdminKey("v", "kv", "viewer")]
    assert check_token(keys, None, "GET", required=True) == "missing apikey"
    assert check_token(keys, "x", "GET", required=True) == "wrong apikey"
    assert check_token(keys, "ka", "DELETE", required=True) is None
    assert check_token(keys, "kv", "GET", required=True) is None
    assert check_token(keys, "kv", "PUT", required=True) == "invalid method for role viewer"
    assert check_token(keys, None, "PUT", required=False) is None


def test_a_key_with_invalid_utf8_bytes_is_a_wrong_key() -> None:
    """aiohttp hands a header's invalid UTF-8 bytes over as surrogate escapes (issue #18: this
    raised UnicodeEncodeError, a 500); a lone surrogate from a query is refused as well."""
    keys = [AdminKey("admin", "s3cret-s3cret", "admin")]
    sent = b"\xff\xfe".decode("utf-8", "surrogateescape")
    assert check_token(keys, sent, "GET", required=True) == "wrong apikey"
    assert check_token(keys, "\ud800", "GET", required=True) == "wrong apikey"
    # a configured key of any bytes still matches itself
    odd = [AdminKey("admin", "clé-s3cret", "admin")]
    assert check_token(odd, "clé-s3cret", "GET", required=True) is None
