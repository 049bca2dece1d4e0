"""Local config: an APISIX-style ``config.yaml`` merged over built-in defaults, validated once.

Keys follow APISIX 3.x where they apply. Keys Tollway adds live under the top-level ``tollway``
section. An unknown key is a warning; a wrong type or value stops start-up with a message naming
the file and the key path.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml
from msgspec import Meta, Struct

from tollway.errors import SettingsError

log = logging.getLogger("tollway.settings")

Port = Annotated[int, Meta(ge=0, le=65535)]


class Listen(Struct, forbid_unknown_fields=True, kw_only=True):
    ip: str = "0.0.0.0"
    port: Port = 9080
    # APISIX <= 3.8 switched HTTP/2 per listener; 3.9 deprecated it for apisix.enable_http2.
    # Accepted so older configs start (see http2_enabled).
    enable_http2: bool | None = None


class SSLListen(Struct, forbid_unknown_fields=True, kw_only=True):
    ip: str = "0.0.0.0"
    port: Port = 9443
    enable_http3: bool = False
    enable_http2: bool | None = None  # APISIX <= 3.8, as Listen.enable_http2


class SSLConf(Struct, kw_only=True):
    """apisix.ssl: the HTTPS listener; certificates come from the ``ssls`` objects (SNI)."""

    enable: bool = True
    listen: list[SSLListen | int] = msgspec.field(default_factory=lambda: [SSLListen()])
    ssl_protocols: str = "TLSv1.2 TLSv1.3"


class StatusConf(Struct, forbid_unknown_fields=True, kw_only=True):
    ip: str = "127.0.0.1"
    port: Port = 7085


class ControlConf(Struct, forbid_unknown_fields=True, kw_only=True):
    ip: str = "127.0.0.1"
    port: Port = 9090


class RouterConf(Struct, kw_only=True):
    http: Literal["radixtree_host_uri", "radixtree_uri", "radixtree_uri_with_parameter"] = (
        "radixtree_host_uri"
    )
    ssl: str = "radixtree_sni"


class DataEncryption(Struct, kw_only=True):
    keyring: list[str] = msgspec.field(default_factory=list)
    enable_encrypt_fields: bool = True


class ApisixConf(Struct, kw_only=True):
    node_listen: int | list[Listen | int] = 9080
    # APISIX 3.9+: HTTP/2 on every listener (ALPN h2 on TLS, h2c with prior knowledge on plain
    # ones). None: not set, so the default (true) or a legacy per-listener value decides.
    enable_http2: bool | None = None
    router: RouterConf = msgspec.field(default_factory=RouterConf)
    delete_uri_tail_slash: bool = False
    normalize_uri_like_servlet: bool = False
    disable_upstream_healthcheck: bool = False  # no checker runs, every node is used
    status: StatusConf | None = None
    disable_sync_configuration_during_start: bool = False
    enable_server_tokens: bool = True
    show_upstream_status_in_response_header: bool = False
    enable_admin: bool = True
    enable_control: bool = True
    control: ControlConf | None = None
    proxy_mode: Literal["http", "stream", "http&stream"] = "http"
    data_encryption: DataEncryption = msgspec.field(default_factory=DataEncryption)
    ssl: SSLConf = msgspec.field(default_factory=SSLConf)


class EtcdTLSConf(Struct, forbid_unknown_fields=True, kw_only=True):
    cert: str | None = None
    key: str | None = None
    verify: bool = True
    sni: str | None = None


class EtcdConf(Struct, kw_only=True):
    host: list[str] = msgspec.field(default_factory=lambda: ["http://127.0.0.1:2379"])
    prefix: str = "/apisix"
    timeout: Annotated[float, Meta(gt=0)] = 30
    user: str | None = None
    password: str | None = None
    tls: EtcdTLSConf | None = None
    startup_retry: Annotated[int, Meta(ge=0)] = 2
    watch_timeout: Annotated[float, Meta(gt=0)] = 50
    resync_delay: float = 5
    health_check_timeout: Annotated[float, Meta(gt=0)] = 10


class AdminKey(Struct, forbid_unknown_fields=True, kw_only=True):
    name: str = "admin"
    key: str = ""
    role: Literal["admin", "viewer"] = "admin"


class AdminConf(Struct, kw_only=True):
    admin_listen: Listen = msgspec.field(default_factory=lambda: Listen(ip="127.0.0.1", port=9180))
    allow_admin: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.0/24", "::1"])
    admin_key_required: bool = True
    admin_key: list[AdminKey] = msgspec.field(default_factory=list)
    enable_admin_cors: bool = True
    admin_api_version: str = "v3"
    https_admin: bool = False
    admin_api_mtls: dict[str, Any] | None = None
    enable_admin_ui: bool = True  # the dashboard at /ui/ (APISIX 3.13+; tollway.admin.ui)


class RoleConf(Struct, kw_only=True):
    config_provider: Literal["etcd", "yaml", "json"] = "etcd"


class DeploymentConf(Struct, kw_only=True):
    role: Literal["traditional", "data_plane", "control_plane"] = "traditional"
    role_traditional: RoleConf = msgspec.field(default_factory=RoleConf)
    role_data_plane: RoleConf = msgspec.field(default_factory=RoleConf)
    role_control_plane: RoleConf = msgspec.field(default_factory=RoleConf)
    etcd: EtcdConf = msgspec.field(default_factory=EtcdConf)
    admin: AdminConf = msgspec.field(default_factory=AdminConf)


class UpstreamKeepalive(Struct, kw_only=True):
    keepalive: Annotated[int, Meta(ge=0)] = 320
    keepalive_requests: Annotated[int, Meta(ge=1)] = 1000
    keepalive_timeout: Annotated[float, Meta(ge=0)] = 60


class HttpConf(Struct, kw_only=True):
    enable_access_log: bool = True
    access_log: str = "logs/access.log"
    access_log_format: str = (
        '$remote_addr - $remote_user [$time_local] $http_host "$request" $status '
        '$body_bytes_sent $request_time "$http_referer" "$http_user_agent" $upstream_addr '
        '$upstream_status $upstream_response_time "$upstream_scheme://$upstream_host$upstream_uri"'
    )
    # nginx's log_format escape= (APISIX access_log_format_escape): "json" escapes each value
    # for a JSON string, so a format such as '{"host":"$host"}' writes one JSON object a line.
    access_log_format_escape: Literal["default", "json"] = "default"
    client_max_body_size: int | str = 0
    keepalive_timeout: str | int = "60s"
    # nginx's client timeouts, with APISIX's defaults (config-default.yaml).
    client_header_timeout: str | int = "60s"
    client_body_timeout: str | int = "60s"
    send_timeout: str | int = "10s"
    upstream: UpstreamKeepalive = msgspec.field(default_factory=UpstreamKeepalive)
    # nginx realip as APISIX sets it up: a peer in real_ip_from names the client in the header.
    real_ip_header: str = "X-Real-IP"
    real_ip_recursive: Literal["on", "off"] | bool = "off"
    real_ip_from: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1", "unix:"])


class NginxConf(Struct, kw_only=True):
    worker_processes: Literal["auto"] | Annotated[int, Meta(ge=1)] = "auto"
    http: HttpConf = msgspec.field(default_factory=HttpConf)
    error_log: str = "logs/error.log"
    error_log_level: str = "warn"


class TollwayConf(Struct, forbid_unknown_fields=True, kw_only=True):
    """Tollway's own keys (not in APISIX)."""

    max_header_size: Annotated[int, Meta(ge=1024)] = 32 * 1024
    graceful_timeout: Annotated[float, Meta(ge=0)] = 30
    run_dir: str = "run"
    snapshot: bool = True
    # Passive-only health checks: an unhealthy node is tried again after this many seconds
    # (APISIX never recovers such a node).
    passive_recovery: Annotated[float, Meta(gt=0)] = 10.0
    # Re-send a non-idempotent request (POST, PATCH...) to the next node after its bytes
    # reached a failing upstream. Off: APISIX users' complaint (apache/apisix#11359).
    retry_non_idempotent: bool = False
    # An item naming a plugin this gateway cannot run (unknown, or not in ``plugins``): its
    # requests are answered 503 ("refuse", fail closed); "skip" serves them without the plugin
    # as APISIX does for items read from etcd (and rejects the item in yaml mode, as APISIX).
    unknown_plugins: Literal["refuse", "skip"] = "refuse"


