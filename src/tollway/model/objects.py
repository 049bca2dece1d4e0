"""APISIX 3.x object schemas (apisix/schema_def.lua), as msgspec Structs.

Defaults here are the runtime defaults the data plane fills in memory; the Admin API stores the
body as given (APISIX >= 3.14 does not persist defaults).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from tollway.regex import RegexError, compile_regex

ID = (
    Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9-_.]+$")]
    | Annotated[int, Meta(ge=1)]
)
Name = Annotated[str, Meta(min_length=1, max_length=256)]
Desc = Annotated[str, Meta(max_length=256)]
Labels = dict[str, Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^\S+$")]]
# plugin name -> conf; a conf that is not an object is the plugin check's to refuse, with
# APISIX's words ("invalid plugin conf ... for plugin [x]"), not the schema's
Plugins = dict[str, Any]
Port = Annotated[int, Meta(ge=1, le=65535)]
HostPattern = Annotated[str, Meta(pattern=r"^\*$|^\*?[0-9a-zA-Z-._\[\]:]+$")]
Method = Literal[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE"
]
Positive = Annotated[float, Meta(gt=0)]

CHASH_VARS_KEY = re.compile(
    r"^((uri|server_name|server_addr|request_uri|remote_port|remote_addr|query_string|host"
    r"|hostname|mqtt_client_id)|arg_[0-9a-zA-z_-]+)$"
)
CHASH_HEADER_KEY = re.compile(r"^[a-zA-Z0-9-_]+$")


def _pattern_failed(pattern: re.Pattern[str], value: str) -> str:
    """check_upstream_conf's words for a chash key its schema refuses."""
    return f'invalid configuration: failed to match pattern "{pattern.pattern}" with "{value}"'


class Base(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True, omit_defaults=True):
    pass


class Stamped(Base, frozen=True, kw_only=True):
    """Every stored object: its id and the Admin API's timestamps."""

    id: ID | None = None
    create_time: int | None = None
    update_time: int | None = None


class Labelled(Stamped, frozen=True, kw_only=True):
    desc: Desc | None = None
    labels: Labels | None = None


class Named(Labelled, frozen=True, kw_only=True):
    """The common metadata of APISIX resources (routes, services, upstreams...)."""

    name: Name | None = None


def check_ip_or_cidr(value: str) -> None:
    try:
        if "/" in value:
            ipaddress.ip_network(value, strict=False)
        else:
            ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"invalid IP or CIDR: {value}") from None


# APISIX's route schema: anyOf these required pairs (Tollway also takes plugin_config_id).
_ROUTE_NEEDS = "object matches none of the required: " + " or ".join(
    f'["{a}","{b}"]'
    for a, b in (
        *((x, "uri") for x in ("plugins", "upstream", "upstream_id", "service_id")),
        *((x, "uris") for x in ("plugins", "upstream", "upstream_id", "service_id")),
        ("script", "uri"),
        ("script", "uris"),
    )
)


def _unique(field: str, items: list[Any]) -> None:
    """APISIX's ``uniqueItems`` message, with the 1-based positions of the first repeat."""
    seen: dict[Any, int] = {}
    for i, item in enumerate(items, 1):
        if item in seen:
            raise ValueError(
                f'property "{field}" validation failed: '
                f"expected unique items but items {seen[item]} and {i} are equal"
            )
        seen[item] = i


def _ip_field(field: str, values: list[str], single: bool) -> None:
    for i, addr in enumerate(values, 1):
        try:
            check_ip_or_cidr(addr)
        except ValueError:
            item = "" if single else f"failed to validate item {i}: "
            raise ValueError(
                f'property "{field}" validation failed: {item}object matches none of the required'
            ) from None


class Timeout(Base, frozen=True, kw_only=True):
    connect: Positive
    send: Positive
    read: Positive


