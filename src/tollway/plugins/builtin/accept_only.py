"""Plugins whose configs Tollway validates but does not act on (yet), so APISIX configs load.

* ``serverless-pre-function`` / ``serverless-post-function`` run Lua in APISIX: any conf is
  rejected with a message saying so, rather than accepted and silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tollway.plugins.kit import Plugin

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
    ServerlessPreFunction,
    ServerlessPostFunction,
]
