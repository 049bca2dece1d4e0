"""The HTTPS listener: certificates come from the ``ssls`` objects, chosen by SNI.

One server SSLContext per worker; its SNI callback looks the name up in the certificate table of
the current runtime (exact names first, then the longest ``*.suffix``), so a changed ssl object
takes effect for the next handshake without touching the listener. A handshake without SNI, or
with a name no ssl object covers, fails (APISIX has no default certificate either). An ssl object
with ``client.ca`` asks the client for a certificate (mTLS); see ``ClientCheck``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from tollway.runtime.certs import CertTable, ClientCheck, build_cert_table, client_check

__all__ = [
    "CertTable",
    "ClientCheck",
    "build_cert_table",
    "client_check",
    "server_context",
    "sync_client_cas",
]

_PROTOCOLS = {"TLSv1.1": ssl.TLSVersion.TLSv1_1, "TLSv1.2": ssl.TLSVersion.TLSv1_2,
              "TLSv1.3": ssl.TLSVersion.TLSv1_3}  # fmt: skip


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


def sync_client_cas(ctx: ssl.SSLContext, table: CertTable, loaded: set[str]) -> None:
    """Ask clients for a certificate when some ssl object wants one (mTLS).

    OpenSSL keeps the verify mode of the listener's context when the SNI callback switches to
    an ssl object's context (the certificate is then verified with that object's CAs), so the
    listener asks every client, optionally, while some object wants a certificate. Its own CA
    list only names acceptable issuers in the request; CAs are only ever added to it."""
    if not table.client_cas:
        ctx.verify_mode = ssl.CERT_NONE
        return
    for pem in table.client_cas:
        if pem not in loaded:
            ctx.load_verify_locations(cadata=pem)
            loaded.add(pem)
    ctx.verify_mode = ssl.CERT_OPTIONAL
