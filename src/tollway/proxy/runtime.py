"""The compiled runtime: router, upstreams with their pickers, plugin chains.

Built from the Store off the request path. Single changes are applied incrementally (only the
routes, upstreams or chains they touch are recompiled, and the router is updated in place in one
synchronous step, so a request never sees half a change); a full load builds a new router in
chunks, yielding to the event loop, then swaps it in.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from tollway.balancer import BalancerState, Picker, Server, create_picker, default_retries
from tollway.config.store import Store
from tollway.crypto import KeyCipher
from tollway.errors import ConfigError
from tollway.model import Route, Service, Timeout, Upstream
from tollway.plugins.kit import Consumer
from tollway.plugins.registry import EMPTY_CHAIN, Chain, Registry
from tollway.proxy.tls import CertTable, build_cert_table
from tollway.proxy.upstream import PoolLimits
from tollway.router import Router, RouterBuilder, RouteSpec, build_router
from tollway.router.spec import DISABLED
from tollway.settings import LoadedSettings
from tollway.upstream.nodes import expand
from tollway.upstream.table import HealthTable, PassiveReporter

log = logging.getLogger("tollway.proxy")

DEFAULT_PORTS = {"http": 80, "https": 443, "grpc": 80, "grpcs": 443}


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 60.0
    send: float = 60.0
    read: float = 60.0

    @staticmethod
    def of(t: Timeout | None, fallback: Timeouts | None = None) -> Timeouts:
        if t is None:
            return fallback or DEFAULT_TIMEOUTS
        return Timeouts(t.connect, t.send, t.read)


DEFAULT_TIMEOUTS = Timeouts()


class CompiledUpstream:
    __slots__ = (
        "conf",
        "hash_key",
        "hash_on",
        "key",
        "limits",
        "names",
        "node_hosts",
        "pass_host",
        "passive",
        "picker",
        "pool_key",
        "retries",
        "retry_timeout",
        "scheme",
        "servers",
        "single",
        "ssl_ctx",
        "timeouts",
        "upstream_host",
        "version",
    )

    def __init__(
        self,
        key: str,
        version: int,
        conf: Upstream,
        state: BalancerState,
        keepalive: PoolLimits,
        *,
        health: HealthTable | None = None,
        answers: Mapping[str, Sequence[str]] | None = None,
        passive: PassiveReporter | None = None,
    ) -> None:
        self.key = key
        self.version = version
        self.conf = conf
        self.scheme = conf.scheme
        default_port = DEFAULT_PORTS.get(conf.scheme, 80)
        # Domain nodes become one server per IP (tollway.upstream.nodes); node_hosts keeps the
        # domain of each for Host (pass_host: node) and SNI; names are the domains used.
        configured = [
            Server(n.host, n.port or default_port, n.weight, n.priority) for n in conf.node_list()
        ]
        expanded = expand(configured, answers or {})
        self.servers = expanded.servers
        self.node_hosts: dict[str, str] | None = expanded.node_hosts or None
        self.names = expanded.names
        checks = conf.checks
        # Health is read live from the worker's HealthTable at pick time; no checks, no lookup.
        is_healthy = health.predicate(key) if health is not None and checks is not None else None
        self.passive = passive if checks is not None and checks.passive is not None else None
        self.single = (
            self.servers[0]
            if len(self.servers) == 1 and conf.type != "least_conn" and self.servers[0].weight > 0
            else None
        )
        self.picker: Picker | None = (
            create_picker(
                conf.type, self.servers, resource_key=key, is_healthy=is_healthy, state=state
            )
            if self.servers and self.single is None
            else None
        )
        self.hash_on = conf.hash_on
        self.hash_key = conf.key
        self.pass_host = conf.pass_host
        self.upstream_host = conf.upstream_host
        self.timeouts = Timeouts.of(conf.timeout)
        self.retries = (
            conf.retries if conf.retries is not None else default_retries(len(self.servers))
        )
        self.retry_timeout = conf.retry_timeout or 0.0
        kp = conf.keepalive_pool
        self.limits = (
            PoolLimits(kp.size, kp.idle_timeout, kp.requests) if kp is not None else keepalive
        )
        self.ssl_ctx = _ssl_context(conf) if conf.scheme in ("https", "grpcs") else None
        tls = conf.tls
        self.pool_key = (conf.scheme, tls.client_cert if tls else None, tls.verify if tls else None)


def _ssl_context(conf: Upstream) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    verify = conf.tls.verify if conf.tls is not None else False
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    tls = conf.tls
    if tls is not None and tls.client_cert and tls.client_key:
        import os
        import tempfile

        # ssl wants files; write them once per compile into a private temp dir.
        d = tempfile.mkdtemp(prefix="tollway-tls-")
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        with open(cert, "w") as f:
            f.write(tls.client_cert)
        with open(key, "w") as f:
            f.write(tls.client_key)
        os.chmod(key, 0o600)
        ctx.load_cert_chain(cert, key)
    return ctx


class CompiledRoute:
    """A route merged with its service and plugin config: what a matched request uses."""

    __slots__ = (
        "chain",
        "enable_websocket",
        "error",
        "id",
        "key",
        "name",
        "own_chain",
        "plugins",
        "service_id",
        "timeouts",
        "upstream",
        "upstream_id",
        "versions",
    )

    def __init__(self) -> None:
        self.id = ""
        self.key = ""
        self.name: str | None = None
        self.service_id: str | None = None
        self.own_chain: Chain = EMPTY_CHAIN  # the route's own plugins (with service/config)
        self.chain: Chain = EMPTY_CHAIN  # the same, with the global rules' response phases
        self.plugins: dict[str, Any] = {}  # merged raw confs (for consumer merges)
        self.upstream: CompiledUpstream | None = None
        self.upstream_id: str | None = None
        self.timeouts: Timeouts | None = None
        self.enable_websocket = False
        self.error: int = 0  # a status to answer with (missing service / plugin config)
        self.versions: tuple[int, int, int] = (0, 0, 0)


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


class Runtime:
    """What each request reads once. Mutated only by the Compiler, synchronously."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.routes: dict[str, CompiledRoute] = {}
        self.upstreams: dict[str, CompiledUpstream] = {}
        self.global_chain: Chain = EMPTY_CHAIN
        self.consumers = ConsumerIndex()
        self.certs = CertTable()
        self.inline_upstreams: dict[bytes, CompiledUpstream] = {}
        # Route chains merged with a consumer's plugins, built on first use per version pair.
        self.consumer_chains: dict[tuple[str, tuple[int, int, int], str, int], Chain] = {}
        self.revision = 0


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
        self.runtime = Runtime(build_router(self.kind, [], delete_uri_tail_slash=self.tail_slash))
        self.runtime_global: Chain = EMPTY_CHAIN
        keyring = settings.conf.apisix.data_encryption.keyring
        self.cipher = KeyCipher(keyring) if keyring else None
        # Fail closed: a chain naming a plugin this worker cannot run answers 503 (the Chain's
        # refusal), unless tollway.unknown_plugins is "skip" (APISIX: served without it).
        self.refuse_unknown = settings.conf.tollway.unknown_plugins == "refuse"
        self._refusals_logged: set[tuple[str, Any, Any]] = set()  # (key, versions, refusal)

    # -- full build -----------------------------------------------------------------------

    async def rebuild(self, store: Store) -> Runtime:
        import asyncio

        upstreams = {
            i: self._upstream(f"/apisix/upstreams/{i}", it.mod_revision, it.obj)
            for i, it in store["upstreams"].items.items()
        }
        self.runtime_global = self._global_chain(store)
        builder = RouterBuilder(self.kind, delete_uri_tail_slash=self.tail_slash)
        routes: dict[str, CompiledRoute] = {}
        chunk: list[RouteSpec] = []
        for rid, item in store["routes"].items.items():
            cr, spec = self._route(store, rid, item.obj, item.mod_revision)
            routes[rid] = cr
            if spec is not None:
                chunk.append(spec)
            if len(chunk) >= self.CHUNK:
                builder.add_many(chunk)  # with the GC paused: 100k routes in ~0.7 s, not 2.7 s
                chunk = []
                await asyncio.sleep(0)  # let requests run between chunks
        builder.add_many(chunk)
        rt = Runtime(builder.finish())
        rt.routes = routes
        rt.upstreams = upstreams
        rt.global_chain = self.runtime_global
        rt.consumers = self._consumers(store)
        rt.certs = self._certs(store)
        rt.revision = store.revision
        self._plugin_metadata(store, None)
        self.runtime = rt
        return rt

    def _plugin_metadata(self, store: Store, names: set[str] | None) -> None:
        """Hand each plugin its ``plugin_metadata`` item (APISIX ``plugin.plugin_metadata``)."""
        items = store["plugin_metadata"]
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
            plugin.set_metadata(decoded)

    # -- incremental ----------------------------------------------------------------------

    def apply(self, store: Store, changes: Iterable[tuple[str, str, str]]) -> None:
        rt = self.runtime
        # Ordered as the changes came, which is the store's order for new keys (the tie-break
        # among equal priorities); existing routes keep their place in the router.
        route_ids: dict[str, None] = {}
        consumers_changed = False
        globals_changed = False
        services: set[str] = set()
        pconfs: set[str] = set()
        for kind, item_id, _key in changes:
            if kind == "routes":
                route_ids[item_id] = None
            elif kind == "services":
                services.add(item_id)
            elif kind == "plugin_configs":
                pconfs.add(item_id)
            elif kind == "upstreams":
                it = store["upstreams"].get(item_id)
                if it is None:
                    rt.upstreams.pop(item_id, None)
                else:
                    rt.upstreams[item_id] = self._upstream(
                        f"/apisix/upstreams/{item_id}", it.mod_revision, it.obj
                    )
            elif kind == "global_rules":
                globals_changed = True
            elif kind in ("consumers", "credentials", "consumer_groups"):
                consumers_changed = True
            elif kind == "ssls":
                rt.certs = self._certs(store)
            elif kind == "plugin_metadata":
                self._plugin_metadata(store, {item_id})
        if globals_changed:
            rt.global_chain = self.runtime_global = self._global_chain(store)
            for cr in rt.routes.values():
                cr.chain = cr.own_chain.under(rt.global_chain)
            rt.consumer_chains = {}
        if consumers_changed:
            rt.consumers = self._consumers(store)
            rt.consumer_chains = {}
        if services or pconfs:
            for rid, item in store["routes"].items.items():
                r: Route = item.obj
                if (r.service_id is not None and str(r.service_id) in services) or (
                    r.plugin_config_id is not None and str(r.plugin_config_id) in pconfs
                ):
                    route_ids[rid] = None
        upserts: list[RouteSpec] = []
        deletes: list[str] = []
        for rid in route_ids:
            it = store["routes"].get(rid)
            if it is None:
                rt.routes.pop(rid, None)
                deletes.append(rid)
                continue
            cr, spec = self._route(store, rid, it.obj, it.mod_revision)
            rt.routes[rid] = cr
            if spec is None:
                deletes.append(rid)
            else:
                upserts.append(spec)
        if upserts or deletes:
            rt.router.update(upserts, deletes)
        if route_ids:
            # consumer chains merge a route's chain: rebuilt on demand (versions are 0 in
            # standalone mode, so a key on them alone would keep a stale chain)
            rt.consumer_chains = {}
        rt.revision = store.revision

    # -- pieces ---------------------------------------------------------------------------

    # -- upstreams chosen by plugins (RequestContext.set_upstream) ----------------------

    def upstream_by_id(self, upstream_id: str) -> CompiledUpstream | None:
        return self.runtime.upstreams.get(str(upstream_id))

    def inline_upstream(self, conf: Any) -> CompiledUpstream | None:
        """An inline upstream conf compiled once (keyed by its JSON) and kept per runtime."""
        import msgspec

        from tollway.model import decode_item

        try:
            raw = msgspec.json.encode(conf)
        except (TypeError, msgspec.EncodeError):
            return None
        cache = self.runtime.inline_upstreams
        up = cache.get(raw)
        if up is None:
            try:
                decoded = decode_item("upstreams", msgspec.json.decode(raw))
            except ConfigError:
                return None
            if len(cache) > 1000:
                cache.clear()
            up = cache[raw] = self._upstream(f"/tollway/inline/{len(cache)}", 0, decoded)
        return up

    def _upstream(self, key: str, version: int, conf: Upstream) -> CompiledUpstream:
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

    # -- DNS ------------------------------------------------------------------------------

    def apply_dns(self, names: Mapping[str, Sequence[str]]) -> int:
        """New answers for some domains: recompile the upstreams that use them (synchronously,
        like ``apply``). Returns how many were recompiled."""
        changed = set()
        for name, ips in names.items():
            answer = tuple(ips)
            if self.dns.get(name) != answer:
                self.dns[name] = answer
                changed.add(name)
        if not changed:
            return 0
        rt = self.runtime
        n = 0
        for uid, up in list(rt.upstreams.items()):
            if up.names & changed:
                rt.upstreams[uid] = self._upstream(up.key, up.version, up.conf)
                n += 1
        for cr in rt.routes.values():
            inline = cr.upstream
            if inline is not None and inline.names & changed:
                cr.upstream = self._upstream(inline.key, inline.version, inline.conf)
                n += 1
        return n

    def _certs(self, store: Store) -> CertTable:
        return build_cert_table(((i, it.obj) for i, it in store["ssls"].items.items()), self.cipher)

    def _consumers(self, store: Store) -> ConsumerIndex:
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
                {n: v for n, v in (c.plugins or {}).items() if self._merged_on_routes(n)},
                str(c.group_id) if c.group_id is not None else None,
                c.labels,
                it.mod_revision,
            )
        for username, auth_plugins, consumer, version, credential_id in sources:
            own = {n: c for n, c in (consumer.plugins or {}).items() if self._merged_on_routes(n)}
            for name, conf in auth_plugins.items():
                plugin = self.registry.get(name)
                if plugin is None or plugin.type != "auth" or not plugin.consumer_key_field:
                    continue
                try:
                    decoded = self.registry.decode_conf(name, conf, consumer=True)
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

    def _merged_on_routes(self, name: str) -> bool:
        """A consumer plugin that joins the routes' chains: not an auth plugin (those identify
        the consumer). One this gateway cannot run joins too, so that the requests of that
        consumer are refused rather than served without it: an unknown plugin may not be an
        auth plugin."""
        plugin = self.registry.get(name)
        return plugin is None or plugin.type != "auth"

    def consumer_chain(self, route: CompiledRoute, consumer: Consumer) -> Chain:
        """The route's chain with consumer-group then consumer plugins on top (APISIX
        merge_consumer_route: consumer > consumer_group > route)."""
        rt = self.runtime
        key = (route.id, route.versions, consumer.username, consumer.version)
        chain = rt.consumer_chains.get(key)
        if chain is None:
            merged = dict(route.plugins)
            if consumer.group_id is not None:
                merged.update(rt.consumers.groups.get(consumer.group_id, {}))
            merged.update(consumer.plugins)
            chain = self._chain(merged).under(rt.global_chain)
            if len(rt.consumer_chains) > 10000:
                rt.consumer_chains.clear()
            rt.consumer_chains[key] = chain
        return chain

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
        chain = self._chain(merged)
        versions = tuple(it.mod_revision for it in store["global_rules"].items.values())
        self._log_refusal("global rules", versions, chain)
        return chain

    def _chain(self, plugins: Mapping[str, Any] | None) -> Chain:
        return self.registry.build_chain(plugins, refuse_unknown=self.refuse_unknown)

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

    def _route(
        self, store: Store, rid: str, route: Route, version: int
    ) -> tuple[CompiledRoute, RouteSpec | None]:
        cr = CompiledRoute()
        cr.id = rid
        cr.key = f"/apisix/routes/{rid}"
        cr.name = route.name
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
        cr.plugins = plugins
        cr.own_chain = self._chain(plugins)
        cr.chain = cr.own_chain.under(self.runtime_global)
        cr.timeouts = Timeouts.of(route.timeout) if route.timeout is not None else None
        ws = route.enable_websocket
        if ws is None and service is not None:
            ws = service.enable_websocket
        cr.enable_websocket = bool(ws)
        # upstream_id wins over an inline upstream; the route's choice wins over the service's.
        if route.upstream_id is not None:
            cr.upstream_id = str(route.upstream_id)
        elif route.upstream is not None:
            cr.upstream = self._upstream(cr.key, version, route.upstream)
        elif service is not None and service.upstream_id is not None:
            cr.upstream_id = str(service.upstream_id)
        elif service is not None and service.upstream is not None:
            cr.upstream = self._upstream(
                f"/apisix/services/{cr.service_id}", svc_version, service.upstream
            )
        # what the route's chain was built from: consumer chains built on it are keyed by this
        cr.versions = (version, svc_version, pc_version)
        self._log_refusal(cr.key, cr.versions, cr.own_chain)
        hosts = route.host_list()
        if hosts is None and service is not None:
            hosts = service.hosts
        spec = RouteSpec(
            id=rid,
            uris=tuple([route.uri] if route.uri is not None else route.uris or []),
            priority=route.priority,
            # A disabled route stays in the router, matching nothing, so that enabling it again
            # gives it back its place among equal priorities (APISIX keeps it in its values).
            methods=DISABLED
            if route.status == 0
            else (frozenset(route.methods) if route.methods else None),
            hosts=tuple(h.lower() for h in hosts) if hosts else None,
            remote_addrs=tuple(
                [route.remote_addr] if route.remote_addr else route.remote_addrs or []
            )
            or None,
            vars=route.vars or None,
            payload=cr,
        )
        return cr, spec
