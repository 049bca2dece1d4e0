"""Delete protection (APISIX's per-type ``delete_checker``), over the instance's Store.

Pure: the Store in, the 400 message (naming the first referrer) or None out. Like APISIX, the
check reads the local cache, not etcd; ``?force=true`` skips it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from tollway.config.store import Store

# Where traffic-split may name an upstream, in APISIX's scan order, with the label it prints.
_PLUGIN_HOLDERS = (
    ("routes", "route"),
    ("services", "service"),
    ("plugin_configs", "plugin_config"),
    ("consumers", "consumer"),
    ("consumer_groups", "consumer_group"),
    ("global_rules", "global_rules"),
)


def _same(ref: Any, item_id: str) -> bool:
    return ref is not None and str(ref) == item_id


def _referrers(store: Store, kind: str, field: str, item_id: str) -> Iterator[str]:
    for rid, item in store[kind].items.items():
        if isinstance(item.value, dict) and _same(item.value.get(field), item_id):
            yield rid


def _split_upstream_ids(plugins: Any) -> Iterator[Any]:
    ts = plugins.get("traffic-split") if isinstance(plugins, dict) else None
    if not isinstance(ts, dict):
        return
    for rule in ts.get("rules") or []:
        if not isinstance(rule, dict):
            continue
        for wu in rule.get("weighted_upstreams") or []:
            if isinstance(wu, dict):
                yield wu.get("upstream_id")


def upstream_in_use(store: Store, item_id: str) -> str | None:
    for kind, label in (("routes", "route"), ("services", "service")):
        for rid in _referrers(store, kind, "upstream_id", item_id):
            return f"can not delete this upstream, {label} [{rid}] is still using it now"
    for kind, label in _PLUGIN_HOLDERS:
        for rid, item in store[kind].items.items():
            plugins = item.value.get("plugins") if isinstance(item.value, dict) else None
            if any(_same(u, item_id) for u in _split_upstream_ids(plugins)):
                return (
                    f"can not delete this upstream, plugin in {label} [{rid}] is still using it now"
                )
    return None


def service_in_use(store: Store, item_id: str) -> str | None:
    for kind, label in (("routes", "route"), ("stream_routes", "stream_route")):
        for rid in _referrers(store, kind, "service_id", item_id):
            return f"can not delete this service directly, {label} [{rid}] is still using it now"
    return None


def plugin_config_in_use(store: Store, item_id: str) -> str | None:
    for rid in _referrers(store, "routes", "plugin_config_id", item_id):
        return f"can not delete this plugin config, route [{rid}] is still using it now"
    return None


def consumer_group_in_use(store: Store, item_id: str) -> str | None:
    for name in _referrers(store, "consumers", "group_id", item_id):
        return f"can not delete this consumer group, consumer [{name}] is still using it now"
    return None


def proto_in_use(store: Store, item_id: str) -> str | None:
    # APISIX admin/proto.lua: routes, then services, using it through grpc-transcode
    for kind, what in (("routes", "route"), ("services", "service")):
        for oid, item in store[kind].items.items():
            plugins = item.value.get("plugins") if isinstance(item.value, dict) else None
            conf = plugins.get("grpc-transcode") if isinstance(plugins, dict) else None
            if isinstance(conf, dict) and _same(conf.get("proto_id"), item_id):
                return f"can not delete this proto, {what} [{oid}] is still using it now"
    return None


def stream_route_in_use(store: Store, item_id: str) -> str | None:
    for rid, item in store["stream_routes"].items.items():
        proto = item.value.get("protocol") if isinstance(item.value, dict) else None
        if isinstance(proto, dict) and _same(proto.get("superior_id"), item_id):
            return (
                f"can not delete this stream route directly, stream_route [{rid}] "
                "is still using it now"
            )
    return None


DeleteCheck = Callable[[Store, str], "str | None"]
