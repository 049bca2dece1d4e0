"""The compiled values a request reads: upstreams, routes, and the ``Runtime`` that holds them.

Every object here is immutable once the Compiler has published it: a request reads the current
``Runtime`` once, at its start, and uses that object and what it references to its end, even
across awaits (an async plugin, a body read) while newer change batches are applied. A change
batch makes a new ``Runtime`` that shares every unchanged part with the previous one (structural
sharing) and is published by one reference swap (``Compiler.runtime``).

Two parts are shared on purpose and documented where they live: the router is updated in place in
one synchronous step (a request matches once, right after reading the runtime, so it never sees
two routers); the memo tables (``inline_upstreams``, ``consumer_chains``) are caches of pure
functions of the runtime they belong to.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Protocol

import msgspec

from tollway.balancer import BalancerState, Picker, Server, create_picker, default_retries
from tollway.errors import ConfigError
from tollway.model import Timeout, Upstream, decode_item
from tollway.plugins.kit import Consumer
from tollway.plugins.registry import EMPTY_CHAIN, Chain, ChainEntry
from tollway.protos import CompiledProto
from tollway.router import Router
from tollway.runtime.certs import CertTable
from tollway.runtime.consumers import ConsumerIndex
from tollway.upstream.nodes import expand
from tollway.upstream.pool import PoolLimits
from tollway.upstream.table import HealthTable, PassiveReporter

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
        "__weakref__",  # interned by the Compiler in a WeakValueDictionary
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
        "single_fast",
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
        # What the fast path (proxy.attempt.forward) needs of a single node, built at its first
        # request (``fast_single``; not for upstreams that serve none: issue #17's memory).
        self.single_fast: tuple[tuple[object, str, int], str] | None = None

    def fast_single(self) -> tuple[tuple[object, str, int], str] | None:
        """A single node's pool key and the name its Host and SNI use (the domain of a resolved
        node), kept in ``single_fast``; None with more than one node."""
        single = self.single
        if single is None:
            return None
        name = self.node_hosts.get(single.addr, single.host) if self.node_hosts else single.host
        fast = self.single_fast = ((self.pool_key, single.host, single.port), name)
        return fast


def _ssl_context(conf: Upstream) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    verify = conf.tls.verify if conf.tls is not None else False
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if conf.scheme == "grpcs":
        ctx.set_alpn_protocols(["h2"])  # gRPC is HTTP/2 only (RFC 9113 3.2)
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


# The merged plugin confs of a route without plugins: one shared, read-only mapping.
NO_PLUGINS: Mapping[str, Any] = MappingProxyType({})


class CompiledRoute:
    """A route merged with its service and plugin config: what a matched request uses.

    Memory (issue #17): most routes have no plugins, service, timeouts, websocket or error to
    answer; they are this class, with 8 slots, whose other fields are the class attributes
    below. A route with any of those is a :class:`FullRoute` (every field a slot). The Compiler
    fills a ``FullRoute`` and keeps its ``compact()`` form.
    """

    __slots__ = ("chain", "hosts", "id", "name", "upstream", "upstream_id", "uri", "versions")

    # The rare fields (slots of FullRoute); see FullRoute.__init__.
    service_id: str | None = None
    own_chain: Chain = EMPTY_CHAIN
    plugins: Mapping[str, Any] = NO_PLUGINS
    timeouts: Timeouts | None = None
    enable_websocket: bool = False
    error: int = 0

    def __init__(self) -> None:
        self.id = ""
        self.name: str | None = None
        # What a request reads of the route's match conditions (``ctx.matched_uri``, its first
        # uri; ``ctx.route_hosts``): the router keeps no RouteSpec (issue #17).
        self.uri: str | None = None
        self.hosts: tuple[str, ...] | None = None
        self.chain: Chain = EMPTY_CHAIN  # own_chain with the global rules' response phases
        self.upstream: CompiledUpstream | None = None
        self.upstream_id: str | None = None
        # (route, service, plugin config) versions, or the route's alone without the others
        self.versions: tuple[int, int, int] | int = 0

    @property
    def key(self) -> str:
        """Its APISIX key, ``/apisix/routes/<id>`` (derived: one string less per route)."""
        return "/apisix/routes/" + self.id

    def compact(self) -> CompiledRoute:
        """This route in the smallest class that holds it (itself, or a CompiledRoute copy)."""
        if (
            type(self) is CompiledRoute
            or self.service_id is not None
            or self.own_chain is not EMPTY_CHAIN
            or self.plugins is not NO_PLUGINS
            or self.timeouts is not None
            or self.enable_websocket
            or self.error
        ):
            return self
        new = CompiledRoute.__new__(CompiledRoute)
        new.chain = self.chain
        new.hosts = self.hosts
        new.id = self.id
        new.name = self.name
        new.upstream = self.upstream
        new.upstream_id = self.upstream_id
        new.uri = self.uri
        new.versions = self.versions
        return new

    def evolve(self, **changes: Any) -> CompiledRoute:
        """A copy with ``changes``: a published route is never modified (requests hold it)."""
        new = FullRoute()
        for name in _FIELDS:
            setattr(new, name, changes.get(name, getattr(self, name)))
        return new.compact()


# The rare fields (their defaults are CompiledRoute's class attributes; ``compact`` checks each).
_RARE = ("enable_websocket", "error", "own_chain", "plugins", "service_id", "timeouts")
_FIELDS = CompiledRoute.__slots__ + _RARE


class FullRoute(CompiledRoute):
    """A compiled route with every field a slot."""

    __slots__ = _RARE

    def __init__(self) -> None:
        super().__init__()
        self.service_id = None
        self.own_chain = EMPTY_CHAIN  # the route's own plugins (with service/config)
        self.plugins = NO_PLUGINS  # merged raw confs (for consumer merges)
        self.timeouts = None
        self.enable_websocket = False
        self.error = 0  # a status to answer with (missing service / plugin config)


class Builder(Protocol):
    """What a runtime asks of its Compiler to build, on first use, what it memoises."""

    def compile_upstream(self, key: str, version: int, conf: Upstream) -> CompiledUpstream: ...
    def chain(
        self, plugins: Mapping[str, Any] | None, known: Mapping[str, tuple[Any, Any]] | None = None
    ) -> Chain: ...


_INLINE_LIMIT = 1000  # inline upstreams (plugin-chosen) memoised per runtime
_CONSUMER_CHAIN_LIMIT = 10000


@dataclass(frozen=True, slots=True, eq=False)
class Runtime:
    """What each request reads once. Never modified after the Compiler published it."""

    builder: Builder
    router: Router
    upstreams: Mapping[str, CompiledUpstream] = field(default_factory=dict)
    global_chain: Chain = EMPTY_CHAIN
    consumers: ConsumerIndex = field(default_factory=ConsumerIndex)
    certs: CertTable = field(default_factory=CertTable)
    # protos by id, each compiled once per content (grpc-transcode reads them)
    protos: Mapping[str, CompiledProto] = field(default_factory=dict)
    revision: int = 0
    # plugin name -> its decoded plugin_metadata (absent: none, or invalid)
    plugin_metadata: Mapping[str, Any] = field(default_factory=dict)
    # Memo tables (pure functions of this runtime; see the module docstring).
    inline_upstreams: dict[bytes, CompiledUpstream] = field(default_factory=dict)
    # Route chains merged with a consumer's plugins (and the rewrite entries they add),
    # built on first use per (route, consumer) object pair.
    consumer_chains: dict[tuple[CompiledRoute, Consumer], tuple[Chain, tuple[ChainEntry, ...]]] = (
        field(default_factory=dict)
    )

    def evolve(self, **changes: Any) -> Runtime:
        """The next runtime: ``changes`` replaced, every other part shared."""
        return replace(self, **changes)

    # -- upstreams chosen by plugins (RequestContext.set_upstream) ----------------------

    def upstream_by_id(self, upstream_id: str) -> CompiledUpstream | None:
        return self.upstreams.get(str(upstream_id))

    def inline_upstream(self, conf: Any) -> CompiledUpstream | None:
        """An inline upstream conf compiled once (keyed by its JSON) and kept per runtime."""
        try:
            raw = msgspec.json.encode(conf)
        except (TypeError, msgspec.EncodeError):
            return None
        cache = self.inline_upstreams
        up = cache.get(raw)
        if up is None:
            try:
                decoded = decode_item("upstreams", msgspec.json.decode(raw))
            except ConfigError:
                return None
            if len(cache) > _INLINE_LIMIT:
                cache.clear()
            key = f"/tollway/inline/{len(cache)}"
            up = cache[raw] = self.builder.compile_upstream(key, 0, decoded)
        return up

    def proto_by_id(self, proto_id: str) -> CompiledProto | None:
        return self.protos.get(proto_id)

    # -- consumers ------------------------------------------------------------------------

    def consumer_chain(self, route: CompiledRoute, consumer: Consumer) -> Chain:
        """The route's chain with consumer-group then consumer plugins on top (APISIX
        merge_consumer_route: consumer > consumer_group > route)."""
        return self.consumer_phases(route, consumer)[0]

    def consumer_phases(
        self, route: CompiledRoute, consumer: Consumer
    ) -> tuple[Chain, tuple[ChainEntry, ...]]:
        """(``consumer_chain``, the rewrite entries it adds to the route's: they run once the
        consumer is known, APISIX rewrite_in_consumer), built once per route and consumer
        version (both are immutable once published, so the pair is the key). A consumer
        bringing no plugin leaves the route's chain as it is (APISIX returns the route conf
        unchanged)."""
        key = (route, consumer)
        chains = self.consumer_chains
        hit = chains.get(key)
        if hit is not None:
            return hit
        gid = consumer.group_id
        group = self.consumers.groups.get(gid) if gid is not None else None
        if not consumer.plugins and not group:
            hit = (route.chain, ())
        else:
            merged = dict(route.plugins)
            merged.update(group or {})
            merged.update(consumer.plugins)
            # The route's own confs keep their decoded objects (limit-* count per owner conf).
            own = {
                e.plugin.name: (route.plugins.get(e.plugin.name), e.conf)
                for entries in _phases(route.own_chain)
                for e in entries
            }
            chain = self.builder.chain(merged, own).under(self.global_chain)
            base = route.chain.rewrite
            added = tuple(e for e in chain.rewrite if e.plugin.type != "auth" and e not in base)
            hit = (chain, added)
        if len(chains) > _CONSUMER_CHAIN_LIMIT:
            chains.clear()
        chains[key] = hit
        return hit


def _phases(chain: Chain) -> tuple[tuple[ChainEntry, ...], ...]:
    return (
        chain.rewrite,
        chain.access,
        chain.before_proxy,
        chain.header_filter,
        chain.body_filter,
        chain.log,
    )
