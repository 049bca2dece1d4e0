"""SSL private keys encrypted at rest, as APISIX's ``data_encryption`` does.

APISIX (``apisix/ssl.lua: aes_encrypt_pkey``): AES-128-CBC, PKCS#7 padding, the first keyring
entry (16 bytes) used both as key and as IV, the result base64-encoded; decryption tries every
keyring entry. Python's stdlib has no AES, so this calls the libcrypto that the ``ssl`` module
already loads, through ctypes (no new dependency).

Unlike APISIX, which ships a default keyring, Tollway encrypts only when
``apisix.data_encryption.keyring`` is set in config.yaml.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import ssl  # noqa: F401 - makes sure libcrypto is loaded in the process
from collections.abc import Sequence
from typing import Any

from tollway.errors import ConfigError


def _load() -> Any:
    name = ctypes.util.find_library("crypto") or "libcrypto.so.3"
    lib = ctypes.CDLL(name)
    vp, cp, ip = ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)
    lib.EVP_CIPHER_CTX_new.restype = vp
    lib.EVP_CIPHER_CTX_free.argtypes = [vp]
    lib.EVP_aes_128_cbc.restype = vp
    for fn in ("EVP_EncryptInit_ex", "EVP_DecryptInit_ex"):
        getattr(lib, fn).argtypes = [vp, vp, vp, cp, cp]
    for fn in ("EVP_EncryptUpdate", "EVP_DecryptUpdate"):
        getattr(lib, fn).argtypes = [vp, cp, ip, cp, ctypes.c_int]
    for fn in ("EVP_EncryptFinal_ex", "EVP_DecryptFinal_ex"):
        getattr(lib, fn).argtypes = [vp, cp, ip]
    return lib


_LIB: Any = None


def _aes_128_cbc(data: bytes, key: bytes, *, encrypt: bool) -> bytes | None:
    global _LIB
    if _LIB is None:
        _LIB = _load()
    lib = _LIB
    op = "Encrypt" if encrypt else "Decrypt"
    ctx = lib.EVP_CIPHER_CTX_new()
    if not ctx:
        raise MemoryError("EVP_CIPHER_CTX_new failed")
    try:
        if getattr(lib, f"EVP_{op}Init_ex")(ctx, lib.EVP_aes_128_cbc(), None, key, key) != 1:
            return None
        out = ctypes.create_string_buffer(len(data) + 32)
        n, m = ctypes.c_int(0), ctypes.c_int(0)
        if getattr(lib, f"EVP_{op}Update")(ctx, out, ctypes.byref(n), data, len(data)) != 1:
            return None
        tail = ctypes.cast(ctypes.addressof(out) + n.value, ctypes.c_char_p)
        if getattr(lib, f"EVP_{op}Final_ex")(ctx, tail, ctypes.byref(m)) != 1:
            return None
        return out.raw[: n.value + m.value]
    finally:
        lib.EVP_CIPHER_CTX_free(ctx)


class KeyCipher:
    """Encrypts with the first keyring entry; decrypts with whichever entry works."""

    def __init__(self, keyring: Sequence[str]) -> None:
        keys = [k.encode() for k in keyring]
        for k in keys:
            if len(k) != 16:
                raise ConfigError(
                    "apisix.data_encryption.keyring: each key must be 16 characters long"
                )
        if not keys:
            raise ConfigError("apisix.data_encryption.keyring is empty")
        self.keys = keys

    def encrypt(self, text: str) -> str:
        """Only PEM text (``---...``) is encrypted, as APISIX does, so a value that is already
        encrypted (copied back from a GET of etcd) is not encrypted twice."""
        if not text.startswith("---"):
            return text
        out = _aes_128_cbc(text.encode(), self.keys[0], encrypt=True)
        if out is None:
            raise ConfigError("failed to encrypt the private key")
        return base64.b64encode(out).decode()

    def decrypt(self, text: str) -> str | None:
        """None when no keyring entry decrypts ``text`` (e.g. it was stored in clear)."""
        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError:
            return None
        for k in self.keys:
            out = _aes_128_cbc(raw, k, encrypt=False)
            if out is not None:
                try:
                    return out.decode()
                except UnicodeDecodeError:
                    continue
        return None
