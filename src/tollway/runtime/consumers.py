"""The consumer index: consumers by auth plugin and key, built from the Store once per change."""

from __future__ import annotations

from typing import Any

from tollway.config.store import Store
from tollway.errors import ConfigError
from tollway.plugins.kit import Consumer
from tollway.plugins.registry import Registry


class ConsumerIndex:
    """Consumers by auth plugin and key (key-auth key, basic-auth username...)."""

    def __init__(self) -> None:
        self.by_plugin: dict[str, dict[str, Consumer]] = {}
        self.by_name: dict[str, Consumer] = {}  # every consumer (anonymous_consumer lookups)
        self.groups: dict[str, dict[str, Any]] = {}
        self.version = 0

    def find(self, plugin: str, key: str) -> Consumer | None:
        table = self.by_plugin.get(plugin)
        return table.get(key) if table is not None else None


def build_consumer_index(store: Store, registry: Registry) -> ConsumerIndex:
    """Every consumer by name, and by (auth plugin, key) for the auth plugins to find."""
    index = ConsumerIndex()
    for gid, g in store["consumer_groups"].items.items():
        index.groups[gid] = dict(g.obj.plugins or {})
    # (username, auth plugin confs, consumer, version, credential id)
    sources: list[tuple[str, dict[str, Any], Any, int, str | None]] = []
    consumers = store["consumers"].items
    for name, it in consumers.items():
        sources.append((name, it.obj.plugins or {}, it.obj, it.mod_revision, None))
    for cid, it in store["credentials"].items.items():
        owner = consumers.get(cid.split("/", 1)[0])
        if owner is not None:
            sources.append(
                (
                    owner.id,
                    it.obj.plugins or {},
                    owner.obj,
                    owner.mod_revision,
                    cid.rpartition("/")[2],
                )
            )
    for name, it in consumers.items():
        c = it.obj
        index.by_name[name] = Consumer(
            name,
            None,
            {n: v for n, v in (c.plugins or {}).items() if _merged_on_routes(registry, n)},
            str(c.group_id) if c.group_id is not None else None,
            c.labels,
            it.mod_revision,
        )
    for username, auth_plugins, consumer, version, credential_id in sources:
        own = {n: c for n, c in (consumer.plugins or {}).items() if _merged_on_routes(registry, n)}
        for name, conf in auth_plugins.items():
            plugin = registry.get(name)
            if plugin is None or plugin.type != "auth" or not plugin.consumer_key_field:
                continue
            try:
                decoded = registry.decode_conf(name, conf, consumer=True)
            except ConfigError:
                continue
            key = getattr(decoded, plugin.consumer_key_field, None)
            if key is None:
                continue
            group = str(consumer.group_id) if consumer.group_id is not None else None
            index.by_plugin.setdefault(name, {})[str(key)] = Consumer(
                username, decoded, own, group, consumer.labels, version, credential_id
            )
    return index


def _merged_on_routes(registry: Registry, name: str) -> bool:
    """A consumer plugin that joins the routes' chains: not an auth plugin (those identify
    the consumer). One this gateway cannot run joins too, so that the requests of that
    consumer are refused rather than served without it: an unknown plugin may not be an
    auth plugin."""
    plugin = registry.get(name)
    return plugin is None or plugin.type != "auth"
