"""Per-type checks of the Admin API, in APISIX's order and with APISIX's messages.

Each check gets the body as it will be stored (id and timestamps included) and raises
``ConfigError``. References to other objects (``upstream_id``...) are looked up in etcd, as
APISIX's admin does; uniqueness rules (auth keys, global-rule plugins) use the instance's Store,
as APISIX uses its local cache.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from tollway.admin.pem import check_cert_key
from tollway.checks import ItemChecker, route_field_conflicts
from tollway.config.store import Store
from tollway.errors import ConfigError
from tollway.model import decode_item
from tollway.plugins.registry import Registry
from tollway.protos import check_content

# exists(dir, id) -> bool, against etcd.
Exists = Callable[[str, str], Awaitable[bool]]

_ID = re.compile(r"^[a-zA-Z0-9-_.]+$")
ID_ERROR = (
    'invalid configuration: property "id" validation failed: object matches none of the required'
)

# Which field of an auth plugin's consumer conf identifies the consumer
# (APISIX ``admin/utils.lua: plugin_key_map``).
AUTH_KEY_FIELDS = {
    "key-auth": "key",
    "basic-auth": "username",
    "jwt-auth": "key",
    "hmac-auth": "key_id",
}


def valid_id(value: Any) -> bool:
    """APISIX's ``id_schema``: a string of 1..64 ``[a-zA-Z0-9-_.]`` or an integer >= 1."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 1
    return isinstance(value, str) and 1 <= len(value) <= 64 and bool(_ID.match(value))


@dataclass
class CheckContext:
    registry: Registry
    store: Store
    exists: Exists
    stream_enabled: bool
    # SSL keys already stored are encrypted; this gives them back in clear (None: not ours).
    decrypt: Callable[[str], str | None] | None = None

    def plain_key(self, key: str) -> str:
        clear = self.decrypt(key) if self.decrypt is not None else None
        return clear if clear is not None else key

    @property
    def checker(self) -> ItemChecker:
        return ItemChecker(self.registry, strict=True)


def _schema(kind: str, value: dict[str, Any]) -> Any:
    try:
        return decode_item(kind, value)
    except ConfigError as e:
        msg = str(e)
        # decode_item prefixes inline upstream errors for the config agent's log; the Admin API
        # answers with check_upstream_conf's bare message (APISIX routes.lua/services.lua).
        prefix = "failed to check upstream: "
        raise ConfigError(msg[len(prefix) :] if msg.startswith(prefix) else msg) from None


async def _ref(ctx: CheckContext, value: dict[str, Any], field: str, dir_: str, what: str) -> None:
    ref = value.get(field)
    if ref is None:
        return
    if not await ctx.exists(dir_, str(ref)):
        raise ConfigError(f"failed to fetch {what} info by {what} id [{ref}], response code: 404")


async def check_route(ctx: CheckContext, item_id: str | None, value: dict[str, Any]) -> Any:
    route_field_conflicts(value)
    obj = _schema("routes", value)
    await _ref(ctx, value, "upstream_id", "upstreams", "upstream")
    await _ref(ctx, value, "service_id", "services", "service")
    await _ref(ctx, value, "plugin_config_id", "plugin_configs", "plugin config")
    ctx.checker.check_plugins(value.get("plugins"))
    ctx.checker("routes", item_id or "", obj, ctx.store)
    return obj


async def check_service(ctx: CheckContext, item_id: str | None, value: dict[str, Any]) -> Any:
    obj = _schema("services", value)
    await _ref(ctx, value, "upstream_id", "upstreams", "upstream")
    ctx.checker("services", item_id or "", obj, ctx.store)
    return obj


async def check_upstream(ctx: CheckContext, item_id: str | None, value: dict[str, Any]) -> Any:
    obj = _schema("upstreams", value)
    tls = value.get("tls")
    if isinstance(tls, dict) and tls.get("client_cert_id") is not None:
        await _ref(ctx, tls, "client_cert_id", "ssls", "ssl")
    return obj


async def check_plugin_holder(kind: str, ctx: CheckContext, value: dict[str, Any]) -> Any:
    obj = _schema(kind, value)
    ctx.checker.check_plugins(value.get("plugins"))
    return obj