class Node(Base, frozen=True, kw_only=True):
    host: Annotated[str, Meta(min_length=1, pattern=r"^\*?[0-9a-zA-Z-._\[\]:]+$")]  # host_def
    weight: Annotated[int, Meta(ge=0)]
    port: Port | None = None
    priority: int = 0
    metadata: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if ":" in self.host and not self.host.startswith("["):
            # APISIX: bare IPv6 hosts must be bracketed in array form.
            raise ValueError("IPv6 address must be enclosed with '[' and ']'")


class KeepalivePool(Base, frozen=True, kw_only=True):
    size: Annotated[int, Meta(ge=1)] = 320
    idle_timeout: Annotated[float, Meta(ge=0)] = 60.0
    requests: Annotated[int, Meta(ge=1)] = 1000


class UpstreamTLS(Base, frozen=True, kw_only=True):
    client_cert: Annotated[str, Meta(min_length=128, max_length=65536)] | None = None
    client_key: Annotated[str, Meta(min_length=64, max_length=65536)] | None = None
    client_cert_id: ID | None = None
    verify: bool = False

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key must be set together")
        if self.client_cert is not None and self.client_cert_id is not None:
            raise ValueError("client_cert and client_cert_id are mutually exclusive")


class ActiveHealthy(Base, frozen=True, kw_only=True):
    interval: Annotated[int, Meta(ge=1)] = 1
    http_statuses: list[Annotated[int, Meta(ge=200, le=599)]] = msgspec.field(
        default_factory=lambda: [200, 302]
    )
    successes: Annotated[int, Meta(ge=1, le=254)] = 2

    def __post_init__(self) -> None:
        _unique("http_statuses", self.http_statuses)  # uniqueItems (health-check.t TEST 7)


class ActiveUnhealthy(Base, frozen=True, kw_only=True):
    interval: Annotated[int, Meta(ge=1)] = 1
    http_statuses: list[Annotated[int, Meta(ge=200, le=599)]] = msgspec.field(
        default_factory=lambda: [429, 404, 500, 501, 502, 503, 504, 505]
    )
    http_failures: Annotated[int, Meta(ge=1, le=254)] = 5
    tcp_failures: Annotated[int, Meta(ge=1, le=254)] = 2
    timeouts: Annotated[int, Meta(ge=1, le=254)] = 3

    def __post_init__(self) -> None:
        _unique("http_statuses", self.http_statuses)  # uniqueItems (health-check.t TEST 7)


class ActiveCheck(Base, frozen=True, kw_only=True):
    type: Literal["http", "https", "tcp"] = "http"
    timeout: Annotated[float, Meta(ge=0)] = 1.0
    concurrency: Annotated[int, Meta(ge=1)] = 10
    host: str | None = None
    port: Port | None = None
    http_method: Literal["GET", "HEAD", "POST"] = "GET"
    http_path: str = "/"
    http_req_body: str = ""
    https_verify_certificate: bool = True
    req_headers: list[str] | None = None
    healthy: ActiveHealthy = msgspec.field(default_factory=ActiveHealthy)
    unhealthy: ActiveUnhealthy = msgspec.field(default_factory=ActiveUnhealthy)


class PassiveHealthy(Base, frozen=True, kw_only=True):
    http_statuses: list[Annotated[int, Meta(ge=200, le=599)]] = msgspec.field(
        default_factory=lambda: [*range(200, 209), 226, *range(300, 309)]
    )
    successes: Annotated[int, Meta(ge=0, le=254)] = 5

    def __post_init__(self) -> None:
        _unique("http_statuses", self.http_statuses)  # uniqueItems (health-check.t TEST 7)


class PassiveUnhealthy(Base, frozen=True, kw_only=True):
    http_statuses: list[Annotated[int, Meta(ge=200, le=599)]] = msgspec.field(
        default_factory=lambda: [429, 500, 503]
    )
    tcp_failures: Annotated[int, Meta(ge=0, le=254)] = 2
    timeouts: Annotated[int, Meta(ge=0, le=254)] = 7
    http_failures: Annotated[int, Meta(ge=0, le=254)] = 5

    def __post_init__(self) -> None:
        _unique("http_statuses", self.http_statuses)  # uniqueItems (health-check.t TEST 7)


