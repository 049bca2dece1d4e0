"""Checks beyond each object's schema, shared by the config agent and the Admin API.

APISIX's per-type ``checker``: plugin configs valid, ``vars`` compile, one of host/hosts and of
remote_addr/remote_addrs, protos compile. ``filter_func`` is Lua source in APISIX; Tollway
cannot run it and rejects it with a message that says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tollway.errors import ConfigError
from tollway.expr import ExprError, compile_expr
from tollway.model import Proto, Route, Service
from tollway.plugins.registry import Registry
from tollway.protos import check_content

if TYPE_CHECKING:
    from tollway.config.store import Store
    from tollway.settings import LoadedSettings

log = logging.getLogger("tollway.config")

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
# The same kinds, in the order /status/config lists their items.
PLUGIN_KINDS_ORDER = (
    "global_rules",
    "routes",
    "services",
    "plugin_configs",
    "consumers",
    "consumer_groups",
    "credentials",
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
    (APISIX: an error in yaml mode and in the Admin API, a warning for items read from etcd).
    Otherwise an item naming a plugin this gateway cannot run is accepted with one warning (the
    checker runs once per item version), saying what the workers do with it: refuse its
    requests with 503 (``unknown_plugins="refuse"``, fail closed) or skip the plugin."""

    def __init__(
        self, registry: Registry, *, strict: bool, unknown_plugins: str = "refuse"
    ) -> None:
        self.registry = registry
        self.strict = strict
        self.unknown_plugins = unknown_plugins

    @classmethod
    def for_store(cls, registry: Registry, settings: LoadedSettings) -> ItemChecker:
        """The config agent's checker. Fail closed (the default): items naming plugins the
        gateway cannot run are kept, from etcd and from apisix.yaml alike, so that the workers
        refuse their requests instead of serving them open. ``tollway.unknown_plugins: skip``
        is APISIX's check: a warning for etcd, an error (the item is dropped) in yaml mode."""
        policy = settings.conf.tollway.unknown_plugins
        strict = policy == "skip" and settings.config_provider != "etcd"
        return cls(registry, strict=strict, unknown_plugins=policy)

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
        if isinstance(obj, Proto):
            # compiled when written (APISIX admin/proto.lua), and when read from etcd: an
            # invalid one is rejected here and the last good version keeps serving
            check_content(obj.content)
        unknown: list[str] = []
        if kind in PLUGIN_KINDS:
            unknown = self.check_plugins(
                getattr(obj, "plugins", None), consumer=kind in ("consumers", "credentials")
            )
        if isinstance(obj, Service) and obj.script is not None:
            raise ConfigError("'script' is Lua code, which Tollway does not run")
        if unknown:
            self._warn_unknown(kind, item_id, unknown)

    def check_plugins(self, plugins: dict[str, Any] | None, *, consumer: bool = False) -> list[str]:
        """Decode every known plugin's conf (ConfigError on the first bad one). Returns the
        names of the unknown ones that are not disabled by ``_meta.disable`` (strict: the first
        unknown one is an error)."""
        unknown: list[str] = []
        for name, conf in (plugins or {}).items():
            if self.registry.get(name) is None:
                if self.strict:
                    raise ConfigError(f"unknown plugin [{name}]")
                if not _disabled(conf):
                    unknown.append(name)
                continue
            self.registry.decode_conf(name, conf, consumer=consumer)
        return unknown

    def _warn_unknown(self, kind: str, item_id: str, names: list[str]) -> None:
        if self.unknown_plugins == "skip":
            outcome = "skipped (tollway.unknown_plugins: skip)"
        elif kind == "credentials":
            outcome = "this credential authenticates nobody through it"
        else:
            outcome = "the requests it applies to are answered 503 (fail closed)"
        log.warning(
            "%s/%s names plugin(s) %s, unknown or not enabled in config.yaml: %s",
            kind,
            item_id,
            ", ".join(names),
            outcome,
        )


def _disabled(conf: Any) -> bool:
    meta = conf.get("_meta") if isinstance(conf, Mapping) else None
    return isinstance(meta, Mapping) and bool(meta.get("disable"))


def unknown_plugins(registry: Registry, plugins: Mapping[str, Any] | None) -> list[str]:
    """The plugins of one item that ``registry`` cannot run (and are not disabled)."""
    return [n for n, c in (plugins or {}).items() if registry.get(n) is None and not _disabled(c)]


class UnknownPluginItems:
    """The items of a Store that name plugins the gateway cannot run, as ``(key, names)``: what
    ``/status/config`` lists and the ``tollway_config_unknown_plugin_items`` gauge counts. A
    kind is scanned again only when its collection's version moved."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._cache: dict[str, tuple[int, list[tuple[str, list[str]]]]] = {}

    def __call__(self, store: Store) -> list[tuple[str, list[str]]]:
        out: list[tuple[str, list[str]]] = []
        for kind in PLUGIN_KINDS_ORDER:
            coll = store[kind]
            hit = self._cache.get(kind)
            if hit is None or hit[0] != coll.version:
                found = [
                    (it.key, names)
                    for it in coll.items.values()
                    if (names := unknown_plugins(self.registry, getattr(it.obj, "plugins", None)))
                ]
                hit = self._cache[kind] = (coll.version, found)
            out.extend(hit[1])
        return out