async def check_global_rule(ctx: CheckContext, item_id: str | None, value: dict[str, Any]) -> Any:
    obj = await check_plugin_holder("global_rules", ctx, value)
    # APISIX: one plugin may be enabled in at most one global rule.
    for other_id, item in ctx.store["global_rules"].items.items():
        if other_id == item_id:
            continue
        for name in value.get("plugins") or {}:
            if name in ((item.value or {}).get("plugins") or {}):
                raise ConfigError(
                    f"plugin '{name}' already exists in global rule with id '{other_id}'"
                )
    return obj


async def check_plugin_config(ctx: CheckContext, item_id: str | None, value: dict[str, Any]) -> Any:
    return await check_plugin_holder("plugin_configs", ctx, value)


async def check_consumer_group(
    ctx: CheckContext, item_id: str | None, value: dict[str, Any]
) -> Any:
    return await check_plugin_holder("consumer_groups", ctx, value)


def _consumer_plugins(ctx: CheckContext, value: dict[str, Any]) -> None:
    try:
        ctx.checker.check_plugins(value.get("plugins"), consumer=True)
    except ConfigError as e:
        raise ConfigError(f"invalid plugins configuration: {e}") from None


def _auth_owners(store: Store, plugin: str, field: str) -> Iterable[tuple[str, str, Any]]:
    """(username, credential id or "", key value) of every consumer/credential using
    ``plugin`` in the Store."""
    for name, item in store["consumers"].items.items():
        conf = ((item.value or {}).get("plugins") or {}).get(plugin)
        if isinstance(conf, dict) and conf.get(field) is not None:
            yield name, "", conf[field]
    for cid, item in store["credentials"].items.items():
        conf = ((item.value or {}).get("plugins") or {}).get(plugin)
        if isinstance(conf, dict) and conf.get(field) is not None:
            username, _, cred = cid.partition("/credentials/")
            yield username, cred, conf[field]


def find_duplicate_key(
    store: Store, plugins: dict[str, Any] | None, *, username: str, credential: str = ""
) -> tuple[str, str] | None:
    """(plugin, owner username) when an auth key in ``plugins`` already belongs to another
    consumer or credential."""
    for plugin, conf in (plugins or {}).items():
        field = AUTH_KEY_FIELDS.get(plugin)
        if field is None or not isinstance(conf, dict) or conf.get(field) is None:
            continue
        for owner, cred, key in _auth_owners(store, plugin, field):
            if key != conf[field]:
                continue
            if credential:
                if (owner, cred) != (username, credential):
                    return plugin, owner
            elif owner != username:
                return plugin, owner
    return None


async def check_consumer(ctx: CheckContext, item_id: str | None, value: dict[str, Any]) -> Any:
    obj = _schema("consumers", value)
    if item_id is not None and item_id != value.get("username"):
        raise ConfigError("wrong username")
    _consumer_plugins(ctx, value)
    dup = find_duplicate_key(ctx.store, value.get("plugins"), username=value["username"])
    if dup is not None:
        raise ConfigError(f"duplicate key of plugin {dup[0]} found with consumer: {dup[1]}")
    await _ref(ctx, value, "group_id", "consumer_groups", "consumer group")
    return obj


async def check_credential(ctx: CheckContext, item_id: str | None, value: dict[str, Any]) -> Any:
    """``item_id`` is ``<username>/credentials/<id>``."""
    obj = _schema("credentials", value)
    _consumer_plugins(ctx, value)
    for name in value.get("plugins") or {}:
        plugin = ctx.registry.get(name)
        if plugin is None or plugin.type != "auth":
            raise ConfigError("only supports auth type plugins in consumer credential")
    username, _, cred = (item_id or "").partition("/credentials/")
    dup = find_duplicate_key(ctx.store, value.get("plugins"), username=username, credential=cred)
    if dup is not None:
        raise ConfigError(f"duplicate key found with consumer: {dup[1]}")
    return obj


