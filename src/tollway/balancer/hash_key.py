"""The chash key of a request (APISIX ``fetch_chash_hash_key``), computed by the caller once per
request and stored in ``PickContext.hash_key``."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

VarLookup = Callable[[str], Any]

# apisix/core/utils.lua resolve_var: "$name" or "${name}" / "${name ?? default}", not after "\".
_VAR = re.compile(r"(?<!\\)\$(\{\s*([^}]+?)\s*\}|([\w.]+))", re.ASCII)
_DEFAULT_SEP = re.compile(r"\s*\?\?\s*")


def hash_key_for(
    hash_on: str,
    key: str | None,
    var: VarLookup,
    consumer_name: str | None,
    remote_addr: str,
) -> str:
    """``var`` looks up an nginx-style variable (``uri``, ``arg_x``, ``http_x_y``,
    ``cookie_x``...) and returns None when it is not set. A missing key falls back to
    ``remote_addr`` (APISIX logs "chash_key fetch is nil"). An empty string is a key: Lua's
    ``not ""`` is false."""
    value: Any = None
    if hash_on == "consumer":
        value = consumer_name
    elif key is None:
        value = None
    elif hash_on == "vars":
        value = var(key)
    elif hash_on == "header":
        # APISIX ctx.var lower-cases "http_*" names and maps "-" to "_", like nginx.
        value = var("http_" + key.lower().replace("-", "_"))
    elif hash_on == "cookie":
        value = var("cookie_" + key)
    elif hash_on == "vars_combinations":
        value = resolve_vars(key, var)
    if value is None or value is False:
        return remote_addr
    return lua_tostring(value)


def resolve_vars(template: str, var: VarLookup) -> str | None:
    """Interpolates ``$var`` / ``${var ?? default}``; None when no variable resolved (APISIX
    chash treats ``n_resolved == 0`` as a missing key)."""
    resolved = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal resolved
        name = match.group(2) or match.group(3)
        parts = _DEFAULT_SEP.split(name)
        value = var(parts[0])
        if value is None:
            if len(parts) == 1:
                return ""
            value = parts[1]
        resolved += 1
        return lua_tostring(value)

    result = _VAR.sub(replace, template)
    return result if resolved else None


def lua_tostring(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)