class PassiveCheck(Base, frozen=True, kw_only=True):
    type: Literal["http", "https", "tcp"] = "http"
    healthy: PassiveHealthy = msgspec.field(default_factory=PassiveHealthy)
    unhealthy: PassiveUnhealthy = msgspec.field(default_factory=PassiveUnhealthy)


class HealthChecks(Base, frozen=True, kw_only=True):
    active: ActiveCheck | None = None
    passive: PassiveCheck | None = None

    def __post_init__(self) -> None:
        # APISIX: anyOf [active] / [active, passive]. Tollway also accepts passive-only checks
        # (nodes recover after a timeout, see upstream.health) - a documented deviation.
        if self.active is None and self.passive is None:
            raise ValueError("checks needs active or passive")


class Upstream(Named, frozen=True, kw_only=True):
    nodes: dict[str, Annotated[int, Meta(ge=0)]] | list[Node] | None = None
    service_name: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    discovery_type: str | None = None
    discovery_args: dict[str, Any] | None = None
    type: str = "roundrobin"
    hash_on: Literal["vars", "header", "cookie", "consumer", "vars_combinations"] = "vars"
    key: str | None = None
    retries: Annotated[int, Meta(ge=0)] | None = None
    retry_timeout: Annotated[float, Meta(ge=0)] | None = None
    timeout: Timeout | None = None
    scheme: Literal["http", "https", "grpc", "grpcs", "tcp", "tls", "udp", "kafka"] = "http"
    pass_host: Literal["pass", "node", "rewrite"] = "pass"
    upstream_host: str | None = None
    keepalive_pool: KeepalivePool | None = None
    tls: UpstreamTLS | None = None
    checks: HealthChecks | None = None

    def __post_init__(self) -> None:
        if self.nodes is None and not (self.service_name and self.discovery_type):
            raise ValueError("nodes or service_name+discovery_type is required")
        if isinstance(self.nodes, dict):
            for addr in self.nodes:
                _check_hash_node(addr)

    def check(self) -> None:
        """Checks APISIX applies after the schema (check_upstream_conf)."""
        if self.pass_host == "rewrite" and not self.upstream_host:
            raise ValueError("`upstream_host` can't be empty when `pass_host` is `rewrite`")
        if self.type == "chash":
            if self.hash_on != "consumer" and not self.key:
                raise ValueError("missing key")
            if self.key and self.hash_on == "vars" and not CHASH_VARS_KEY.match(self.key):
                raise ValueError(_pattern_failed(CHASH_VARS_KEY, self.key))
            if self.key and self.hash_on in ("header", "cookie"):
                if not CHASH_HEADER_KEY.match(self.key):
                    raise ValueError(_pattern_failed(CHASH_HEADER_KEY, self.key))

    def node_list(self) -> list[Node]:
        """Nodes in array form (APISIX's filter_upstream converts the hash form)."""
        if self.nodes is None:
            return []
        if isinstance(self.nodes, list):
            return self.nodes
        out: list[Node] = []
        for addr, weight in self.nodes.items():
            host, port = split_host_port(addr)
            out.append(Node(host=host, port=port, weight=weight))
        return out


@functools.lru_cache(maxsize=4096)  # 100k routes name the same few nodes: parse each once
def split_host_port(addr: str) -> tuple[str, int | None]:
    """'1.2.3.4:80' -> ('1.2.3.4', 80); '[::1]:80' -> ('[::1]', 80); 'a.com' -> ('a.com', None)."""
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0:
            raise ValueError(f"invalid node address: {addr}")
        host, rest = addr[: end + 1], addr[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"invalid node address: {addr}")
        return host, _parse_port(rest[1:], addr)
    if addr.count(":") > 1:
        raise ValueError("IPv6 address must be enclosed with '[' and ']'")
    host, sep, port = addr.partition(":")
    if not host:
        raise ValueError(f"invalid node address: {addr}")
    return host, (_parse_port(port, addr) if sep else None)


