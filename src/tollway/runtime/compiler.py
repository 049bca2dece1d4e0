"""The Compiler: the Store's objects -> one immutable compiled ``Runtime`` per change batch.

Off the request path. A full load builds a new router in chunks, yielding to the event loop, then
publishes a new runtime. A change batch (``apply``) recompiles only the routes, upstreams or
chains it touches and publishes a new ``Runtime`` that shares everything else with the previous
one; the router is updated in place in the same synchronous step (see ``runtime.compiled``). The
Compiler owns the full-versus-incremental decision (``apply_batch``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import msgspec

from tollway.balancer import BalancerState
from tollway.config.store import Item, Store
from tollway.crypto import KeyCipher
from tollway.errors import ConfigError
from tollway.memory import collector_paused
from tollway.model import Route, Service, Upstream, decode_item
from tollway.plugins.registry import EMPTY_CHAIN, Chain, Registry
from tollway.protos import CompiledProto, compile_proto
from tollway.router import Router, RouterBuilder, RouteSpec, build_router
from tollway.router.spec import DISABLED
from tollway.runtime.certs import CertTable, build_cert_table
from tollway.runtime.compiled import (
    NO_PLUGINS,
    CompiledRoute,
    CompiledUpstream,
    FullRoute,
    Runtime,
    Timeouts,
)
from tollway.runtime.consumers import build_consumer_index
from tollway.settings import LoadedSettings
from tollway.upstream.pool import PoolLimits
from tollway.upstream.table import HealthTable, PassiveReporter

log = logging.getLogger("tollway.runtime")

# Beyond this many changed items in one full load, rebuild the router instead of patching it.
INCREMENTAL_LIMIT = 500

# Inline upstream types whose compiled form routes may share: their picker keeps no state keyed
# by the upstream (least_conn and ewma count in-flight requests per upstream key).
_SHAREABLE_TYPES = frozenset({"roundrobin", "chash"})


def _inline_conf(route: Route) -> Upstream | msgspec.Raw | None:
    """A route's inline upstream: raw JSON in a ``LeanRoute`` (where none is an empty Raw)."""
    conf: Upstream | msgspec.Raw | None = route.upstream
    if isinstance(conf, msgspec.Raw) and (not conf or bytes(conf) == b"null"):
        return None
    return conf


def _lowered(host: str) -> str:
    """``host`` lowercased, the same string when it already is (one copy kept, not two)."""
    low = host.lower()
    return host if low == host else low


def _has_rare_fields(route: Route) -> bool:
    """Whether ``route`` compiles to a ``FullRoute`` (see ``CompiledRoute``): it has plugins,
    a plugin config, a service, timeouts or websocket on."""
    return bool(
        route.plugins
        or route.plugin_config_id is not None
        or route.service_id is not None
        or route.timeout is not None
        or route.enable_websocket
    )


def _shareable(conf: Upstream) -> bool:
    return conf.checks is None and conf.type in _SHAREABLE_TYPES


class _Routes(Mapping[str, CompiledRoute]):
    """The router's payloads by route id, as a read-only mapping."""

    __slots__ = ("_router",)

    def __init__(self, router: Router) -> None:
        self._router = router

    def __getitem__(self, route_id: str) -> CompiledRoute:
        found: CompiledRoute | None = self._router.payload(route_id)
        if found is None:
            raise KeyError(route_id)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._router)

    def __len__(self) -> int:
        return len(self._router)


