"""Plugins whose configs Tollway validates but does not act on (yet), so APISIX configs load.

* ``http-logger`` (410): validated; no log entry is shipped.
* ``serverless-pre-function`` / ``serverless-post-function`` run Lua in APISIX: any conf is
  rejected with a message saying so, rather than accepted and silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tollway.plugins.kit import Plugin


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
    HttpLogger,
    ServerlessPreFunction,
    ServerlessPostFunction,
]
