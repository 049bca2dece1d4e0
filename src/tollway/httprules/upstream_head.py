"""The head of the request sent upstream: Host, the client's fields minus the hop-by-hop ones,
the forwarding fields, the framing.

Pure (no asyncio, no sockets): values and bytes in, bytes out. ``proxy`` gathers the values
(the request, what plugins edited, the compiled upstream) and writes what these return.
"""

from __future__ import annotations

from tollway.httprules.fields import HOP_BY_HOP

# X-Forwarded-Proto/-Host/-Port a trusted proxy in front may have set.
FORWARDED = frozenset({b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port"})
# Client fields never copied upstream as they are: hop-by-hop ones (RFC 9110 7.6.1), Host
# (pass_host decides), Content-Length (re-framed) and the X-Forwarded-* / X-Real-IP the gateway
# sets itself.
SKIP_UPSTREAM = (
    HOP_BY_HOP | {b"host", b"content-length", b"x-forwarded-for", b"x-real-ip"} | FORWARDED
)


def host_field(
    rewritten: str | None,
    pass_host: str,
    upstream_host: str | None,
    scheme: str,
    node: str,
    port: int,
    client_host: bytes,
) -> bytes:
    """The Host sent upstream (RFC 9110 7.2), as APISIX decides it (upstream.lua): a Host set
    by a plugin (proxy-rewrite) first; ``pass_host: node`` the node's name, with its port unless
    it is the scheme's default; ``rewrite`` the configured ``upstream_host``; otherwise (``pass``)
    the client's Host as sent (or the node's name when the client sent none: HTTP/1.0)."""
    if rewritten is not None:
        return rewritten.encode("latin-1")
    if pass_host == "node":
        default = 443 if scheme in ("https", "grpcs") else 80
        return (node if port == default else f"{node}:{port}").encode("latin-1")
    if pass_host == "rewrite" and upstream_host:
        return upstream_host.encode("latin-1")
    return client_host or node.encode("latin-1")


def forwarding_fields(
    remote: bytes,
    xff: bytes | None,
    fwd: dict[bytes, bytes] | None,
    scheme: bytes,
    server_port: int,
    host: bytes,
) -> bytes:
    """X-Real-IP, X-Forwarded-Proto/-Port/-For/-Host as nginx's APISIX sends them: the client's
    address is appended to the X-Forwarded-For it came with (the de facto list); Proto, Port and
    Host are what a trusted proxy in front said (``fwd``, only from peers in real_ip_from), else
    this hop's own."""
    xff_value = xff + b", " + remote if xff else remote
    if fwd is None:
        return b"X-Real-IP: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Port: %d\r\n" % (
            remote,
            scheme,
            server_port,
        ) + b"X-Forwarded-For: %s\r\nX-Forwarded-Host: %s\r\n" % (xff_value, host)
    get = fwd.get
    return b"".join(
        (
            b"X-Real-IP: ", remote,
            b"\r\nX-Forwarded-Proto: ", get(b"x-forwarded-proto") or scheme,
            b"\r\nX-Forwarded-Port: ", get(b"x-forwarded-port") or b"%d" % server_port,
            b"\r\nX-Forwarded-For: ", xff_value,
            b"\r\nX-Forwarded-Host: ", get(b"x-forwarded-host") or host,
            b"\r\n",
        )
    )  # fmt: skip


def framing_fields(
    method: str,
    upgrade: bytes | None,
    replay: bytes | None,
    has_body: bool,
    chunked: bool,
    content_length: int,
) -> bytes:
    """How the upstream request's body is delimited (RFC 9112 6): a tunnel asks for the upgrade
    (RFC 9110 7.8); a body read whole (``replay``) goes with its length (also an empty one for
    the methods that carry a body, as nginx sends ``Content-Length: 0``); a streamed body keeps
    the client's framing (chunked stays chunked: RFC 9112 7)."""
    if upgrade is not None:
        return b"Connection: Upgrade\r\nUpgrade: " + upgrade + b"\r\n"
    if replay is not None:
        if replay or has_body or method in ("POST", "PUT", "PATCH"):
            return b"Content-Length: %d\r\n" % len(replay)
        return b""
    if has_body:
        return (
            b"Transfer-Encoding: chunked\r\n"
            if chunked
            else b"Content-Length: %d\r\n" % (content_length)
        )
    return b""


def client_fields(
    raw: list[tuple[bytes, bytes]],
    skip: frozenset[bytes],
    edits: dict[bytes, tuple[bytes, bytes | None]] | None,
    trusted: bool,
) -> tuple[list[bytes], bytes | None, dict[bytes, bytes] | None]:
    """The client's fields that go upstream, as flat ``name, ": ", value, CRLF`` pieces, with
    the X-Forwarded-For and (from a trusted peer) X-Forwarded-Proto/-Host/-Port it brought.

    ``skip``: the names that stop here (SKIP_UPSTREAM and the ones the client's Connection
    named, RFC 9110 7.6.1). ``edits``: lowercase name -> (the plugin's spelling, the final value
    or None when removed); an edited field is sent once, with its final value, after the
    client's."""
    out: list[bytes] = []
    xff: bytes | None = None
    fwd: dict[bytes, bytes] | None = None
    for k, v in raw:
        lk = k.lower()
        if edits and lk in edits:
            continue
        if lk in skip:
            if lk == b"x-forwarded-for":
                xff = v
            elif trusted and lk in FORWARDED:
                if fwd is None:
                    fwd = {}
                fwd[lk] = v
            continue
        out += (k, b": ", v, b"\r\n")
    if edits:
        for lk, (spelled, value) in edits.items():
            if value is None:
                continue  # removed
            if lk == b"x-forwarded-for":
                xff = value
            elif lk in FORWARDED:
                if fwd is None:
                    fwd = {}
                fwd[lk] = value
            elif lk not in skip:
                out += (spelled, b": ", value, b"\r\n")
    return out, xff, fwd
