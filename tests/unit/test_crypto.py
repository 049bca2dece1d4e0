"""SSL key encryption matches APISIX's AES-128-CBC (key = IV = keyring entry), checked against
the openssl command line."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tollway.crypto import KeyCipher
from tollway.errors import ConfigError

RING = ["qeddd145sfvddff3", "edd1c9f0985e76a2"]


def test_round_trip_and_any_keyring_entry_decrypts() -> None:
    text = "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n"
    enc = KeyCipher(RING).encrypt(text)
    assert enc != text
    assert KeyCipher(RING).decrypt(enc) == text
    assert KeyCipher([RING[1], RING[0]]).decrypt(enc) == text
    assert KeyCipher([RING[1]]).decrypt(enc) is None
    assert KeyCipher(RING).decrypt("not base64 !!") is None


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_same_bytes_as_openssl() -> None:
    key = RING[0].encode().hex()
    out = subprocess.run(
        ["openssl", "enc", "-aes-128-cbc", "-K", key, "-iv", key, "-a", "-A"],
        input=b"---hello world",
        capture_output=True,
        check=True,
    )
    assert KeyCipher(RING).encrypt("---hello world") == out.stdout.decode().strip()


def test_only_pem_text_is_encrypted() -> None:
    enc = KeyCipher(RING).encrypt("-----BEGIN PRIVATE KEY-----")
    assert KeyCipher(RING).encrypt(enc) == enc


def test_keyring_entries_must_be_16_chars() -> None:
    with pytest.raises(ConfigError, match="16 characters"):
        KeyCipher(["short"])