async def check_ssl(ctx: CheckContext, item_id: str | None, value: dict[str, Any]) -> Any:
    obj = _schema("ssls", value)
    keys, certs = value.get("keys"), value.get("certs")
    if (keys is None) != (certs is None) or (
        isinstance(keys, list) and isinstance(certs, list) and len(keys) != len(certs)
    ):
        raise ConfigError("count of certificates and keys must match")
    check_cert_key(value["cert"], ctx.plain_key(value["key"]))
    for i, (cert, key) in enumerate(zip(certs or [], keys or [], strict=False), 1):
        if isinstance(cert, str) and isinstance(key, str):
            try:
                check_cert_key(cert, ctx.plain_key(key))
            except ConfigError as e:
                raise ConfigError(f"failed to handle cert-key pair[{i}]: {e}") from None
    return obj


async def check_proto(ctx: CheckContext, item_id: str | None, value: dict[str, Any]) -> Any:
    obj = _schema("protos", value)
    # protoc runs as a subprocess (tens of ms): off the Admin API's event loop
    await asyncio.to_thread(check_content, obj.content)
    return obj


async def check_stream_route(ctx: CheckContext, item_id: str | None, value: dict[str, Any]) -> Any:
    obj = _schema("stream_routes", value)
    await _ref(ctx, value, "upstream_id", "upstreams", "upstream")
    await _ref(ctx, value, "service_id", "services", "service")
    return obj


class VaultSecret(msgspec.Struct, forbid_unknown_fields=True):
    uri: str
    prefix: str
    token: str
    id: str | None = None
    namespace: str | None = None
    create_time: int | None = None
    update_time: int | None = None


class AwsSecret(msgspec.Struct, forbid_unknown_fields=True):
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    id: str | None = None
    create_time: int | None = None
    update_time: int | None = None


class GcpSecret(msgspec.Struct, forbid_unknown_fields=True):
    auth_config: dict[str, Any] | None = None
    auth_file: str | None = None
    ssl_verify: bool | None = None
    id: str | None = None
    create_time: int | None = None
    update_time: int | None = None


SECRET_MANAGERS: dict[str, type[msgspec.Struct]] = {
    "vault": VaultSecret,
    "aws": AwsSecret,
    "gcp": GcpSecret,
}

_VAULT_URI = re.compile(r"^[^\/]+:\/\/([\da-zA-Z.-]+|\[[\da-fA-F:]+\])(:\d+)?")


async def check_secret(ctx: CheckContext, item_id: str | None, value: dict[str, Any]) -> Any:
    """``item_id`` is ``<manager>/<id>``."""
    from tollway.model import format_validation_error

    manager = (item_id or "").partition("/")[0]
    typ = SECRET_MANAGERS.get(manager)
    if typ is None:
        raise ConfigError(f"invalid secret manager: {manager}")
    try:
        obj = msgspec.convert(value, typ)
    except msgspec.ValidationError as e:
        raise ConfigError(format_validation_error(e, value)) from None
    if isinstance(obj, VaultSecret) and not _VAULT_URI.match(obj.uri):
        raise ConfigError(
            'invalid configuration: property "uri" validation failed: failed to match pattern'
        )
    if isinstance(obj, GcpSecret) and obj.auth_config is None and obj.auth_file is None:
        raise ConfigError("invalid configuration: one of auth_config or auth_file is required")
    return obj


async def check_plugin_metadata(
    ctx: CheckContext, item_id: str | None, value: dict[str, Any]
) -> Any:
    """``item_id`` is the plugin name; the body is checked by its ``metadata_schema``."""
    from tollway.model import format_validation_error

    plugin = ctx.registry.get(item_id or "")
    if plugin is None:
        raise ConfigError("invalid plugin name")
    body = {k: v for k, v in value.items() if k not in ("id", "create_time", "update_time")}
    schema = plugin.metadata_schema
    if schema is None:
        if body:
            raise ConfigError(
                f"invalid configuration: additional properties forbidden, found {next(iter(body))}"
            )
        return body
    try:
        return msgspec.convert(body, schema)
    except msgspec.ValidationError as e:
        raise ConfigError(format_validation_error(e, body)) from None


Check = Callable[[CheckContext, str | None, dict[str, Any]], Awaitable[Any]]