class Compiler:
    CHUNK = 2000  # routes per synchronous step of a full build

    def __init__(
        self,
        settings: LoadedSettings,
        registry: Registry,
        *,
        health: HealthTable | None = None,
        passive: PassiveReporter | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.state = BalancerState()
        self.health = health
        self.passive = passive
        self.dns: dict[str, tuple[str, ...]] = {}  # name -> IPs, from the supervisor
        self.kind = settings.conf.apisix.router.http
        self.tail_slash = settings.conf.apisix.delete_uri_tail_slash
        self.servlet_uri = settings.conf.apisix.normalize_uri_like_servlet
        up = settings.conf.nginx_config.http.upstream
        self.keepalive = PoolLimits(up.keepalive, up.keepalive_timeout, up.keepalive_requests)
        # The routes that use a service / plugin config, by its id: a change to one recompiles
        # those routes without reading every route.
        self._service_users: dict[str, dict[str, None]] = {}
        self._pconf_users: dict[str, dict[str, None]] = {}
        self._parents: dict[str, tuple[str | None, str | None]] = {}  # only routes with one
        # Interned compiled forms (issue #17): equal inline upstreams and a service's upstream
        # are one object for every route using them; equal method sets are one frozenset.
        self._inline: weakref.WeakValueDictionary[object, CompiledUpstream] = (
            weakref.WeakValueDictionary()
        )
        self._methods: dict[frozenset[str], frozenset[str]] = {}
        self.runtime = Runtime(
            self, build_router(self.kind, [], delete_uri_tail_slash=self.tail_slash)
        )
        self.runtime_global: Chain = EMPTY_CHAIN
        keyring = settings.conf.apisix.data_encryption.keyring
        self.cipher = KeyCipher(keyring) if keyring else None
        # Fail closed: a chain naming a plugin this worker cannot run answers 503 (the Chain's
        # refusal), unless tollway.unknown_plugins is "skip" (APISIX: served without it).
        self.refuse_unknown = settings.conf.tollway.unknown_plugins == "refuse"
        self._refusals_logged: set[tuple[str, Any, Any]] = set()  # (key, versions, refusal)
        # proto id -> (its content, compiled): a proto is compiled once per content
        self._protos: dict[str, tuple[str, CompiledProto]] = {}

    @property
    def routes(self) -> Mapping[str, CompiledRoute]:
        """Every compiled route by id: read from the router, which holds each as its entries'
        payload (the Compiler's bookkeeping, never read by a request; no dict of its own, which
        at 100k routes cost ~40 bytes per route)."""
        return _Routes(self.runtime.router)

    # -- full build -----------------------------------------------------------------------

    async def rebuild(self, store: Store) -> Runtime:
        upstreams = {
            i: self.compile_upstream(f"/apisix/upstreams/{i}", it.mod_revision, it.obj)
            for i, it in store["upstreams"].items.items()
        }
        self.runtime_global = self._global_chain(store)
        builder = RouterBuilder(self.kind, delete_uri_tail_slash=self.tail_slash)
        self._service_users, self._pconf_users, self._parents = {}, {}, {}
        # Nothing else changes the store while this awaits (the worker applies one message at
        # a time), so one iterator walks it in chunks.
        items = iter(store["routes"].items.items())
        while chunk := list(itertools.islice(items, self.CHUNK)):
            # The GC paused per chunk: compiling allocates only long-lived objects, and a
            # collection every few hundred of them walks the growing heap (at 100k routes,
            # a build twice as long).
            with collector_paused():
                specs = []
                for rid, item in chunk:
                    spec = self._route_item(store, rid, item)
                    if spec is not None:
                        specs.append(spec)
                builder.add_many(specs)
            await asyncio.sleep(0)  # let requests run between chunks
        rt = Runtime(
            self,
            builder.finish(),
            upstreams=upstreams,
            global_chain=self.runtime_global,
            consumers=build_consumer_index(store, self.registry),
            certs=self._certs(store),
            protos=self._compiled_protos(store),
            revision=store.revision,
            plugin_metadata=self._plugin_metadata(store, None, {}),
        )
        self.runtime = rt
        return rt

    async def load(self, store: Store, *, first: bool) -> Runtime:
        """After a (re)load of the Store: a small difference is patched in, a large one (or
        the first load, or a new order of routes: ties follow it) is rebuilt."""
        changes = store.last_changes
        if first or len(changes) > INCREMENTAL_LIMIT or "routes" in store.reordered:
            return await self.rebuild(store)
        return self.apply(store, changes)

    def _plugin_metadata(
        self, store: Store, names: set[str] | None, current: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The runtime's ``plugin_metadata`` (APISIX ``plugin.plugin_metadata``) after the items
        ``names`` (None: all) changed; each plugin is also handed its latest one."""
        items = store["plugin_metadata"]
        out = dict(current)
        for name, plugin in self.registry.plugins.items():
            if plugin.metadata_schema is None or (names is not None and name not in names):
                continue
            it = items.get(name)
            decoded = None
            if it is not None and isinstance(it.value, dict):
                body = {k: v for k, v in it.value.items() if k != "id"}
                try:
                    decoded = msgspec.convert(body, plugin.metadata_schema)
                except msgspec.ValidationError as e:
                    log.warning("plugin_metadata/%s is invalid, ignored: %s", name, e)
            if decoded is None:
                out.pop(name, None)
            else:
                out[name] = decoded
            plugin.set_metadata(decoded)
        return out

    # -- incremental ----------------------------------------------------------------------

    def apply(self, store: Store, changes: Iterable[tuple[str, str, str]]) -> Runtime:
        """Publish the runtime after ``changes``: a new object sharing every unchanged part;
        the previous one, and every route and upstream it references, stays as it was for the
        requests that hold it."""
        rt = self.runtime
        # Ordered as the changes came, which is the store's order for new keys (the tie-break
        # among equal priorities); existing routes keep their place in the router.
        route_ids: dict[str, None] = {}
        kinds: set[str] = set()
        metadata: set[str] = set()
        services: set[str] = set()
        pconfs: set[str] = set()
        upstream_ids: set[str] = set()
        for kind, item_id, _key in changes:
            kinds.add(kind)
            if kind == "routes":
                route_ids[item_id] = None
            elif kind == "services":
                services.add(item_id)
            elif kind == "plugin_configs":
                pconfs.add(item_id)
            elif kind == "upstreams":
                upstream_ids.add(item_id)
            elif kind == "plugin_metadata":
                metadata.add(item_id)
        changed: dict[str, Any] = {"revision": store.revision}
        if metadata:
            changed["plugin_metadata"] = self._plugin_metadata(store, metadata, rt.plugin_metadata)
        if upstream_ids:
            changed["upstreams"] = self._upstreams_after(store, rt.upstreams, upstream_ids)
        if "ssls" in kinds:
            changed["certs"] = self._certs(store)
        if "protos" in kinds:
            changed["protos"] = self._compiled_protos(store)
        if kinds & {"consumers", "credentials", "consumer_groups"}:
            changed["consumers"] = build_consumer_index(store, self.registry)
        globals_changed = "global_rules" in kinds
        if globals_changed:
            changed["global_chain"] = self.runtime_global = self._global_chain(store)
        if services or pconfs:
            route_ids.update(dict.fromkeys(self._routes_using(store, services, pconfs)))
        self._recompile_routes(store, route_ids)
        if globals_changed:
            self._rechain_routes(skip=route_ids)
        if route_ids or "global_chain" in changed or "consumers" in changed:
            # consumer chains merge a route's chain: rebuilt on demand (versions are 0 in
            # standalone mode, so a key on them alone would keep a stale chain)
            changed["consumer_chains"] = {}
        self.runtime = rt.evolve(**changed)
        return self.runtime

    def _upstreams_after(
        self, store: Store, current: Mapping[str, CompiledUpstream], ids: set[str]
    ) -> dict[str, CompiledUpstream]:
        upstreams = dict(current)
        for item_id in ids:
            it = store["upstreams"].get(item_id)
            if it is None:
                upstreams.pop(item_id, None)
            else:
                upstreams[item_id] = self.compile_upstream(
                    f"/apisix/upstreams/{item_id}", it.mod_revision, it.obj
                )
        return upstreams

    def _routes_using(self, store: Store, services: set[str], pconfs: set[str]) -> list[str]:
        """The routes using these services or plugin configs (from the index kept by
        ``_set_parents``, not a scan of every route)."""
        found: dict[str, None] = {}
        for sid in services:
            found.update(self._service_users.get(sid, {}))
        for pid in pconfs:
            found.update(self._pconf_users.get(pid, {}))
        return list(found)  # existing routes: they keep their place in the router

    def _recompile_routes(self, store: Store, route_ids: Iterable[str]) -> None:
        upserts: list[RouteSpec] = []
        deletes: list[str] = []
        for rid in route_ids:
            it = store["routes"].get(rid)
            spec = None if it is None else self._route_item(store, rid, it)
            if spec is None:
                self._set_parents(rid, None, None)
                deletes.append(rid)
            else:
                upserts.append(spec)
        if upserts or deletes:
            self.runtime.router.update(upserts, deletes)

    def _rechain_routes(self, skip: Mapping[str, None]) -> None:
        """New global rules: every route gets a new compiled route with the new chain (the
        router entries point at it); requests holding the old one keep the old chain."""
        router = self.runtime.router
        for rid, cr in list(self.routes.items()):
            if rid in skip:
                continue
            router.repoint(rid, cr.evolve(chain=cr.own_chain.under(self.runtime_global)))

    # -- pieces ---------------------------------------------------------------------------

    def compile_upstream(self, key: str, version: int, conf: Upstream) -> CompiledUpstream:
        return CompiledUpstream(
            key,
            version,
            conf,
            self.state,
            self.keepalive,
            health=self.health,
            answers=self.dns,
            passive=self.passive,
        )

    def _inline_upstream(
        self, key: str, version: int, conf: Upstream | msgspec.Raw
    ) -> CompiledUpstream:
        """An upstream written inside a route or a service, compiled once for every route
        that uses it: a service's is one upstream (APISIX keys it by the service), and equal
        inline confs of routes share one compiled form unless it keeps per-upstream state
        (health checks report by key; least_conn/ewma count per key). ``conf`` is raw JSON in
        a ``LeanRoute``: then equal texts are decoded once."""
        memo: object
        if isinstance(conf, msgspec.Raw):
            memo = bytes(conf)
            up = self._inline.get(memo)
            if up is not None:
                return up
            decoded: Upstream = decode_item("upstreams", memo)
        else:
            decoded, memo = conf, None
        if key.startswith("/apisix/services/"):
            memo = (key, version)
        elif not _shareable(decoded):
            return self.compile_upstream(key, version, decoded)
        elif memo is None:
            memo = msgspec.json.encode(decoded)
        up = self._inline.get(memo)
        if up is None:
            up = self._inline[memo] = self.compile_upstream(key, version, decoded)
        return up

    def _method_set(self, methods: Sequence[str] | None) -> frozenset[str] | None:
        if not methods:
            return None
        found = frozenset(methods)
        return self._methods.setdefault(found, found)

    def chain(
        self, plugins: Mapping[str, Any] | None, known: Mapping[str, tuple[Any, Any]] | None = None
    ) -> Chain:
        return self.registry.build_chain(plugins, refuse_unknown=self.refuse_unknown, known=known)

    # -- DNS ------------------------------------------------------------------------------

    def apply_dns(self, names: Mapping[str, Sequence[str]]) -> int:
        """New answers for some domains: recompile the upstreams that use them and publish a
        new runtime (synchronously, like ``apply``). Returns how many were recompiled."""
        changed = set()
        for name, ips in names.items():
            answer = tuple(ips)
            if self.dns.get(name) != answer:
                self.dns[name] = answer
                changed.add(name)
        if not changed:
            return 0
        rt = self.runtime
        upstreams = dict(rt.upstreams)
        n = 0
        for uid, up in rt.upstreams.items():
            if up.names & changed:
                upstreams[uid] = self.compile_upstream(up.key, up.version, up.conf)
                n += 1
        # An inline upstream shared by many routes is compiled once again, and stays shared.
        self._inline = weakref.WeakValueDictionary(
            (k, up) for k, up in self._inline.items() if not up.names & changed
        )
        renewed: dict[CompiledUpstream, CompiledUpstream] = {}  # by identity
        for rid, cr in list(self.routes.items()):
            inline = cr.upstream
            if inline is not None and inline.names & changed:
                fresh = renewed.get(inline)
                if fresh is None:
                    fresh = renewed[inline] = self._inline_upstream(
                        inline.key, inline.version, inline.conf
                    )
                    n += 1
                rt.router.repoint(rid, cr.evolve(upstream=fresh))
        # inline upstreams chosen by plugins were compiled with the old answers
        self.runtime = rt.evolve(upstreams=upstreams, inline_upstreams={})
        return n

    def _compiled_protos(self, store: Store) -> dict[str, CompiledProto]:
        """Every proto compiled (a new or changed content only: protoc runs once per content;
        the Store's checks already refused one that does not compile)."""
        done: dict[str, tuple[str, CompiledProto]] = {}
        for pid, item in store["protos"].items.items():
            content = item.obj.content
            kept = self._protos.get(pid)
            if kept is not None and kept[0] == content:
                done[pid] = kept
                continue
            try:
                done[pid] = (content, compile_proto(content))
            except ConfigError as e:
                log.warning("protos/%s does not compile, not served: %s", pid, e)
        self._protos = done
        return {pid: compiled for pid, (_, compiled) in done.items()}

    def _certs(self, store: Store) -> CertTable:
        return build_cert_table(((i, it.obj) for i, it in store["ssls"].items.items()), self.cipher)

    def _global_chain(self, store: Store) -> Chain:
        merged: dict[str, Any] = {}
        seen: set[str] = set()
        for item in store["global_rules"].items.values():
            for name, conf in (item.obj.plugins or {}).items():
                if name in seen:
                    # APISIX drops a plugin that appears in more than one global rule.
                    merged.pop(name, None)
                    continue
                seen.add(name)
                merged[name] = conf
        chain = self.chain(merged)
        versions = tuple(it.mod_revision for it in store["global_rules"].items.values())
        self._log_refusal("global rules", versions, chain)
        return chain

    def _log_refusal(self, what: str, versions: Any, chain: Chain) -> None:
        """Warn once per object version about a refusal the config agent could not foresee: a
        conf this worker's plugin cannot decode. (Unknown plugins: the agent warns.)"""
        refusal = chain.refusal
        if refusal is None or not refusal.invalid:
            return
        seen = (what, versions, refusal)
        if seen in self._refusals_logged:
            return
        if len(self._refusals_logged) > 10000:
            self._refusals_logged.clear()
        self._refusals_logged.add(seen)
        log.warning(
            "%s: invalid configuration of plugin(s) %s; its requests are answered 503",
            what,
            ", ".join(refusal.invalid),
        )

    def _route_item(self, store: Store, rid: str, item: Item) -> RouteSpec | None:
        """Compile one route of the store: its spec for the router, the compiled route its
        payload (a lean store's routes are decoded here, and the decoded object is dropped once
        compiled); None if it does not decode."""
        try:
            route: Route = store.decoded(item)
        except ConfigError as e:  # the supervisor validated it: a version skew, say
            log.error("route %s skipped: %s", rid, e)
            self._set_parents(rid, None, None)
            return None
        sid = None if route.service_id is None else str(route.service_id)
        pid = None if route.plugin_config_id is None else str(route.plugin_config_id)
        self._set_parents(rid, sid, pid)
        try:
            compiled = self._route(store, rid, route, item.mod_revision)
        except ConfigError as e:  # its inline upstream, decoded here in a lean store
            log.error("route %s skipped: %s", rid, e)
            self._set_parents(rid, None, None)
            return None
        if sid is None and pid is None:
            store.settle(item)  # only its own change recompiles it: its bytes can go
        else:
            store.keep(item)  # its service's or plugin config's change recompiles it
        return compiled

    def _set_parents(self, rid: str, sid: str | None, pid: str | None) -> None:
        """Index route ``rid`` under its service and plugin config (for ``_routes_using``)."""
        old_sid, old_pid = self._parents.pop(rid, (None, None))
        for users, old, new in (
            (self._service_users, old_sid, sid),
            (self._pconf_users, old_pid, pid),
        ):
            if old is not None and old != new:
                those = users.get(old)
                if those is not None:
                    those.pop(rid, None)
                    if not those:
                        del users[old]
            if new is not None:
                users.setdefault(new, {})[rid] = None
        if sid is not None or pid is not None:
            self._parents[rid] = (sid, pid)

    def _rare_fields(
        self, store: Store, route: Route, cr: FullRoute
    ) -> tuple[Service | None, int, int]:
        """Fill ``cr``'s rare fields (plugins merged with its plugin config's and service's,
        chains, timeouts, websocket, an error to answer); returns its service and the service's
        and plugin config's versions."""
        plugins: dict[str, Any] = {}
        service: Service | None = None
        svc_version = 0
        pc_version = 0
        if route.plugin_config_id is not None:
            pc = store["plugin_configs"].get(str(route.plugin_config_id))
            if pc is None:
                cr.error = 503
            else:
                plugins.update(pc.obj.plugins or {})
                pc_version = pc.mod_revision
        plugins.update(route.plugins or {})
        if route.service_id is not None:
            cr.service_id = str(route.service_id)
            sitem = store["services"].get(cr.service_id)
            if sitem is None:
                cr.error = cr.error or 404
            else:
                service = sitem.obj
                svc_version = sitem.mod_revision
                merged = dict(service.plugins or {})
                merged.update(plugins)
                plugins = merged
        cr.plugins = plugins or NO_PLUGINS
        cr.own_chain = self.chain(plugins)
        cr.chain = cr.own_chain.under(self.runtime_global)
        cr.timeouts = Timeouts.of(route.timeout) if route.timeout is not None else None
        ws = route.enable_websocket
        if ws is None and service is not None:
            ws = service.enable_websocket
        cr.enable_websocket = bool(ws)
        return service, svc_version, pc_version

    def _route(self, store: Store, rid: str, route: Route, version: int) -> RouteSpec:
        # Most routes have none of the rare fields: built as the compact class straight away,
        # not as a FullRoute copied into one (at 100k routes, ~1 us less per route and worker).
        cr: CompiledRoute = FullRoute() if _has_rare_fields(route) else CompiledRoute()
        cr.id = rid
        cr.name = route.name
        service: Service | None = None
        svc_version = 0
        pc_version = 0
        if isinstance(cr, FullRoute):
            service, svc_version, pc_version = self._rare_fields(store, route, cr)
        else:
            cr.chain = EMPTY_CHAIN.under(self.runtime_global)
        # upstream_id wins over an inline upstream; the route's choice wins over the service's.
        if route.upstream_id is not None:
            cr.upstream_id = str(route.upstream_id)
        elif (inline := _inline_conf(route)) is not None:
            cr.upstream = self._inline_upstream(cr.key, version, inline)
        elif service is not None and service.upstream_id is not None:
            cr.upstream_id = str(service.upstream_id)
        elif service is not None and service.upstream is not None:
            cr.upstream = self._inline_upstream(
                f"/apisix/services/{cr.service_id}", svc_version, service.upstream
            )
        # What the route's chain was built from (consumer chains built on it are keyed by this);
        # most routes have neither service nor plugin config: their own version alone.
        cr.versions = (version, svc_version, pc_version) if svc_version or pc_version else version
        self._log_refusal(cr.key, cr.versions, cr.own_chain)
        hosts = route.host_list()
        if hosts is None and service is not None:
            hosts = service.hosts
        uris = [route.uri] if route.uri is not None else route.uris or []
        cr.uri = uris[0] if uris else None
        cr.hosts = tuple(_lowered(h) for h in hosts) if hosts else None
        return RouteSpec(
            id=rid,
            uris=tuple(uris),
            priority=route.priority,
            # A disabled route stays in the router, matching nothing, so that enabling it again
            # gives it back its place among equal priorities (APISIX keeps it in its values).
            methods=DISABLED if route.status == 0 else self._method_set(route.methods),
            hosts=cr.hosts,
            remote_addrs=tuple(
                [route.remote_addr] if route.remote_addr else route.remote_addrs or []
            )
            or None,
            vars=route.vars or None,
            payload=cr.compact(),
        )
