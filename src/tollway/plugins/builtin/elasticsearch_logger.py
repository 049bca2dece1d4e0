"""elasticsearch-logger (APISIX priority 413): log entries indexed through Elasticsearch's
``_bulk`` API.

As APISIX's ``elasticsearch-logger``: each entry becomes an ``{"index":{"_index":...}}`` action
line and the entry as its source line; a batch is one ``POST <endpoint>/_bulk`` (one of
``endpoint_addrs`` at random) with ``Content-Type: application/x-ndjson``, Basic ``auth`` and the
conf's ``headers``; a status other than 200 is a failure. ``field.index`` may hold ``$var``s and
``{strftime format}`` parts (``logs-{%Y.%m.%d}``). Tollway sends the ES 7+ action (no
``_type``); APISIX asks the server its version first to add ``_type`` for ES 5 and 6.
"""

from __future__ import annotations

import base64
import random
import re
import time
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from tollway.plugins.kit import RequestContext
from tollway.plugins.kit_batch import Sender
from tollway.plugins.kit_log import HttpLoggerBase as Base
from tollway.plugins.kit_log import LogConf, resolve_vars

Addr = Annotated[str, Meta(pattern=r"[^/]$")]
NonEmpty = Annotated[str, Meta(min_length=1)]


class Field(msgspec.Struct):
    index: str


class Auth(msgspec.Struct):
    username: NonEmpty
    password: NonEmpty


class Conf(LogConf, kw_only=True):
    endpoint_addr: Addr | None = None
    endpoint_addrs: list[Addr] | None = None
    field: Field
    auth: Auth | None = None
    headers: (
        Annotated[dict[Annotated[str, Meta(pattern=r"^[^:]+$")], NonEmpty], Meta(min_length=1)]
        | None
    ) = None
    timeout: Annotated[int, Meta(ge=1)] = 10  # s
    ssl_verify: bool = True
    name: str = "elasticsearch-logger"


_TIME = re.compile(r"(?<!\$)\{([^}]*)\}")


def resolve_index(index: str, ctx: RequestContext) -> str:
    """``{format}`` -> the local time in that strftime format, then ``$var``s."""
    if "{" in index:
        index = _TIME.sub(lambda m: time.strftime(m.group(1)), index)
    return resolve_vars(index, ctx.var)


class ElasticsearchLogger(Base):
    name = "elasticsearch-logger"
    priority = 413
    schema = Conf

    def check(self, conf: Conf) -> None:
        super().check(conf)
        if (conf.endpoint_addr is None) == (not conf.endpoint_addrs):
            raise ValueError("value should match only one schema, but matches none")

    def item(self, conf: Conf, ctx: RequestContext, entry: dict[str, Any]) -> bytes:
        action = {"index": {"_index": resolve_index(conf.field.index, ctx)}}
        return msgspec.json.encode(action) + b"\n" + msgspec.json.encode(entry) + b"\n"

    def sender(self, conf: Conf) -> Sender:
        headers = [
            ("Content-Type", "application/x-ndjson"),
            ("Accept", "application/vnd.elasticsearch+json"),
        ]
        if conf.auth is not None:
            token = base64.b64encode(f"{conf.auth.username}:{conf.auth.password}".encode())
            headers.append(("Authorization", "Basic " + token.decode()))
        headers += (conf.headers or {}).items()
        addrs = [conf.endpoint_addr] if conf.endpoint_addr else conf.endpoint_addrs or []

        async def send(batch: list[bytes]) -> None:
            url = random.choice(addrs) + "/_bulk"
            status = await self.post(url, headers, b"".join(batch), conf.timeout, conf.ssl_verify)
            if status != 200:
                raise ConnectionError(f"elasticsearch server returned status: {status}")

        return send


PLUGINS = [ElasticsearchLogger]