def _parse_port(text: str, addr: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"invalid port in node address: {addr}")
    return int(text)


def _check_hash_node(addr: str) -> None:
    split_host_port(addr)


class Route(Named, frozen=True, kw_only=True):
    uri: Annotated[str, Meta(min_length=1, max_length=4096)] | None = None
    uris: (
        Annotated[list[Annotated[str, Meta(min_length=1, max_length=4096)]], Meta(min_length=1)]
        | None
    ) = None
    methods: list[Method] | None = None
    host: HostPattern | None = None
    hosts: Annotated[list[HostPattern], Meta(min_length=1)] | None = None
    remote_addr: str | None = None
    remote_addrs: Annotated[list[str], Meta(min_length=1)] | None = None
    vars: list[Any] | None = None
    filter_func: Annotated[str, Meta(min_length=10, pattern=r"^function")] | None = None
    priority: int = 0
    status: Literal[0, 1] = 1
    plugins: Plugins | None = None
    plugin_config_id: ID | None = None
    upstream: Upstream | None = None
    upstream_id: ID | None = None
    service_id: ID | None = None
    timeout: Timeout | None = None
    enable_websocket: bool | None = None
    script: Annotated[str, Meta(min_length=10, max_length=102400)] | None = None
    script_id: ID | None = None
    service_protocol: Literal["grpc", "http"] | None = None

    def __post_init__(self) -> None:
        # APISIX's route schema: allOf[1] is oneOf({required: uri}, {required: uris}).
        if self.uri is None and self.uris is None:
            raise ValueError("allOf 1 failed: value should match only one schema, but matches none")
        if self.uri is not None and self.uris is not None:
            raise ValueError(
                "allOf 1 failed: value should match only one schema, "
                "but matches both schemas 1 and 2"
            )
        if self.uris is not None:
            _unique("uris", self.uris)
        if self.methods is not None:
            _unique("methods", self.methods)
        if (
            self.plugins is None
            and self.upstream is None
            and self.upstream_id is None
            and self.service_id is None
            and self.plugin_config_id is None
            and self.script is None
        ):
            raise ValueError(_ROUTE_NEEDS)
        if self.script is not None and (self.plugins is not None or self.plugin_config_id):
            raise ValueError('"script" cannot be used with "plugins" or "plugin_config_id"')
        if self.remote_addr:
            _ip_field("remote_addr", [self.remote_addr], single=True)
        elif self.remote_addrs:
            _ip_field("remote_addrs", self.remote_addrs, single=False)

    def host_list(self) -> list[str] | None:
        if self.host is not None:
            return [self.host]
        return self.hosts


class LeanRoute(Route, frozen=True, kw_only=True):
    """A route as a worker decodes it to compile it (issue #17): the supervisor validated the
    whole item, and its inline upstream stays raw JSON, which the Compiler decodes once per
    distinct text (100k routes often carry the same few upstreams). msgspec has no optional
    Raw: no upstream is an empty Raw (or the text ``null``)."""

    upstream: msgspec.Raw = msgspec.Raw()  # type: ignore[assignment]


class Service(Named, frozen=True, kw_only=True):
    plugins: Plugins | None = None
    upstream: Upstream | None = None
    upstream_id: ID | None = None
    hosts: Annotated[list[HostPattern], Meta(min_length=1)] | None = None
    enable_websocket: bool | None = None
    script: str | None = None


class Consumer(Labelled, frozen=True, kw_only=True):
    username: Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[a-zA-Z0-9_\-]+$")]
    plugins: Plugins | None = None
    group_id: ID | None = None


class Credential(Named, frozen=True, kw_only=True):
    plugins: Annotated[Plugins, Meta(max_length=1)] | None = None  # one auth plugin


