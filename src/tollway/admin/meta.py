"""Endpoints about the API rather than stored objects: ``/schema/...`` and ``/plugins/...``
(APISIX ``admin/schema.lua``, ``admin/plugins.lua``, ``admin/init.lua``)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from tollway.admin.resource import RESOURCES, AdminError, Reply, bad_request
from tollway.errors import EtcdError
from tollway.model import json_schema
from tollway.model.validate import struct_schema

if TYPE_CHECKING:
    from tollway.admin.resource import AdminResources
    from tollway.plugins.registry import Registry

log = logging.getLogger("tollway.admin")

# /schema/<name> -> resource type (APISIX's names are singular).
SCHEMA_NAMES = {
    "route": "routes",
    "service": "services",
    "upstream": "upstreams",
    "consumer": "consumers",
    "credential": "credentials",
    "ssl": "ssls",
    "proto": "protos",
    "global_rule": "global_rules",
    "stream_route": "stream_routes",
    "plugin_config": "plugin_configs",
    "consumer_group": "consumer_groups",
}

PLUGINS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {"type": "object"},
    "description": "plugin name -> plugin configuration",
}


def _struct_schema(typ: type[msgspec.Struct] | None) -> dict[str, Any]:
    if typ is None:
        return {"type": "object", "properties": {}}
    return struct_schema(typ)


def plugin_infos(registry: Registry) -> dict[str, Any]:
    """Every enabled plugin with its schemas, priority and version (APISIX
    ``plugin.get_all``: ``/plugins?all=true`` and the control API's ``/v1/schema``)."""
    out: dict[str, Any] = {}
    for name in registry.names_by_priority():
        p = registry.plugins[name]
        info: dict[str, Any] = {
            "schema": _struct_schema(p.schema),
            "priority": p.priority,
            "version": p.version,
        }
        if p.type:
            info["type"] = p.type
        if p.consumer_schema is not None:
            info["consumer_schema"] = _struct_schema(p.consumer_schema)
        if p.metadata_schema is not None:
            info["metadata_schema"] = _struct_schema(p.metadata_schema)
        out[name] = info
    return out


class MetaEndpoints:
    def __init__(self, resources: AdminResources) -> None:
        self.res = resources

    async def dispatch(
        self, method: str, segs: list[str], args: Mapping[str, str], body: Any
    ) -> Reply:
        if segs[0] == "plugins":
            return await self.plugins(method, segs[1:], args)
        rest = segs[1:]
        if rest[:1] == ["validate"]:
            if method != "POST":
                raise AdminError(404, {"error_msg": "not found"})
            return await self.validate(rest[1:], body)
        if method != "GET":
            raise AdminError(404, {"error_msg": "not found"})
        if rest[:1] == ["plugins"] and len(rest) >= 2:
            return self.plugin_schema(rest[1], args)
        name = rest[0] if rest else ""
        if name == "plugins":
            return Reply(200, PLUGINS_SCHEMA)
        if name == "plugin_metadata" or name not in SCHEMA_NAMES:
            raise bad_request(f"not found schema: {name}")
        return Reply(200, json_schema(SCHEMA_NAMES[name]))

    def plugin_schema(self, name: str, args: Mapping[str, str]) -> Reply:
        subsystem = args.get("subsystem", "http")
        plugin = self.res.registry.get(name)
        if plugin is None or subsystem != "http":
            raise AdminError(404, {"error_msg": f"plugin not found in subsystem {subsystem}"})
        kind = args.get("schema_type")
        if kind == "consumer":
            return Reply(200, _struct_schema(plugin.consumer_schema or plugin.schema))
        if kind == "metadata":
            return Reply(200, _struct_schema(plugin.metadata_schema))
        return Reply(200, _struct_schema(plugin.schema))

    async def plugins(self, method: str, rest: list[str], args: Mapping[str, str]) -> Reply:
        registry = self.res.registry
        if rest == ["reload"]:
            if method != "PUT":
                raise AdminError(
                    405,
                    {
                        "error_msg": "please use PUT method to reload the plugins, "
                        f"{method} method is not allowed."
                    },
                )
            await self.sync_plugins()
            return Reply(200, "done")
        if method != "GET":
            raise AdminError(404, {"error_msg": "not found"})
        if rest == ["list"]:
            subsystem = args.get("subsystem", "http")
            if subsystem not in ("http", "stream"):
                raise AdminError(400, "invalid subsystem passed")  # plain text, as APISIX
            return Reply(200, registry.names_by_priority() if subsystem == "http" else [])
        if rest:
            return self.plugin_schema(rest[0], args)
        subsystem = args.get("subsystem", "http")
        if subsystem not in ("http", "stream"):  # plugins.t TEST 13
            raise bad_request(f"unsupported subsystem: {subsystem}")
        if args.get("all") == "true":
            return Reply(200, plugin_infos(registry))
        raise AdminError(404, {"error_msg": "not found"})

    async def validate(self, rest: list[str], body: Any) -> Reply:
        """``POST /schema/validate/<type>`` (plural names, as in the URLs): 200 with an empty
        body, or 400 with the bare schema error. Only the schema, as APISIX's
        ``schema_validate``; ``?dry_run=true`` on a write runs every check."""
        name = rest[0] if rest else ""
        rtype = RESOURCES.get(name)
        if rtype is None:
            raise AdminError(404, {"error_msg": f"Unsupported resource type: {name}"})
        self.res.validate_schema(rtype, body)
        return Reply(200, None)

    async def sync_plugins(self) -> None:
        """Write ``<prefix>/plugins``: ``[{"name": ...}, ...]`` (APISIX's
        ``sync_local_conf_to_etcd``), so dashboards see the enabled plugins."""
        names = self.res.registry.names_by_priority()
        value = json.dumps([{"name": n} for n in names], separators=(",", ":")).encode()
        rev, _ = await self.res.etcd.put(f"{self.res.prefix}/plugins", value)
        self.res.written_revision = max(self.res.written_revision, rev)

    async def sync_plugins_forever(self) -> None:
        """At start: retry until etcd takes the write (etcd may be down when we start)."""
        delay = 0.5
        while True:
            try:
                await self.sync_plugins()
                return
            except EtcdError as e:
                log.warning("failed to write the plugin list to etcd (retrying): %s", e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
