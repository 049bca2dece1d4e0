"""The plugin registry and per-route plugin chains (compiled once per config version)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint
from typing import Any

import msgspec

from tollway.errors import ConfigError
from tollway.model.messages import jsonschema_message
from tollway.plugins.kit import PHASES, Plugin

log = logging.getLogger("tollway.plugins")

GROUP = "tollway.plugins"
# The built-in plugins' entry points as pyproject.toml declares them, in the same order. Used
# for those the installed distribution's metadata lacks (an editable install made before the
# entry was added); a unit test keeps this equal to pyproject.toml.
BUILTIN_ENTRY_POINTS: tuple[tuple[str, str], ...] = (
    ("proxy-rewrite", "tollway.plugins.builtin.proxy_rewrite:ProxyRewrite"),
    ("response-rewrite", "tollway.plugins.builtin.response_rewrite:ResponseRewrite"),
    ("key-auth", "tollway.plugins.builtin.key_auth:KeyAuth"),
    ("limit-count", "tollway.plugins.builtin.limit_count:LimitCount"),
    ("cors", "tollway.plugins.builtin.cors:Cors"),
    ("basic-auth", "tollway.plugins.builtin.basic_auth:BasicAuth"),
    ("jwt-auth", "tollway.plugins.builtin.jwt_auth:JwtAuth"),
    ("consumer-restriction", "tollway.plugins.builtin.consumer_restriction:ConsumerRestriction"),
    ("ip-restriction", "tollway.plugins.builtin.ip_restriction:IpRestriction"),
    ("limit-req", "tollway.plugins.builtin.limit_req:LimitReq"),
    ("limit-conn", "tollway.plugins.builtin.limit_conn:LimitConn"),
    ("request-id", "tollway.plugins.builtin.request_id:RequestId"),
    ("real-ip", "tollway.plugins.builtin.real_ip:RealIp"),
    ("redirect", "tollway.plugins.builtin.redirect:Redirect"),
    ("fault-injection", "tollway.plugins.builtin.fault_injection:FaultInjection"),
    ("uri-blocker", "tollway.plugins.builtin.uri_blocker:UriBlocker"),
    ("ua-restriction", "tollway.plugins.builtin.ua_restriction:UaRestriction"),
    ("referer-restriction", "tollway.plugins.builtin.referer_restriction:RefererRestriction"),
    ("gzip", "tollway.plugins.builtin.gzip_compress:Gzip"),
    ("api-breaker", "tollway.plugins.builtin.api_breaker:ApiBreaker"),
    ("traffic-split", "tollway.plugins.builtin.traffic_split:TrafficSplit"),
    ("proxy-mirror", "tollway.plugins.builtin.proxy_mirror:ProxyMirror"),
    ("hmac-auth", "tollway.plugins.builtin.hmac_auth:HmacAuth"),
    ("http-logger", "tollway.plugins.builtin.http_logger:HttpLogger"),
    ("prometheus", "tollway.plugins.builtin.prometheus:Prometheus"),
    ("serverless-pre-function", "tollway.plugins.builtin.accept_only:ServerlessPreFunction"),
    ("serverless-post-function", "tollway.plugins.builtin.accept_only:ServerlessPostFunction"),
    ("opentelemetry", "tollway.plugins.builtin.opentelemetry:OpenTelemetry"),
    ("zipkin", "tollway.plugins.builtin.zipkin:Zipkin"),
    ("tcp-logger", "tollway.plugins.builtin.tcp_logger:TcpLogger"),
    ("udp-logger", "tollway.plugins.builtin.udp_logger:UdpLogger"),
    ("syslog", "tollway.plugins.builtin.syslog:Syslog"),
    ("file-logger", "tollway.plugins.builtin.file_logger:FileLogger"),
    ("loki-logger", "tollway.plugins.builtin.loki_logger:LokiLogger"),
    ("elasticsearch-logger", "tollway.plugins.builtin.elasticsearch_logger:ElasticsearchLogger"),
    ("clickhouse-logger", "tollway.plugins.builtin.clickhouse_logger:ClickhouseLogger"),
    ("kafka-logger", "tollway.plugins.builtin.kafka_logger:KafkaLogger"),
    ("grpc-transcode", "tollway.plugins.builtin.grpc_transcode:GrpcTranscode"),
    ("grpc-web", "tollway.plugins.builtin.grpc_web:GrpcWeb"),
)


@dataclass(frozen=True, slots=True)
class ChainEntry:
    plugin: Plugin
    conf: Any
    is_async: bool
    fn: Any  # the plugin's bound method for this phase
    filter: Any = None  # compiled _meta.filter expression, or None
    error_response: Any = None  # _meta.error_response


@dataclass(frozen=True, slots=True)
class Chain:
    """Per-phase lists of (plugin, decoded conf), sorted by priority desc."""

    rewrite: tuple[ChainEntry, ...] = ()
    access: tuple[ChainEntry, ...] = ()
    before_proxy: tuple[ChainEntry, ...] = ()
    header_filter: tuple[ChainEntry, ...] = ()
    body_filter: tuple[ChainEntry, ...] = ()
    log: tuple[ChainEntry, ...] = ()
    names: frozenset[str] = field(default_factory=frozenset)
    buffers_body: bool = False
    # Set when the chain names plugins the gateway cannot run: its only request-phase entry
    # then answers 503 (fail closed), decided here, once, not per request.
    refusal: Refusal | None = None
    # The global rules' chain this one runs under (``under``): their rewrite and access
    # entries run first (APISIX runs a global rule's phase before the route's).
    outer: Chain | None = None
    # What the request phases run, in order, decided here once: the rewrite entries (the
    # global rules' first), then (once a consumer is known) the access entries (the global
    # rules' first); ``requests`` is False when a request has no request-phase entry at all.
    pre: tuple[ChainEntry, ...] = field(init=False, default=())
    main: tuple[ChainEntry, ...] = field(init=False, default=())
    requests: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        outer = self.outer
        pre = outer.rewrite + self.rewrite if outer is not None else self.rewrite
        main = outer.access + self.access if outer is not None else self.access
        object.__setattr__(self, "pre", pre)
        object.__setattr__(self, "main", main)
        object.__setattr__(self, "requests", bool(pre or main or self.before_proxy))

    def under(self, outer: Chain) -> Chain:
        """This chain with ``outer``'s (the global rules') phases run first, as APISIX runs
        global rules before route plugins: their rewrite and access entries (``pre``,
        ``main``), header_filter, body_filter and log. A ``prefer_route`` plugin the route
        configures too runs once in the response phases, with the route's conf."""
        if not (
            outer.rewrite or outer.access or outer.header_filter or outer.body_filter or outer.log
        ):
            return self

        def keep(entries: tuple[ChainEntry, ...]) -> tuple[ChainEntry, ...]:
            return tuple(
                e
                for e in entries
                if not (e.plugin.run_policy == "prefer_route" and e.plugin.name in self.names)
            )

        return dataclasses.replace(
            self,
            header_filter=keep(outer.header_filter) + self.header_filter,
            body_filter=keep(outer.body_filter) + self.body_filter,
            log=keep(outer.log) + self.log,
            buffers_body=self.buffers_body or outer.buffers_body,
            outer=outer,
        )


