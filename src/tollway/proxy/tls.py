"""The HTTPS listener: certificates come from the ``ssls`` objects, chosen by SNI.

One server SSLContext per worker; its SNI callback looks the name up in the certificate table of
the current runtime (exact names first, then the longest ``*.suffix``), so a changed ssl object
takes effect for the next handshake without touching the listener. A handshake without SNI, or
with a name no ssl object covers, fails (APISIX has no default certificate either).
"""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

from tollway.crypto import KeyCipher

log = logging.getLogger("tollway.proxy")

_PROTOCOLS = {"TLSv1.1": ssl.TLSVersion.TLSv1_1, "TLSv1.2": ssl.TLSVersion.TLSv1_2,
              "TLSv1.3": ssl.TLSVersion.TLSv1_3}  # fmt: skip


class CertTable:
    """SNI name -> SSLContext holding that ssl object's certificate(s)."""

    def __init__(self) -> None:
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcard: list[tuple[str, ssl.SSLContext]] = []  # (".suffix.com", ctx), longest first

    def find(self, name: str) -> ssl.SSLContext | None:
        found = self.exact.get(name)
        if found is not None:
            return found
        for suffix, ctx in self.wildcard:
            if name.endswith(suffix):
                return ctx
        return None

    def __len__(self) -> int:
        return len(self.exact) + len(self.wildcard)


def _pem_context(pairs: list[tuple[str, str]]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # ssl loads chains from files only: write them to a private directory, load, delete.
    d = tempfile.mkdtemp(prefix="tollway-ssl-")
    try:
        for n, (cert, key) in enumerate(pairs):
            cert_path, key_path = os.path.join(d, f"{n}.crt"), os.path.join(d, f"{n}.key")
            with open(cert_path, "w") as f:
                f.write(cert)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key)
            ctx.load_cert_chain(cert_path, key_path)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return ctx


def build_cert_table(items: Iterable[tuple[str, Any]], cipher: KeyCipher | None) -> CertTable:
    """``items``: (id, model.SSL). Client certificates and disabled objects are skipped; an
    object whose certificate does not load is logged and skipped, the others serve."""
    table = CertTable()
    wild: list[tuple[str, ssl.SSLContext]] = []
    for ssl_id, obj in items:
        if obj.type != "server" or obj.status == 0 or not obj.cert or not obj.key:
            continue
        pairs = [(obj.cert, obj.key), *zip(obj.certs or [], obj.keys or [], strict=False)]
        pairs = [(c, _plain_key(k, cipher)) for c, k in pairs]
        try:
            ctx = _pem_context(pairs)
        except (ssl.SSLError, OSError, ValueError) as e:
            log.warning("ssl %s: certificate not loaded: %s", ssl_id, e)
            continue
        for name in obj.snis or ([obj.sni] if obj.sni else []):
            name = name.lower()
            if name.startswith("*."):
                wild.append((name[1:], ctx))
            else:
                table.exact[name] = ctx
    wild.sort(key=lambda e: -len(e[0]))
    table.wildcard = wild
    return table


def _plain_key(key: str, cipher: KeyCipher | None) -> str:
    if key.lstrip().startswith("-----BEGIN") or cipher is None:
        return key
    return cipher.decrypt(key) or key  # stored encrypted with the keyring (APISIX's scheme)


def server_context(table: Callable[[], CertTable], protocols: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    versions = [_PROTOCOLS[p] for p in protocols.split() if p in _PROTOCOLS]
    if versions:
        ctx.minimum_version = min(versions)
        ctx.maximum_version = max(versions)

    def pick(sslobj: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> int | None:
        found = table().find(name.lower()) if name else None
        if found is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = found
        return None

    ctx.sni_callback = pick
    return ctx