class Settings(Struct, kw_only=True):
    apisix: ApisixConf = msgspec.field(default_factory=ApisixConf)
    deployment: DeploymentConf = msgspec.field(default_factory=DeploymentConf)
    nginx_config: NginxConf = msgspec.field(default_factory=NginxConf)
    plugins: list[str] | None = None
    plugin_attr: dict[str, Any] = msgspec.field(default_factory=dict)
    tollway: TollwayConf = msgspec.field(default_factory=TollwayConf)


@dataclass(frozen=True, slots=True)
class LoadedSettings:
    """Settings with derived values resolved once (uvicorn's Config.load habit)."""

    conf: Settings
    path: Path
    conf_dir: Path
    listens: tuple[tuple[str, int], ...]
    tls_listens: tuple[tuple[str, int], ...]
    workers: int
    config_provider: str
    client_max_body_size: int
    keepalive_timeout: float
    client_header_timeout: float
    client_body_timeout: float
    send_timeout: float
    run_dir: Path
    http2: bool = True  # HTTP/2 towards clients (http2_enabled)

    @property
    def plugin_attr(self) -> dict[str, Any]:
        """``plugin_attr`` with what APISIX derives from the rest of config.yaml: redirect's
        ``https_port`` defaults to an HTTPS listener's port (APISIX picks one at random; the
        first one here, so every worker answers alike)."""
        attr = dict(self.conf.plugin_attr)
        redirect = attr.get("redirect")
        redirect = dict(redirect) if isinstance(redirect, dict) else {}
        if redirect.get("https_port") is None and self.tls_listens:
            redirect["https_port"] = self.tls_listens[0][1]
            attr["redirect"] = redirect
        return attr

    @property
    def yaml_path(self) -> Path:
        """The standalone config file: ``apisix.json`` with ``config_provider: json``."""
        return self.conf_dir / ("apisix.json" if self.config_provider == "json" else "apisix.yaml")

    @property
    def etcd(self) -> EtcdConf:
        return self.conf.deployment.etcd

    @property
    def serves_proxy(self) -> bool:
        return self.conf.deployment.role != "control_plane"

    @property
    def serves_admin(self) -> bool:
        role = self.conf.deployment.role
        if role == "data_plane":
            return False
        return role == "control_plane" or self.conf.apisix.enable_admin

    @property
    def api_driven(self) -> bool:
        """APISIX's API-driven standalone mode: ``traditional`` with ``config_provider: yaml``
        (the config comes from PUT /apisix/admin/configs, not from a file or etcd)."""
        return self.conf.deployment.role == "traditional" and self.config_provider in (
            "yaml",
            "json",
        )

    def resolve(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else (self.conf_dir.parent / p)


_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)\s*$")