EMPTY_CHAIN = Chain()


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a chain refuses its requests: plugins it names that this gateway cannot run."""

    unknown: tuple[str, ...]  # not installed, or not in config.yaml's ``plugins``
    invalid: tuple[str, ...]  # known, but the conf does not pass its schema here
    body: bytes  # the 503's JSON body, encoded once

    @staticmethod
    def of(unknown: Iterable[str], invalid: Iterable[str]) -> Refusal:
        u, i = tuple(sorted(unknown)), tuple(sorted(invalid))
        parts = []
        if u:
            parts.append(f"{_named(u)} {'is' if len(u) == 1 else 'are'} unknown or not enabled")
        if i:
            parts.append(f"{_named(i)} {'has' if len(i) == 1 else 'have'} an invalid configuration")
        msg = "; ".join(parts) + " on this gateway: the request is refused rather than served"
        msg += " without it" if len(u) + len(i) == 1 else " without them"
        return Refusal(u, i, json.dumps({"error_msg": msg}).encode() + b"\n")


def _named(names: tuple[str, ...]) -> str:
    return f"plugin [{names[0]}]" if len(names) == 1 else f"plugins [{', '.join(names)}]"


class _Refuse(Plugin):
    """The one request-phase entry of a refusing chain: 503 with the Refusal's body. Runs in
    rewrite, so no other plugin of the chain (auth included) runs first; a global rule's
    refusal runs before any route's plugin, for matched and unmatched requests alike."""

    name = "tollway-refuse"

    def rewrite(self, conf: Any, ctx: Any) -> Any:
        return 503, conf, _JSON


