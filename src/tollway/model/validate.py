"""Decoding config items and turning msgspec errors into APISIX-style messages."""

from __future__ import annotations

from typing import Any

import msgspec

from tollway.errors import ConfigError
from tollway.model.messages import jsonschema_message
from tollway.model.objects import KINDS, Credential, LeanRoute, Route, Service, Upstream


def format_validation_error(
    err: msgspec.ValidationError, value: Any = None, typ: Any = None
) -> str:
    """APISIX's message for an invalid object: ``invalid configuration: <jsonschema words>``."""
    return f"invalid configuration: {jsonschema_message(err, value, typ)}"


# isinstance against tuples: a ``X | Y`` union would be built again at every call (100k routes
# at start-up are 100k calls on both the supervisor's and each worker's side).
_BYTES = (bytes, bytearray, memoryview)
_WITH_UPSTREAM = (Route, Service)


def decode_item(
    kind: str, value: dict[str, Any] | bytes | memoryview, *, lean: bool = False
) -> Any:
    """Validate one item of ``kind``; raises ConfigError with APISIX's message. ``lean``: a
    route that was validated before, decoded to compile it (``LeanRoute``)."""
    typ: type[Any] = Credential if kind == "credentials" else KINDS[kind]
    if lean and kind == "routes":
        typ = LeanRoute
    try:
        if isinstance(value, _BYTES):
            obj = msgspec.json.decode(value, type=typ)
        else:
            obj = msgspec.convert(value, typ)
    except msgspec.ValidationError as e:
        shown: Any = value
        if isinstance(value, _BYTES):
            try:
                shown = msgspec.json.decode(value)
            except (msgspec.DecodeError, UnicodeDecodeError):
                shown = None
        raise ConfigError(format_validation_error(e, shown, typ)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"invalid JSON: {e}") from None
    try:
        if isinstance(obj, Upstream):
            obj.check()
        elif isinstance(obj, _WITH_UPSTREAM) and isinstance(obj.upstream, Upstream):
            obj.upstream.check()
    except ValueError as e:
        raise ConfigError(
            f"failed to check upstream: {e}" if not isinstance(obj, Upstream) else str(e)
        ) from None
    return obj


_KIND_NAMES = {k: k for k in KINDS}


def kind_of_key(key: str, prefix: str) -> tuple[str, str] | None:
    """'/apisix/routes/1' -> ('routes', '1'). None for keys that are not items we know."""
    if not key.startswith(prefix + "/"):
        return None
    rest = key[len(prefix) + 1 :]
    kind, sep, item = rest.partition("/")
    kind = _KIND_NAMES.get(kind, "")  # the one string per kind, not one per item
    if not sep or not item or not kind:
        return None
    if "/" in item:
        # consumers/<name>/credentials/<id> is a credential; secrets/<manager>/<id> is a secret;
        # other sub-keys (services/<id>/graphql_cost_decorations/...) are not items we serve.
        parts = item.split("/")
        if kind == "consumers" and len(parts) == 3 and parts[1] == "credentials" and parts[2]:
            return "credentials", item
        if kind == "secrets" and len(parts) == 2 and parts[1]:
            return kind, item
        return None
    return kind, item


_SCHEMA_CACHE: dict[str, dict[str, Any]] = {}


def json_schema(kind: str) -> dict[str, Any]:
    if kind not in _SCHEMA_CACHE:
        typ: type[Any] = Credential if kind == "credentials" else KINDS[kind]
        _SCHEMA_CACHE[kind] = struct_schema(typ)
    return _SCHEMA_CACHE[kind]


def struct_schema(typ: type[Any]) -> dict[str, Any]:
    """The JSON Schema of a Struct in the shape APISIX serves its Lua schemas: the object at the
    top (``type``, ``properties``, ``required``), optional fields as their type rather than
    ``anyOf [T, null]`` with ``default: null``. Definitions that nested fields refer to stay
    under ``$defs``."""
    raw = msgspec.json.schema(typ)
    defs: dict[str, Any] = raw.get("$defs", {})
    ref = raw.get("$ref", "")
    root = dict(defs.get(ref.rpartition("/")[2], raw)) if ref.startswith("#/$defs/") else raw
    out: dict[str, Any] = _plain_schema(root)
    rest = {k: _plain_schema(v) for k, v in defs.items() if _is_referenced(k, root, defs)}
    if rest:
        out["$defs"] = rest
    return out


def _plain_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [_plain_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _plain_schema(v) for k, v in node.items() if k != "title"}
    if out.get("default", 0) is None:
        del out["default"]
    if out.get("required") == []:
        del out["required"]
    variants = out.get("anyOf")
    if isinstance(variants, list):
        kept = [v for v in variants if v != {"type": "null"}]
        if len(kept) == 1 and isinstance(kept[0], dict):
            del out["anyOf"]
            out = {**kept[0], **out}
        elif len(kept) != len(variants):
            out["anyOf"] = kept
    return out


def _is_referenced(name: str, root: Any, defs: dict[str, Any]) -> bool:
    """Whether ``#/$defs/name`` is used by the root or by another definition."""
    target = f'"#/$defs/{name}"'
    if target in msgspec.json.encode(root).decode():
        return True
    others = {k: v for k, v in defs.items() if k != name}
    return target in msgspec.json.encode(others).decode()
