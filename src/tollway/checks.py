"""Checks beyond each object's schema, shared by the config agent and the Admin API.

APISIX's per-type ``checker``: plugin configs valid, ``vars`` compile, one of host/hosts and of
remote_addr/remote_addrs. ``filter_func`` is Lua source in APISIX; Tollway cannot run it and
rejects it with a message that says so.
"""

from __future__ import annotations

from typing import Any

from tollway.errors import ConfigError
from tollway.expr import ExprError, compile_expr
from tollway.model import Route, Service
from tollway.plugins.registry import Registry

PLUGIN_KINDS = frozenset(
    {
        "routes",
        "services",
        "consumers",
        "global_rules",
        "plugin_configs",
        "consumer_groups",
        "credentials",
    }
)


def route_field_conflicts(value: dict[str, Any]) -> None:
    """The checks APISIX runs before the schema (so their messages win)."""
    if "host" in value and "hosts" in value:
        raise ConfigError("only one of host or hosts is allowed")
    if "remote_addr" in value and "remote_addrs" in value:
        raise ConfigError("only one of remote_addr or remote_addrs is allowed")


def check_vars(rule: Any) -> None:
    try:
        compile_expr(rule)
    except ExprError as e:
        raise ConfigError(f"failed to validate the 'vars' expression: {e}") from None


class ItemChecker:
    """``checker(kind, id, obj, store)`` for the Store. ``strict`` makes unknown plugins errors
    (APISIX: an error in yaml mode and in the Admin API, a warning for items read from etcd)."""

    def __init__(self, registry: Registry, *, strict: bool) -> None:
        self.registry = registry
        self.strict = strict

    def __call__(self, kind: str, item_id: str, obj: Any, store: Any) -> None:
        if isinstance(obj, Route):
            if obj.host is not None and obj.hosts is not None:
                raise ConfigError("only one of host or hosts is allowed")
            if obj.remote_addr is not None and obj.remote_addrs is not None:
                raise ConfigError("only one of remote_addr or remote_addrs is allowed")
            if obj.vars:
                check_vars(obj.vars)
            if obj.filter_func is not None:
                raise ConfigError(
                    "failed to load 'filter_func' string: filter_func is Lua code, which "
                    "Tollway does not run; use 'vars' instead"
                )
            if obj.script is not None:
                raise ConfigError("'script' is Lua code, which Tollway does not run")
        if kind in PLUGIN_KINDS:
            self.check_plugins(
                getattr(obj, "plugins", None), consumer=kind in ("consumers", "credentials")
            )
        if isinstance(obj, Service) and obj.script is not None:
            raise ConfigError("'script' is Lua code, which Tollway does not run")

    def check_plugins(self, plugins: dict[str, Any] | None, *, consumer: bool = False) -> None:
        for name, conf in (plugins or {}).items():
            if self.registry.get(name) is None:
                if self.strict:
                    raise ConfigError(f"unknown plugin [{name}]")
                continue
            self.registry.decode_conf(name, conf, consumer=consumer)
