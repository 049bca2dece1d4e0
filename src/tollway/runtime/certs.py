"""The certificate table compiled from the ``ssls`` objects: SNI name -> server SSLContext.

Built by the Compiler off the request path (one table per change batch); the HTTPS listener
(:mod:`tollway.proxy.tls`) looks names up in the table of the current runtime. An ssl object with
``client.ca`` asks the client for a certificate (mTLS); see ``ClientCheck``.
"""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tollway.crypto import KeyCipher
from tollway.regex import Regex, compile_regex

log = logging.getLogger("tollway.runtime")


class CertTable:
    """SNI name -> SSLContext holding that ssl object's certificate(s)."""

    def __init__(self) -> None:
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcard: list[tuple[str, ssl.SSLContext]] = []  # (".suffix.com", ctx), longest first
        self.client_cas: list[str] = []  # PEMs of every ssl object's client.ca (mTLS)

    def find(self, name: str) -> ssl.SSLContext | None:
        found = self.exact.get(name)
        if found is not None:
            return found
        for suffix, ctx in self.wildcard:
            # "*.test.com" covers one label: a.test.com, not a.b.test.com (APISIX radixtree_sni)
            if name.endswith(suffix) and "." not in name[: -len(suffix)]:
                return ctx
        return None

    def __len__(self) -> int:
        return len(self.exact) + len(self.wildcard)


@dataclass(frozen=True, slots=True)
class ClientCheck:
    """mTLS towards clients for one ssl object (``ssls.client``): a request on a connection
    whose certificate was not issued by ``client.ca`` is answered 400 (APISIX
    ``verify_https_client``), unless its path matches one of ``skip_mtls_uri_regex``."""

    skip: Regex | None  # RE2 (tollway.regex); the ssl object's schema checked each rule
    cas: tuple[Any, ...]  # the CA certificates (cryptography x509)

    def accepts(self, der: bytes | None) -> bool:
        """The client's certificate (DER, already verified against every client CA at the
        handshake) was issued by one of this object's CAs."""
        if not der:
            return False
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature

        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return False
        for ca in self.cas:
            try:
                cert.verify_directly_issued_by(ca)
                return True
            except (ValueError, TypeError, InvalidSignature):
                continue
        return False


def client_check(ctx: ssl.SSLContext | None) -> ClientCheck | None:
    """The check of the context the SNI callback chose for a connection, if any."""
    return getattr(ctx, "tollway_client_check", None)


def _client_check(client: Any) -> ClientCheck:
    from cryptography import x509

    rules = client.skip_mtls_uri_regex
    cas = tuple(x509.load_pem_x509_certificates(client.ca.encode()))
    return ClientCheck(compile_regex("|".join(rules)) if rules else None, cas)


def _pem_context(pairs: list[tuple[str, str]], client: Any = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if client is not None:
        # The handshake verifies against the store of the context the SNI callback switched
        # to: this object's CAs only.
        ctx.load_verify_locations(cadata=client.ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.tollway_client_check = _client_check(client)  # type: ignore[attr-defined]
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
            ctx = _pem_context(pairs, obj.client)
        except (ssl.SSLError, OSError, ValueError) as e:
            log.warning("ssl %s: certificate not loaded: %s", ssl_id, e)
            continue
        if obj.client is not None:
            table.client_cas.append(obj.client.ca)
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
