"""The OpenAPI 3.1 description of the Admin API, generated from the resource table and the
model's JSON schemas (one source of truth: what the API validates is what it documents)."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from tollway import __version__
from tollway.admin.resource import RESOURCES, ResourceType
from tollway.model import KINDS, Credential

_REF = "#/components/schemas/{name}"

_ANY_OBJECT: dict[str, Any] = {"type": "object"}
_ERROR = {
    "type": "object",
    "properties": {"error_msg": {"type": "string"}},
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _responses(*codes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code in codes:
        if code in (200, 201):
            out[str(code)] = {"description": "ok", "content": _json(_ANY_OBJECT)}
        else:
            out[str(code)] = {"description": "error", "content": _json(_ERROR)}
    return out


def _params(*names: str) -> list[dict[str, Any]]:
    return [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
    ]


_QUERY_WRITE = [
    {"name": "ttl", "in": "query", "required": False, "schema": {"type": "integer"}},
    {"name": "dry_run", "in": "query", "required": False, "schema": {"enum": ["true", "false"]}},
]
_QUERY_LIST = [
    {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
    for n in ("page", "page_size", "name", "label", "uri", "filter")
]
_QUERY_DELETE = [
    {"name": "force", "in": "query", "required": False, "schema": {"enum": ["true", "false"]}}
]


def _ops(rt: ResourceType, body: dict[str, Any], params: list[str], item: bool) -> dict[str, Any]:
    ops: dict[str, Any] = {}
    p = _params(*params)
    tag = [rt.name]
    if not item:
        ops["get"] = {
            "tags": tag,
            "summary": f"list {rt.kind}s",
            "parameters": p + _QUERY_LIST,
            "responses": _responses(200, 400),
        }
        if "POST" not in rt.unsupported:
            ops["post"] = {
                "tags": tag,
                "summary": f"create a {rt.kind} with a generated id",
                "parameters": p + _QUERY_WRITE,
                "requestBody": {"required": True, "content": _json(body)},
                "responses": _responses(201, 400),
            }
        return ops
    ops["get"] = {
        "tags": tag,
        "summary": f"get a {rt.kind}",
        "parameters": p,
        "responses": _responses(200, 404),
    }
    ops["put"] = {
        "tags": tag,
        "summary": f"create or replace a {rt.kind}",
        "parameters": p + _QUERY_WRITE,
        "requestBody": {"required": True, "content": _json(body)},
        "responses": _responses(200, 201, 400),
    }
    if "PATCH" not in rt.unsupported:
        ops["patch"] = {
            "tags": tag,
            "summary": f"merge into a {rt.kind} (null deletes a field)",
            "parameters": p + _QUERY_WRITE,
            "requestBody": {"required": True, "content": _json(_ANY_OBJECT)},
            "responses": _responses(200, 400, 404),
        }
    ops["delete"] = {
        "tags": tag,
        "summary": f"delete a {rt.kind}",
        "parameters": p + _QUERY_DELETE,
        "responses": _responses(200, 400, 404),
    }
    return ops


def _paths(names: dict[str, str], stream: bool) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for rt in RESOURCES.values():
        if rt.name == "stream_routes" and not stream:
            continue
        body = {"$ref": _REF.format(name=names[rt.name])} if rt.name in names else _ANY_OBJECT
        if rt.name == "credentials":
            base = "/apisix/admin/consumers/{username}/credentials"
            paths[base] = _ops(rt, body, ["username"], item=False)
            paths[base + "/{id}"] = _ops(rt, body, ["username", "id"], item=True)
            continue
        if rt.name == "secrets":
            base = "/apisix/admin/secrets/{manager}"
            paths[base] = _ops(rt, body, ["manager"], item=False)
            paths[base + "/{id}"] = _ops(rt, body, ["manager", "id"], item=True)
            continue
        base = f"/apisix/admin/{rt.name}"
        paths[base] = _ops(rt, body, [], item=False)
        paths[base + "/{id}"] = _ops(rt, body, ["id"], item=True)
    paths["/apisix/admin/plugins/list"] = {
        "get": {"summary": "enabled plugins by priority", "responses": _responses(200)}
    }
    paths["/apisix/admin/schema/{name}"] = {
        "get": {
            "summary": "JSON schema of an object type",
            "parameters": _params("name"),
            "responses": _responses(200, 400),
        }
    }
    paths["/apisix/admin/schema/plugins/{name}"] = {
        "get": {
            "summary": "JSON schema of a plugin",
            "parameters": _params("name"),
            "responses": _responses(200, 404),
        }
    }
    return paths


@cache
def openapi_document(*, stream: bool = False) -> dict[str, Any]:
    types: dict[str, type[Any]] = {
        name: KINDS[name] for name in RESOURCES if name in KINDS and name != "plugin_metadata"
    }
    types["credentials"] = Credential
    types.pop("secrets", None)  # per-manager schemas; documented as free-form objects
    order = list(types)
    _, components = msgspec.json.schema_components([types[n] for n in order], ref_template=_REF)
    names = {n: types[n].__name__ for n in order}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tollway Admin API (APISIX 3.x compatible)",
            "version": __version__,
        },
        "servers": [{"url": "/"}],
        "security": [{"apiKey": []}],
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-KEY"}},
        },
        "paths": _paths(names, stream),
    }
