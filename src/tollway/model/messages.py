"""msgspec validation errors in the words of APISIX's validator (api7/jsonschema).

APISIX answers a bad object with the jsonschema library's message, built from the outside in:
``property "upstream" validation failed: property "timeout" validation failed: property
"connect" validation failed: expected -1 to be greater than 0``. Clients and tests match on
those words, so a msgspec error (``Expected `float` > 0.0 - at `$.upstream.timeout.connect```)
is rewritten into the same chain. Runs only when an item is rejected, never per request.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_SEG = re.compile(r"\.(?P<field>[^.\[]+)|\[(?P<index>\d+|\.\.\.)\]")

# Fields APISIX declares as ``id_schema`` (anyOf string / integer): any failure there reads
# "object matches none of the required". ``nodes`` is anyOf too (hash form or array form).
_ANY_OF = frozenset(
    {
        "id",
        "upstream_id",
        "service_id",
        "plugin_config_id",
        "group_id",
        "script_id",
        "client_cert_id",
        "superior_id",
        "nodes",
    }
)

# msgspec's type names -> what the schema says it expects / what Lua sees in the value.
_EXPECTED = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "array": "array",
    "object": "object",
    "null": "null",
}
_GOT = {
    "str": "string",
    "int": "number",
    "float": "number",
    "bool": "boolean",
    "array": "table",
    "object": "table",
    "null": "userdata",
}

_TYPE = re.compile(r"^Expected `(?P<exp>[^`]+)`, got `(?P<got>[^`]+)`$")
_ENUM = re.compile(r"^Invalid enum value ")
_STR_LEN = re.compile(r"^Expected `str` of length (?P<op>>=|<=) (?P<n>\d+)$")
_PATTERN = re.compile(r"^Expected `str` matching regex (?P<p>'.*')$")
_BOUND = re.compile(r"^Expected `(?:int|float)` (?P<op>>=|<=|>|<) (?P<n>\S+)$")
_SIZE = re.compile(r"^Expected `(?P<t>array|object)` of length (?P<op>>=|<=) (?P<n>\d+)$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")

_MISSING_VALUE = object()


def _number(text: str) -> str:
    """Lua prints 0.0 as 0: bounds read as the schema wrote them."""
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() else text


# JSON type names as msgspec's messages spell them (bool before int: a bool is an int)
_JSON_TYPES = (
    (bool, "bool"),
    (int, "int"),
    (float, "float"),
    (str, "str"),
    (list, "array"),
    (dict, "object"),
)


def _json_type(value: Any) -> str:
    return next((name for t, name in _JSON_TYPES if isinstance(value, t)), "null")


def _lua(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_SCHEMAS: dict[Any, dict[str, Any]] = {}


def _field_schema(typ: Any, path: str) -> dict[str, Any] | None:
    """The JSON Schema of the field at ``path`` in ``typ`` (msgspec keeps ``exclusiveMinimum``
    there, where its error message has turned ``gt=0`` on an int into ``>= 1``)."""
    schema = _SCHEMAS.get(typ)
    if schema is None:
        try:
            schema = _SCHEMAS[typ] = msgspec.json.schema(typ)
        except (TypeError, ValueError):
            return None
    defs: dict[str, Any] = schema.get("$defs", {})

    def variants(node: Any) -> list[dict[str, Any]]:
        out = []
        for n in [node, *(node.get("anyOf", []) if isinstance(node, dict) else [])]:
            while isinstance(n, dict) and "$ref" in n:
                n = defs.get(n["$ref"].rpartition("/")[2], {})
            if isinstance(n, dict):
                out.append(n)
        return out

    node: Any = schema
    for seg in _SEG.finditer(path):
        field, index = seg["field"], seg["index"]
        found = None
        for v in variants(node):
            if field is not None and field in v.get("properties", {}):
                found = v["properties"][field]
            elif index == "..." and isinstance(v.get("additionalProperties"), dict):
                found = v["additionalProperties"]
            elif index is not None and index != "..." and isinstance(v.get("items"), dict):
                found = v["items"]
            if found is not None:
                break
        if found is None:
            return None
        node = found
    for v in variants(node):
        if any(k in v for k in ("exclusiveMinimum", "exclusiveMaximum", "minimum", "maximum")):
            return v
    return None


def _detail(text: str, value: Any, field: dict[str, Any] | None = None) -> str:
    """One msgspec detail (no path) -> the jsonschema words, given the failing value."""
    if m := _TYPE.match(text):
        expected = m["exp"].split(" | ")[0]
        got = _GOT.get(m["got"], m["got"])
        return f"wrong type: expected {_EXPECTED.get(expected, expected)}, got {got}"
    if _ENUM.match(text):
        return "matches none of the enum values"
    if m := _STR_LEN.match(text):
        got = f", got {len(value)}" if isinstance(value, str) else ""
        if m["op"] == ">=":
            return f"string too short, expected at least {m['n']}{got}"
        return f"string too long, expected at most {m['n']}{got}"
    if m := _PATTERN.match(text):
        pattern = m["p"][1:-1]
        return f'failed to match pattern "{pattern}" with "{value}"'
    if m := _BOUND.match(text):
        shown = _lua(value) if value is not _MISSING_VALUE else "value"
        if field is not None and m["op"] in (">=", "<="):
            # an int's gt/lt reads as >=/<= in msgspec's message; the schema knows which
            key = "exclusiveMinimum" if m["op"] == ">=" else "exclusiveMaximum"
            if key in field:
                word = "greater than" if key == "exclusiveMinimum" else "smaller than"
                return f"expected {shown} to be {word} {_number(str(field[key]))}"
        word = {  # the words of the validator APISIX 3.x ships (its tests match them)
            ">=": "at least",
            ">": "greater than",
            "<=": "at most",
            "<": "smaller than",
        }[m["op"]]
        return f"expected {shown} to be {word} {_number(m['n'])}"
    if m := _SIZE.match(text):
        unit = "items" if m["t"] == "array" else "properties"
        bound = "at least" if m["op"] == ">=" else "at most"
        return f"expect {m['t']} to have {bound} {m['n']} {unit}"
    if m := _UNKNOWN.match(text):
        return f"additional properties forbidden, found {m['field']}"
    if m := _MISSING.match(text):
        return f'property "{m["field"]}" is required'
    return text


def _is_msgspec(detail: str) -> bool:
    return any(
        p.match(detail)
        for p in (_TYPE, _ENUM, _STR_LEN, _PATTERN, _BOUND, _SIZE, _UNKNOWN, _MISSING)
    )


def _dict_key(container: dict[str, Any], text: str) -> str | None:
    """The key of a dict value that failed (msgspec writes ``[...]``): the first value whose
    JSON type is the one the message says it got, else the only key."""
    m = _TYPE.match(text)
    if m is not None:
        for key, item in container.items():
            if _json_type(item) == m["got"]:
                return key
    return next(iter(container)) if len(container) == 1 else None


def jsonschema_message(err: msgspec.ValidationError, value: Any, typ: Any = None) -> str:
    """The chain APISIX would answer for ``value`` failing as ``err`` says (``typ``: the type
    ``value`` was decoded as, to read bounds the message lost)."""
    text = str(err)
    m = _PATH.search(text)
    detail = text[: m.start()] if m else text
    path = m["path"] if m else ""
    prefix: list[str] = []
    current: Any = value
    for seg in _SEG.finditer(path):
        field, index = seg["field"], seg["index"]
        if field is not None:
            prefix.append(f'property "{field}" validation failed: ')
            if field in _ANY_OF:
                if not _is_msgspec(detail):
                    return detail  # a check of APISIX's own after the schema: its bare words
                return "".join(prefix) + "object matches none of the required"
            current = current.get(field, _MISSING_VALUE) if isinstance(current, dict) else None
        elif index == "...":
            key = _dict_key(current, detail) if isinstance(current, dict) else None
            if key is None:
                current = _MISSING_VALUE
                continue
            prefix.append(f'failed to validate {key} (matching ".*"): ')
            current = current[key]
        else:
            i = int(index)
            prefix.append(f"failed to validate item {i + 1}: ")
            ok = isinstance(current, list) and i < len(current)
            current = current[i] if ok else _MISSING_VALUE
    field = _field_schema(typ, path) if typ is not None and _BOUND.match(detail) else None
    return "".join(prefix) + _detail(detail, current, field)
