"""The Admin API listener: one per instance, in the supervisor (APISIX ``admin/init.lua``).

Order of a request: allow_admin (403) -> CORS preflight (200) -> token (401) -> route ->
body (size, JSON) -> the resource verb. Every response carries ``Server: APISIX/<version>``,
``Content-Type: application/json``, ``X-API-VERSION: v3`` and, when enabled, APISIX's CORS
headers. etcd failures become 503 ``{"error_msg": ...}``; nothing else answers 5xx on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tollway import APISIX_VERSION, __version__
from tollway.admin.body import decode_json
from tollway.admin.keys import AdminKey, AdminKeyError, check_token, resolve_keys
from tollway.admin.meta import MetaEndpoints
from tollway.admin.resource import (
    AdminError,
    AdminResources,
    Reply,
    bad_request,
    parse_target,
)
from tollway.admin.standalone import StandaloneConfigs, validate_document
from tollway.checks import ItemChecker
from tollway.config.api_source import ApiSource
from tollway.config.etcd import EtcdClient
from tollway.crypto import KeyCipher
from tollway.errors import ConfigError, EtcdError, SettingsError
from tollway.logs import http_server_log

if TYPE_CHECKING:
    from tollway.instance import InstanceView

log = logging.getLogger("tollway.admin")

MAX_BODY = 1024 * 1024 * 3 // 2  # 1.5 MiB, APISIX's MAX_REQ_BODY
_HARD_CAP = 64 * 1024 * 1024  # stop counting an oversized chunked body here
PREFIX = "/apisix/admin"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def respond(
    status: int,
    body: Any = None,
    *,
    dry_run: bool = False,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """dict/list bodies as JSON, strings as they are, each with a trailing newline (APISIX's
    ``core.response.exit`` uses ``ngx.say``)."""
    if body is None:
        text = ""
    elif isinstance(body, str):
        text = body + "\n"
    else:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":")) + "\n"
    try:
        data = text.encode()
    except UnicodeEncodeError:
        # A lone surrogate from the client echoed back (an id in the URL, a value read from
        # etcd): JSON's \u escapes say it; a plain-text body keeps the escape as text.
        if isinstance(body, str):
            data = text.encode(errors="backslashreplace")
        else:
            data = (json.dumps(body, separators=(",", ":")) + "\n").encode()
    resp = web.Response(status=status, body=data, headers={"Content-Type": "application/json"})
    if dry_run:
        resp.headers["X-Tollway-Dry-Run"] = "true"
    if headers:
        resp.headers.update(headers)
    return resp


class AdminApp:
    def __init__(
        self,
        resources: AdminResources,
        *,
        keys: list[AdminKey],
        key_required: bool,
        allow: list[str],
        cors: bool,
        openapi: Callable[[], dict[str, Any]] | None = None,
        server_tokens: bool = True,
        standalone: StandaloneConfigs | None = None,
    ) -> None:
        self.res = resources
        # API-driven standalone: the config is /configs; the item endpoints need etcd.
        self.standalone = standalone
        self.meta = MetaEndpoints(resources)
        self.keys = keys
        self.key_required = key_required
        self.allow = [ipaddress.ip_network(c, strict=False) for c in allow]
        self.cors = cors
        self.openapi = openapi
        # APISIX's own header, as its clients parse it; Tollway's version in a header of its own.
        self.version_headers = (
            {"Server": f"APISIX/{APISIX_VERSION}", "X-Tollway-Version": __version__}
            if server_tokens
            else {"Server": "APISIX"}
        )

    # -- middleware -----------------------------------------------------------------------

    def allowed(self, remote: str | None) -> bool:
        if remote is None:
            return False
        try:
            addr = ipaddress.ip_address(remote.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr.version == net.version and addr in net for net in self.allow)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self.allowed(request.remote):
            resp: web.StreamResponse = respond(403, {"error_msg": "403 Forbidden"})
        else:
            try:
                resp = await handler(request)
            except web.HTTPException as e:
                resp = respond(e.status, {"error_msg": e.reason})
        resp.headers.update(self.version_headers)
        resp.headers["X-API-VERSION"] = "v3"
        if self.cors:
            resp.headers["Access-Control-Allow-Origin"] = "*"
            resp.headers["Access-Control-Allow-Credentials"] = "true"
            resp.headers["Access-Control-Expose-Headers"] = "*"
            resp.headers["Access-Control-Max-Age"] = "3600"
            resp.headers["Access-Control-Allow-Methods"] = request.headers.get(
                "Access-Control-Request-Method", "*"
            )
            resp.headers["Access-Control-Allow-Headers"] = request.headers.get(
                "Access-Control-Request-Headers", "*"
            )
        return resp

    # -- request --------------------------------------------------------------------------

    def token(self, request: web.Request) -> tuple[str | None, bool]:
        """The key sent (APISIX's order: ``?api_key=``, the ``X-API-KEY`` header, the
        ``X-API-KEY`` cookie) and whether it came from the cookie alone."""
        sent = (
            request.query.get("api_key")
            or request.headers.get("X-API-KEY")
            # nginx's $http_x_api_key also reads "x_api_key" (APISIX: underscores_in_headers)
            or request.headers.get("X_API_KEY")
        )
        if sent:
            return sent, False
        cookie = request.cookies.get("X-API-KEY")
        return cookie, bool(cookie)

    def forged_write(self, request: web.Request, via_cookie: bool) -> str | None:
        """None, or why a write is refused as possibly cross-site (a deliberate difference from
        APISIX). Any web page can make a browser send a "simple" cross-site request (a form
        POST, ``text/plain`` body) and the browser attaches the ``X-API-KEY`` cookie by itself;
        with ``admin_key_required: false`` no key is needed at all. A write is therefore
        accepted only when the browser cannot have been tricked into it: the key in the header
        or query (a page cannot know it), an ``Origin`` naming this Admin API, or, with a key
        in the cookie, ``X-Requested-With``: a browser adds that header cross-site only after a
        CORS preflight, and the Admin API's (``Access-Control-Allow-Origin: *``) never admits a
        request that carries cookies (Fetch standard, CORS check)."""
        if request.method in _SAFE_METHODS:
            return None
        origin = request.headers.get("Origin")
        if origin is not None and _same_origin(origin, request):
            return None
        if self.key_required:
            if not via_cookie or "X-Requested-With" in request.headers:
                return None
            return (
                "the X-API-KEY cookie alone does not authorize a write: send the key in the "
                "X-API-KEY header, or an Origin header naming this Admin API, or an "
                "X-Requested-With header (cross-site request forgery protection)"
            )
        if origin is None:
            return None  # not a browser's cross-site request: browsers send Origin on those
        return (
            f"a write from the foreign origin {origin!r} is refused while admin_key_required "
            "is false (cross-site request forgery protection)"
        )

    async def read_body(self, request: web.Request) -> bytes | None:
        length = request.content_length
        if length is not None and length > MAX_BODY:
            raise bad_request(
                f"invalid request body: request size {length} is greater than the maximum "
                f"size {MAX_BODY} allowed"
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await _read_chunk(request)
            if not chunk:
                break
            size += len(chunk)
            if size <= MAX_BODY:
                chunks.append(chunk)
            elif size > _HARD_CAP:
                break
        if size > MAX_BODY:
            raise bad_request(
                f"invalid request body: request size {size} is greater than the maximum "
                f"size {MAX_BODY} allowed"
            )
        return b"".join(chunks) if size else None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        method = request.method
        if method == "OPTIONS":
            return respond(200)
        path = request.path
        segs = [s for s in path[len(PREFIX) :].split("/") if s]
        if not segs and method == "HEAD":
            return respond(200)
        token, via_cookie = self.token(request)
        denied = check_token(self.keys, token, method, required=self.key_required)
        if denied is not None:
            return respond(401, {"error_msg": "failed to check token", "description": denied})
        forged = self.forged_write(request, via_cookie)
        if forged is not None:
            return respond(403, {"error_msg": forged})
        try:
            reply = await self.dispatch(request, segs)
        except AdminError as e:
            return respond(e.status, e.body)
        except EtcdError as e:
            log.warning("admin: etcd failed: %s", e)
            return respond(503, {"error_msg": str(e)})
        except ConfigError as e:
            return respond(400, {"error_msg": str(e)})
        except Exception:
            # A bug, not an answer: say so in the log, keep serving.
            log.exception("admin: unexpected error on %s %s", method, path)
            return respond(500, {"error_msg": "internal error"})
        return respond(reply.status, reply.body, dry_run=reply.dry_run, headers=reply.headers)

    async def dispatch(self, request: web.Request, segs: list[str]) -> Reply:
        method = request.method
        args = dict(request.query)
        if not segs:
            raise AdminError(404, {"error_msg": "Unsupported resource type: "})
        head = segs[0]
        if head == "openapi.json" and self.openapi is not None and method == "GET":
            return Reply(200, self.openapi())
        if head == "configs":
            if segs[1:] == ["validate"] and method == "POST":
                checker = ItemChecker(self.res.registry, strict=True)
                return validate_document(checker, request.headers, await self.read_body(request))
            if self.standalone is not None:
                return await self.configs(request, segs[1:])
        if head in ("schema", "plugins"):
            body = None
            if method in ("POST", "PUT", "PATCH"):
                body = self.decode(await self.read_body(request))
            return await self.meta.dispatch(method, segs, args, body)
        target = parse_target(segs)
        if target is None:
            raise AdminError(404, {"error_msg": f"Unsupported resource type: {head}"})
        if self.standalone is not None:
            raise bad_request(
                "the config is managed with /apisix/admin/configs in standalone mode "
                "(deployment.role traditional with config_provider yaml)"
            )
        if method == "GET":
            return await self.res.get(target, args)
        if method == "DELETE":
            return await self.res.delete(target, args)
        if method not in ("PUT", "POST", "PATCH"):
            # APISIX's admin router knows these five verbs only (HEAD on /apisix/admin).
            raise AdminError(404, {"error_msg": "not found"})
        body = self.decode(await self.read_body(request))
        ttl = args.get("ttl")
        if ttl is not None and not _is_number(ttl):
            raise bad_request("invalid argument ttl: should be a number")
        if ttl is not None and float(ttl) > MAX_LEASE_TTL:
            # etcd refuses it ("too large lease TTL"): the client's mistake, not a 503.
            raise bad_request(f"invalid argument ttl: should be at most {MAX_LEASE_TTL}")
        if method == "PATCH":
            return await self.res.patch(target, body, args)
        if method == "PUT":
            return await self.res.put(target, body, args)
        return await self.res.post(target, body, args)

    async def configs(self, request: web.Request, rest: list[str]) -> Reply:
        standalone = self.standalone
        assert standalone is not None
        method = request.method
        if rest:
            raise AdminError(404, {"error_msg": "not found"})
        if method == "PUT":
            return standalone.put(request.headers, await self.read_body(request))
        if method in ("GET", "HEAD"):
            reply, headers = standalone.get(request.headers.get("Accept", "application/json"))
            return Reply(200, None if method == "HEAD" else reply.body, headers=headers)
        raise AdminError(404, {"error_msg": "not found"})

    @staticmethod
    def decode(raw: bytes | None) -> Any:
        if raw is None:
            return None
        try:
            return decode_json(raw)
        except ValueError as e:  # UnicodeDecodeError and BodyError are ValueErrors
            raise AdminError(
                400,
                {
                    "error_msg": f"invalid request body: {e}",
                    "req_body": raw.decode("utf-8", errors="replace"),
                },
            ) from None

    def build(self) -> web.Application:
        # client_max_size only guards request.read(); bodies are read (and capped) by
        # read_body so the 400 carries APISIX's message instead of aiohttp's 413.
        app = web.Application(middlewares=[self.middleware], client_max_size=MAX_BODY)
        app.router.add_route("*", PREFIX, self.handle)
        app.router.add_route("*", PREFIX + "/{tail:.*}", self.handle)
        return app


MAX_LEASE_TTL = 9_000_000_000  # etcd's MaxLeaseTTL, in seconds
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # RFC 9110 9.2.1: no writes


async def _read_chunk(request: web.Request) -> bytes:
    """The body's next bytes. A body that cannot be read is the client's doing, answered 400
    (nginx: "client prematurely closed connection", a gzip body that does not inflate...)."""
    try:
        return await request.content.readany()
    except web.RequestPayloadError as e:  # bad chunked framing, Content-Encoding garbage
        # aiohttp's parser error (the cause) has the words; its str() adds "400, message:"
        reason = getattr(e.__cause__, "message", None) or str(e)
        raise bad_request(f"invalid request body: {' '.join(str(reason).split())}") from None
    except ConnectionResetError:  # the client closed before the end: no one reads the answer
        raise bad_request("invalid request body: the client closed the connection") from None


def _same_origin(origin: str, request: web.Request) -> bool:
    """``Origin`` (RFC 6454: scheme://host[:port], default port omitted, as in ``Host``) names
    the Admin API the request reached."""
    scheme = "https" if request.secure else "http"
    return origin.lower() == f"{scheme}://{request.host}".lower()


def _is_number(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value)


# -- start-up -------------------------------------------------------------------------------


def make_cipher(instance: InstanceView) -> KeyCipher | None:
    # enable_encrypt_fields is about plugin fields; SSL keys follow the keyring alone (APISIX).
    keyring = instance.settings.conf.apisix.data_encryption.keyring
    if not keyring:
        return None
    try:
        return KeyCipher(keyring)
    except ConfigError as e:
        raise SettingsError(
            str(instance.settings.path), "apisix.data_encryption.keyring", str(e)
        ) from None


def make_ssl_context(instance: InstanceView) -> ssl.SSLContext | None:
    """``https_admin: true`` with ``admin_api_mtls.admin_ssl_cert``/``admin_ssl_cert_key``;
    ``admin_ssl_ca_cert`` also requires client certificates signed by that CA (mTLS)."""
    conf = instance.settings.conf.deployment.admin
    if not conf.https_admin:
        return None
    mtls = conf.admin_api_mtls or {}
    cert, key = mtls.get("admin_ssl_cert"), mtls.get("admin_ssl_cert_key")
    if not cert or not key:
        raise SettingsError(
            str(instance.settings.path),
            "deployment.admin.admin_api_mtls",
            "https_admin is true but admin_ssl_cert / admin_ssl_cert_key are not set",
        )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(instance.settings.resolve(cert), instance.settings.resolve(key))
        ca = mtls.get("admin_ssl_ca_cert")
        if ca:
            ctx.load_verify_locations(instance.settings.resolve(ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as e:
        path = str(instance.settings.path)
        raise SettingsError(path, "deployment.admin.admin_api_mtls", str(e)) from None
    return ctx


def build_admin(instance: InstanceView) -> tuple[AdminApp, AdminResources]:
    """Raises SettingsError (the process must not start) for an unsafe or broken setup."""
    from tollway.admin.openapi import openapi_document

    settings = instance.settings
    conf = settings.conf.deployment.admin
    try:
        keys = resolve_keys(
            [AdminKey(k.name, k.key, k.role) for k in conf.admin_key],
            listen_ip=conf.admin_listen.ip,
            required=conf.admin_key_required,
            run_dir=settings.run_dir,
        )
    except AdminKeyError as e:
        raise SettingsError(str(settings.path), e.key, e.message) from None
    standalone = None
    etcd = instance.etcd_client
    if isinstance(instance.source, ApiSource):
        standalone = StandaloneConfigs(instance.source, ItemChecker(instance.registry, strict=True))
    if etcd is None:
        # API-driven standalone: no etcd; the item endpoints answer 400 and never use it.
        etcd = EtcdClient(settings.etcd.host)
    resources = AdminResources(
        etcd,
        settings.etcd.prefix,
        instance.store,
        instance.registry,
        stream_enabled="stream" in settings.conf.apisix.proxy_mode,
        cipher=make_cipher(instance),
    )
    app = AdminApp(
        resources,
        keys=keys,
        key_required=conf.admin_key_required,
        allow=conf.allow_admin,
        cors=conf.enable_admin_cors,
        openapi=lambda: openapi_document(stream="stream" in settings.conf.apisix.proxy_mode),
        server_tokens=settings.conf.apisix.enable_server_tokens,
        standalone=standalone,
    )
    return app, resources


async def start_admin_server(instance: InstanceView) -> web.AppRunner | None:
    settings = instance.settings
    if not settings.serves_admin:
        return None
    conf = settings.conf.deployment.admin
    try:
        for cidr in conf.allow_admin:
            ipaddress.ip_network(cidr, strict=False)
    except ValueError as e:
        raise SettingsError(str(settings.path), "deployment.admin.allow_admin", str(e)) from None
    ssl_ctx = make_ssl_context(instance)
    admin, _ = build_admin(instance)
    app = admin.build()
    if conf.enable_admin_ui:
        from tollway.admin.ui import add_ui

        add_ui(app, admin.keys, admin.key_required, instance)
    # APISIX writes <prefix>/plugins when the admin node starts; do it in the background so
    # a down etcd does not hold the start (tracked and cancelled on cleanup).
    task = asyncio.get_running_loop().create_task(
        admin.meta.sync_plugins_forever() if admin.standalone is None else asyncio.sleep(0)
    )

    async def _cancel(_: web.Application) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.on_cleanup.append(_cancel)
    runner = web.AppRunner(app, access_log=None, logger=http_server_log())
    await runner.setup()
    site = web.TCPSite(
        runner,
        conf.admin_listen.ip,
        conf.admin_listen.port,
        ssl_context=ssl_ctx,
        reuse_address=True,
    )
    try:
        await site.start()
    except OSError:
        await runner.cleanup()  # cancels the plugin-list task before etcd's client closes
        raise
    log.info(
        "Admin API listening on %s://%s:%d%s",
        "https" if ssl_ctx else "http",
        conf.admin_listen.ip,
        conf.admin_listen.port,
        PREFIX,
    )
    return runner
