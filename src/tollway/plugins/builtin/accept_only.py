"""Plugins whose configs Tollway validates but does not act on (yet), so APISIX configs load.

* ``prometheus`` (500): the schema and ``run_policy``; the metrics themselves are exported by the
  gateway (not by this plugin phase).
* ``proxy-mirror`` (1010), ``http-logger`` (410): validated; no mirror request is sent and no
  log entry is shipped.
* ``serverless-pre-function`` / ``serverless-post-function`` run Lua in APISIX: any conf is
  rejected with a message saying so, rather than accepted and silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tollway.plugins.kit import Plugin


class PrometheusConf(msgspec.Struct):
    prefer_name: bool = False


class Prometheus(Plugin):
    name = "prometheus"
    priority = 500
    schema = PrometheusConf
    run_policy = "prefer_route"


_MIRROR_HOST = (
    r"^http(s)?:\/\/([\da-zA-Z.-]+|\[[\da-fA-F:]+\])(:\d+)?$"  # APISIX 3.x: host[:port], or [v6]
)


class ProxyMirrorConf(msgspec.Struct):
    host: Annotated[str, Meta(pattern=_MIRROR_HOST)]
    path: Annotated[str, Meta(pattern=r"^/[^?&]+$")] | None = None
    path_concat_mode: Literal["replace", "prefix"] = "replace"
    sample_ratio: Annotated[float, Meta(ge=0.00001, le=1)] = 1.0


class ProxyMirror(Plugin):
    name = "proxy-mirror"
    priority = 1010
    schema = ProxyMirrorConf


class HttpLoggerConf(msgspec.Struct):
    uri: Annotated[str, Meta(pattern=r"^[^\/]+:\/\/([\da-zA-Z.-]+|\[[\da-fA-F:]+\])(:\d+)?")]
    auth_header: str | None = None
    timeout: Annotated[int, Meta(ge=1)] = 3
    log_format: dict[str, Any] | None = None
    include_req_body: bool = False
    include_req_body_expr: Annotated[list[Any], Meta(min_length=1)] | None = None
    include_resp_body: bool = False
    include_resp_body_expr: Annotated[list[Any], Meta(min_length=1)] | None = None
    concat_method: Literal["json", "new_line"] = "json"
    ssl_verify: bool = False
    # batch processor
    name: str = "http logger"
    batch_max_size: Annotated[int, Meta(gt=0)] = 1000
    inactive_timeout: Annotated[int, Meta(gt=0)] = 5
    buffer_duration: Annotated[int, Meta(gt=0)] = 60
    max_retry_count: Annotated[int, Meta(ge=0)] = 0
    retry_delay: Annotated[float, Meta(ge=0)] = 1


class HttpLogger(Plugin):
    name = "http-logger"
    priority = 410
    schema = HttpLoggerConf


Phase = Literal["rewrite", "access", "header_filter", "body_filter", "log", "before_proxy"]


class ServerlessConf(msgspec.Struct):
    functions: Annotated[list[str], Meta(min_length=1)]
    phase: Phase = "access"


class _Serverless(Plugin):
    schema = ServerlessConf

    def check(self, conf: Any) -> None:
        raise ValueError(
            f"{self.name} runs Lua functions, which Tollway cannot execute; "
            "write a Python plugin (entry point group tollway.plugins) instead"
        )


class ServerlessPreFunction(_Serverless):
    name = "serverless-pre-function"
    priority = 10000


class ServerlessPostFunction(_Serverless):
    name = "serverless-post-function"
    priority = -2000


PLUGINS = [
    Prometheus,
    ProxyMirror,
    HttpLogger,
    ServerlessPreFunction,
    ServerlessPostFunction,
]