_JSON = {"Content-Type": "application/json"}
_REFUSE = _Refuse()


def refusing_chain(refusal: Refusal) -> Chain:
    entry = ChainEntry(_REFUSE, refusal.body, False, _REFUSE.rewrite)
    return Chain(rewrite=(entry,), refusal=refusal)


class Registry:
    def __init__(self, plugins: Iterable[Plugin]) -> None:
        self.plugins: dict[str, Plugin] = {p.name: p for p in plugins}

    def get(self, name: str) -> Plugin | None:
        return self.plugins.get(name)

    def names_by_priority(self) -> list[str]:
        return [p.name for p in sorted(self.plugins.values(), key=lambda p: -p.priority)]

    def decode_conf(self, name: str, conf: Mapping[str, Any], *, consumer: bool = False) -> Any:
        """Validate one plugin conf; ConfigError carries APISIX's message."""
        plugin = self.plugins.get(name)
        if plugin is None:
            raise ConfigError(f"unknown plugin [{name}]")
        if not isinstance(conf, Mapping):
            shown = json.dumps(conf, ensure_ascii=False, separators=(",", ":"))
            raise ConfigError(
                f"invalid plugins configuration: invalid plugin conf {shown} for plugin [{name}]"
            )
        body = {k: v for k, v in conf.items() if k != "_meta"}
        schema = plugin.consumer_schema if consumer and plugin.consumer_schema else plugin.schema
        try:
            decoded = msgspec.convert(body, schema) if schema is not None else body
            plugin.check(decoded)
        except msgspec.ValidationError as e:
            raise ConfigError(
                f"failed to check the configuration of plugin {name} err: "
                f"{jsonschema_message(e, body, schema)}"
            ) from None
        except ValueError as err:
            raise ConfigError(
                f"failed to check the configuration of plugin {name} err: {err}"
            ) from None
        if "_meta" in conf:
            _check_meta(name, conf["_meta"])
        return decoded

    def check_plugins(self, plugins: Mapping[str, Any] | None) -> None:
        for name, conf in (plugins or {}).items():
            self.decode_conf(name, conf)

    def build_chain(
        self,
        plugins: Mapping[str, Any] | None,
        *,
        refuse_unknown: bool = True,
        known: Mapping[str, tuple[Any, Any]] | None = None,
    ) -> Chain:
        """Compile a chain. A plugin this registry lacks makes a refusing chain (fail closed),
        or is skipped with ``refuse_unknown=False`` (APISIX's way); a conf that does not decode
        (rejected before, unless this worker's plugins differ from the validator's) always
        makes a refusing chain. A plugin disabled by ``_meta.disable`` is left out either way.
        Logged at debug only: the config agent warns once per item version (tollway.checks),
        and consumer chains are built on the request path."""
        if not plugins:
            return EMPTY_CHAIN
        entries: list[tuple[int, Plugin, Any, Mapping[str, Any]]] = []
        unknown: list[str] = []
        invalid: list[str] = []
        for name, raw in plugins.items():
            meta = raw.get("_meta") if isinstance(raw, Mapping) else None
            meta = meta if isinstance(meta, Mapping) else {}
            if meta.get("disable"):
                continue
            plugin = self.plugins.get(name)
            if plugin is None:
                if refuse_unknown:
                    unknown.append(name)
                log.debug("plugin %s is unknown or not enabled", name)
                continue
            seen = known.get(name) if known is not None else None
            try:
                conf = (
                    seen[1] if seen is not None and seen[0] is raw else self.decode_conf(name, raw)
                )
            except ConfigError as e:
                invalid.append(name)
                log.debug("%s", e)
                continue
            prio = meta.get("priority", plugin.priority)
            entries.append((prio, plugin, conf, meta))
        if unknown or invalid:
            return refusing_chain(Refusal.of(unknown, invalid))
        entries.sort(key=lambda e: -e[0])
        phases: dict[str, list[ChainEntry]] = {p: [] for p in PHASES}
        buffers = False
        for _, plugin, conf, meta in entries:
            flt = _compile_filter(meta.get("filter"))
            for phase in PHASES:
                fn = getattr(type(plugin), phase)
                if fn is getattr(Plugin, phase):
                    continue
                bound = plugin.phase_method(phase, conf)
                if bound is None:
                    continue  # this conf does not need the phase
                phases[phase].append(
                    ChainEntry(
                        plugin,
                        conf,
                        inspect.iscoroutinefunction(bound),
                        bound,
                        flt,
                        meta.get("error_response"),
                    )
                )
            if plugin.needs_body_buffer(conf):
                buffers = True
        return Chain(
            rewrite=tuple(phases["rewrite"]),
            access=tuple(phases["access"]),
            before_proxy=tuple(phases["before_proxy"]),
            header_filter=tuple(phases["header_filter"]),
            body_filter=tuple(phases["body_filter"]),
            log=tuple(phases["log"]),
            names=frozenset(name for _, p, _, _ in entries for name in [p.name]),
            buffers_body=buffers,
        )