class SSLClient(Base, frozen=True, kw_only=True):
    ca: Annotated[str, Meta(min_length=128, max_length=65536)]
    depth: Annotated[int, Meta(ge=0)] = 1
    skip_mtls_uri_regex: list[str] | None = None

    def __post_init__(self) -> None:
        # Matched on RE2 (tollway.regex): a rule it cannot compile is refused here, not when
        # the TLS contexts are built (APISIX's schema only asks for strings).
        rules = self.skip_mtls_uri_regex or []
        try:
            for rule in rules:
                compile_regex(rule)
            if rules:
                compile_regex("|".join(rules))
        except RegexError as e:
            raise ValueError(f'property "skip_mtls_uri_regex" validation failed: {e}') from None


class SSL(Labelled, frozen=True, kw_only=True):
    type: Literal["server", "client"] = "server"
    cert: Annotated[str, Meta(min_length=128, max_length=65536)] | None = None
    key: Annotated[str, Meta(min_length=32, max_length=65536)] | None = None
    certs: list[str] | None = None
    keys: list[str] | None = None
    sni: Annotated[str, Meta(pattern=r"^\*?[0-9a-zA-Z-.]+$")] | None = None
    snis: (
        Annotated[list[Annotated[str, Meta(pattern=r"^\*?[0-9a-zA-Z-.]+$")]], Meta(min_length=1)]
        | None
    ) = None
    client: SSLClient | None = None
    status: Literal[0, 1] = 1
    ssl_protocols: list[Literal["TLSv1.1", "TLSv1.2", "TLSv1.3"]] | None = None
    validity_start: int | None = None
    validity_end: int | None = None
    exptime: Annotated[int, Meta(ge=1588262400)] | None = None

    def __post_init__(self) -> None:
        # APISIX's ssl schema: if type is server then oneOf(required sni+key+cert,
        # required snis+key+cert), else required key+cert; its validator names the clause.
        has_pair = self.cert is not None and self.key is not None
        if self.type == "server":
            if not has_pair or (self.sni is None) == (self.snis is None):
                raise ValueError("then clause did not match")
        elif not has_pair:
            raise ValueError("else clause did not match")


class GlobalRule(Stamped, frozen=True, kw_only=True):
    plugins: Plugins


class PluginConfig(Named, frozen=True, kw_only=True):
    plugins: Plugins


class ConsumerGroup(PluginConfig, frozen=True, kw_only=True):
    pass


class Proto(Named, frozen=True, kw_only=True):
    content: Annotated[str, Meta(min_length=1, max_length=1048576)]


class StreamRoute(Named, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """APISIX's stream_route schema does not forbid other properties."""

    remote_addr: str | None = None
    server_addr: str | None = None
    server_port: Port | None = None
    sni: str | None = None
    upstream: Upstream | None = None
    upstream_id: ID | None = None
    service_id: ID | None = None
    plugins: Plugins | None = None
    protocol: dict[str, Any] | None = None


class PluginMetadata(Struct, kw_only=True, frozen=True):
    """Free-form: each plugin's metadata_schema validates the rest."""

    id: str | None = None


class Secret(Struct, kw_only=True, frozen=True):
    """Secret manager config (vault/aws/gcp); the fields depend on the manager."""

    id: str | None = None
    uri: str | None = None
    prefix: str | None = None
    token: str | None = None


# etcd directory (= Admin API resource type) -> object type. Order is APISIX's constants.lua.
KINDS: dict[str, type[Struct]] = {
    "routes": Route,
    "services": Service,
    "upstreams": Upstream,
    "consumers": Consumer,
    "ssls": SSL,
    "global_rules": GlobalRule,
    "plugin_configs": PluginConfig,
    "consumer_groups": ConsumerGroup,
    "plugin_metadata": PluginMetadata,
    "protos": Proto,
    "stream_routes": StreamRoute,
    "secrets": Secret,
}

# Keys under the prefix that are single values, not directories of items.
SINGLE_KEY_KINDS = frozenset({"plugins"})
