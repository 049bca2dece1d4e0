"""file-logger (APISIX priority 399): log entries appended to a file, one JSON object a line.

As APISIX's ``file-logger``: ``path`` (the conf's, else ``plugin_metadata/file-logger``'s),
``log_format``, the bodies, and ``match`` (log only the requests the expression matches).
APISIX writes in the log phase; Tollway queues the entry and writes lines in batches (within
0.2 s of the last request, 1 s at most) off the event loop, opening the file for each batch so
that a rotated file is followed. A relative path is relative to the working directory.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from tollway.plugins.kit import PerConf, RequestContext
from tollway.plugins.kit_batch import BatchSettings, Sender
from tollway.plugins.kit_log import MAX_BODY_BYTES, LoggerPlugin, check_log_conf
from tollway.plugins.kit_match import Expr, ExprError, compile_expr

log = logging.getLogger("tollway.plugins")
Rule = Annotated[list[Any], Meta(min_length=1)]


class Conf(msgspec.Struct, kw_only=True):
    path: str | None = None
    log_format: dict[str, Any] | None = None
    include_req_body: bool = False
    include_req_body_expr: Rule | None = None
    include_resp_body: bool = False
    include_resp_body_expr: Rule | None = None
    max_req_body_bytes: Annotated[int, Meta(ge=1)] = MAX_BODY_BYTES
    max_resp_body_bytes: Annotated[int, Meta(ge=1)] = MAX_BODY_BYTES
    match: Annotated[list[Any], Meta(max_length=20)] | None = None


class Metadata(msgspec.Struct, kw_only=True):
    path: str | None = None
    log_format: dict[str, Any] | None = None
    max_pending_entries: Annotated[int, Meta(ge=1)] = 8192


SETTINGS = BatchSettings(
    "file logger", batch_max_size=1000, inactive_timeout=0.2, buffer_duration=1
)


def _match(conf: Conf) -> Expr | None:
    return compile_expr(conf.match) if conf.match else None


_matches = PerConf(_match)


def append_lines(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class FileLogger(LoggerPlugin):
    name = "file-logger"
    priority = 399
    schema = Conf
    metadata_schema = Metadata

    def check(self, conf: Conf) -> None:
        check_log_conf(conf)
        if conf.match:
            try:
                compile_expr(conf.match)
            except ExprError as e:
                raise ValueError(f"failed to validate the 'match' expression: {e}") from None

    def log(self, conf: Conf, ctx: RequestContext) -> None:
        expr = _matches(conf)
        if expr is not None and not expr.eval(ctx.var):
            return
        super().log(conf, ctx)

    def settings(self, conf: Any) -> BatchSettings:
        return SETTINGS

    def sender(self, conf: Conf) -> Sender:
        async def send(batch: list[dict[str, Any]]) -> None:
            meta = self.metadata
            path = conf.path or (meta.path if meta is not None else None)
            if not path:
                raise ValueError(
                    'property "path" is not set in either the plugin conf or the metadata'
                )
            data = b"".join(msgspec.json.encode(e) + b"\n" for e in batch)
            await asyncio.get_running_loop().run_in_executor(None, append_lines, path, data)

        return send


PLUGINS = [FileLogger]