def _check_meta(name: str, meta: Any) -> None:
    if not isinstance(meta, Mapping):
        raise ConfigError(f"failed to check the configuration of plugin {name} err: invalid _meta")
    if "filter" in meta:
        try:
            _compile_filter(meta["filter"])
        except ValueError as e:
            raise ConfigError(
                f"failed to check the configuration of plugin {name} err: "
                f"failed to validate the 'vars' expression: {e}"
            ) from None


def _compile_filter(rule: Any) -> Any:
    if not rule:
        return None
    from tollway.expr import compile_expr

    return compile_expr(rule)


def plugin_entry_points() -> tuple[list[EntryPoint], list[EntryPoint]]:
    """(Tollway's own entry points, everyone else's) in the ``tollway.plugins`` group. Tollway's
    are completed from ``BUILTIN_ENTRY_POINTS`` when its installed metadata lacks some."""
    own: list[EntryPoint] = []
    others: list[EntryPoint] = []
    for ep in importlib.metadata.entry_points(group=GROUP):
        dist = ep.dist
        (own if dist is not None and dist.name == "tollway" else others).append(ep)
    have = {ep.name for ep in own}
    own += [EntryPoint(n, v, GROUP) for n, v in BUILTIN_ENTRY_POINTS if n not in have]
    return own, others


def load_registry(
    enabled: list[str] | None = None, plugin_attr: dict[str, Any] | None = None
) -> Registry:
    """The plugins registered under the ``tollway.plugins`` entry-point group: the built-ins
    (Tollway's own entries) first, then third-party ones, which replace a built-in of the same
    name. Each gets ``init(plugin_attr.<name>)`` once."""

    found: dict[str, Plugin] = {}
    builtin, others = plugin_entry_points()
    for ep in builtin:
        cls = ep.load()  # a built-in that does not load is a bug in Tollway: fail loudly
        found[cls.name] = cls()
    for ep in others:
        try:
            cls = ep.load()
            found[cls.name] = cls()
        except Exception:
            log.exception("failed to load plugin entry point %s", ep.name)
    if enabled is not None:
        missing = [n for n in enabled if n not in found]
        for n in missing:
            log.warning("plugin %s is listed in config.yaml but not installed", n)
        found = {n: p for n, p in found.items() if n in enabled}
    ready: list[Plugin] = []
    for name, plugin in found.items():
        attr = (plugin_attr or {}).get(name)
        try:
            plugin.init(attr if isinstance(attr, dict) else {})
        except Exception:
            log.exception("plugin %s failed to initialise; disabled", name)
            continue
        ready.append(plugin)
    return Registry(ready)