def parse_size(value: int | str) -> int:
    """nginx sizes: 10, '10k', '1m'. 0 means unlimited."""
    if isinstance(value, int):
        return value
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"invalid size: {value!r}")
    mult = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]
    return int(m.group(1)) * mult


_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


_DURATIONS = ("keepalive_timeout", "client_header_timeout", "client_body_timeout", "send_timeout")


def parse_duration(value: int | float | str) -> float:
    if isinstance(value, int | float):
        return float(value)
    m = _DUR.match(value)
    if not m:
        raise ValueError(f"invalid duration: {value!r}")
    mult = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]
    return float(m.group(1)) * mult


def _known_keys(typ: Any) -> dict[str, Any] | None:
    if isinstance(typ, type) and issubclass(typ, Struct):
        hints = msgspec.structs.fields(typ)
        return {f.name: f.type for f in hints}
    return None


def _warn_unknown(data: Any, typ: Any, file: str, path: str) -> None:
    """Walk the user's yaml beside the schema and warn about keys we do not know."""
    if not isinstance(data, dict):
        return
    known = _known_keys(typ)
    if known is None:
        return
    for key, val in data.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in known:
            log.warning("%s: unknown key %s (ignored)", file, sub)
            continue
        t = known[key]
        for cand in getattr(t, "__args__", (t,)):
            if _known_keys(cand) is not None:
                _warn_unknown(val, cand, file, sub)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_settings(
    path: str | os.PathLike[str], *, workers: int | None = None, warn: bool = True
) -> LoadedSettings:
    """``warn``: say which keys are unknown (the supervisor does; its workers read the same
    file again and keep quiet)."""
    p = Path(path).resolve()
    file = str(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise SettingsError(file, "-", f"cannot read: {e.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise SettingsError(file, "-", f"invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SettingsError(file, "-", "the top level must be a mapping")
    if warn:
        _warn_unknown(data, Settings, file, "")
    try:
        conf = msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as e:
        text_err = str(e)
        m = re.search(r" - at `\$\.?([^`]*)`$", text_err)
        key = m.group(1) if m else "-"
        msg = text_err[: m.start()] if m else text_err
        raise SettingsError(file, key.replace("[", ".").replace("]", "") or "-", msg) from None
    return _resolve(conf, p, file, workers)


def _resolve(conf: Settings, p: Path, file: str, workers: int | None) -> LoadedSettings:
    nl = conf.apisix.node_listen
    listens: list[tuple[str, int]] = []
    for entry in [nl] if isinstance(nl, int) else nl:
        if isinstance(entry, int):
            listens.append(("0.0.0.0", entry))
        else:
            listens.append((entry.ip, entry.port))
    tls_listens: list[tuple[str, int]] = []
    if conf.apisix.ssl.enable:
        for item in conf.apisix.ssl.listen:
            if isinstance(item, int):
                tls_listens.append(("0.0.0.0", item))
            else:
                tls_listens.append((item.ip, item.port))
    role = conf.deployment.role
    provider = getattr(conf.deployment, f"role_{role}").config_provider
    wp = conf.nginx_config.worker_processes
    n = workers or (os.cpu_count() or 1 if wp == "auto" else int(wp))
    http = conf.nginx_config.http
    try:
        body = parse_size(http.client_max_body_size)
    except ValueError as e:
        raise SettingsError(file, "nginx_config.http.client_max_body_size", str(e)) from None
    durations: dict[str, float] = {}
    for key in _DURATIONS:
        try:
            durations[key] = parse_duration(getattr(http, key))
        except ValueError as e:
            raise SettingsError(file, f"nginx_config.http.{key}", str(e)) from None
    for src in http.real_ip_from:
        if src == "unix:":
            continue
        try:
            ipaddress.ip_network(src, strict=False)
        except ValueError:
            raise SettingsError(
                file, "nginx_config.http.real_ip_from", f"invalid address or CIDR: {src}"
            ) from None
    if not conf.deployment.etcd.prefix.startswith("/"):
        raise SettingsError(file, "deployment.etcd.prefix", "must start with '/'")
    run_dir = Path(conf.tollway.run_dir)
    if not run_dir.is_absolute():
        run_dir = p.parent.parent / run_dir
    return LoadedSettings(
        conf=conf,
        path=p,
        conf_dir=p.parent,
        listens=tuple(listens),
        tls_listens=tuple(tls_listens),
        http2=http2_enabled(conf.apisix),
        workers=max(1, n),
        config_provider=provider,
        client_max_body_size=body,
        keepalive_timeout=durations["keepalive_timeout"],
        client_header_timeout=durations["client_header_timeout"],
        client_body_timeout=durations["client_body_timeout"],
        send_timeout=durations["send_timeout"],
        run_dir=run_dir,
    )


def http2_enabled(conf: ApisixConf) -> bool:
    """Whether clients may speak HTTP/2: ``apisix.enable_http2`` (APISIX 3.9+, default true).
    A config of APISIX <= 3.8 that sets ``enable_http2`` on its listeners instead (node_listen[],
    ssl.listen[]) gets HTTP/2 when one of them asks for it. Tollway decides for every listener
    at once: h2c is told from HTTP/1.1 by its preface, so both work on one port anyway."""
    if conf.enable_http2 is not None:
        return conf.enable_http2
    nl = conf.node_listen
    entries: list[Any] = [] if isinstance(nl, int) else list(nl)
    entries += conf.ssl.listen
    legacy = [e.enable_http2 for e in entries if not isinstance(e, int)]
    legacy = [v for v in legacy if v is not None]
    return any(legacy) if legacy else True


def default_settings(conf_dir: Path) -> LoadedSettings:
    return _resolve(Settings(), conf_dir / "config.yaml", "config.yaml", None)
