"""The HTTPS listener: certificates come from the ``ssls`` objects, chosen by SNI.

One server SSLContext per worker; its SNI callback looks the name up in the certificate table of
the current runtime (exact names first, then the longest ``*.suffix``), so a changed ssl object
takes effect for the next handshake without touching the listener. A handshake without SNI, or
with a name no ssl object covers, fails (APISIX has no default certificate either). An ssl object
with ``client.ca`` asks the client for a certificate (mTLS); see ``ClientCheck``.

ALPN (RFC 7301) offers ``h2`` then ``http/1.1`` with HTTP/2 enabled, else only ``http/1.1``.
OpenSSL answers ALPN from the context the SNI callback switched to (checked: the listener's
list is not used then), so each ssl object's context gets the list too, once.
"""

from __future__ import annotations

import ssl
import weakref
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


def alpn_protocols(http2: bool) -> list[str]:
    return ["h2", "http/1.1"] if http2 else ["http/1.1"]


def server_context(
    table: Callable[[], CertTable], protocols: str, http2: bool = False
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    alpn = alpn_protocols(http2)
    ctx.set_alpn_protocols(alpn)
    with_alpn: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()
    versions = [_PROTOCOLS[p] for p in protocols.split() if p in _PROTOCOLS]
    if versions:
        ctx.minimum_version = min(versions)
        ctx.maximum_version = max(versions)

    def pick(sslobj: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> int | None:
        found = table().find(name.lower()) if name else None
        if found is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        if found not in with_alpn:
            found.set_alpn_protocols(alpn)
            with_alpn.add(found)
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
