"""key-auth (APISIX priority 2500, auth): a consumer identified by an API key.

The key is read from the ``header`` (default ``apikey``) first, then the ``query`` argument. A
missing or unknown key is a 401 with ``WWW-Authenticate: apikey realm="<realm>"``, unless an
``anonymous_consumer`` is configured.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from tollway.plugins.builtin.auth_consumer import (
    ANONYMOUS_FAILED,
    anonymous_consumer,
    remove_query_arg,
)
from tollway.plugins.kit import Exit, Plugin, RequestContext


class Conf(msgspec.Struct):
    header: str = "apikey"
    query: str = "apikey"
    hide_credentials: bool = False
    anonymous_consumer: Annotated[str, Meta(min_length=1)] | None = None
    realm: str = "key"


class ConsumerConf(msgspec.Struct):
    key: str


class KeyAuth(Plugin):
    name = "key-auth"
    priority = 2500
    type = "auth"
    schema = Conf
    consumer_schema = ConsumerConf
    consumer_key_field = "key"

    def rewrite(self, conf: Conf, ctx: RequestContext) -> Exit:
        from_header = True
        key = ctx.get_header(conf.header)  # (the other fields stay undecoded)
        if key is None:
            key = ctx.args.get(conf.query)
            from_header = False
        if key is None:
            err = "Missing API key in request"
        else:
            index = ctx.consumers  # (ctx.find_consumer, one call less: every request)
            consumer = index.find(self.name, key) if index is not None else None
            if consumer is not None:
                if conf.hide_credentials:
                    self._hide(conf, ctx, header=from_header, query=not from_header)
                ctx.attach_consumer(consumer)
                return None
            err = "Invalid API key in request"
        if conf.anonymous_consumer is None:
            return 401, {"message": err}, {"WWW-Authenticate": f'apikey realm="{conf.realm}"'}
        anon = anonymous_consumer(ctx, conf.anonymous_consumer)
        if anon is None:
            return 401, ANONYMOUS_FAILED
        # anonymous fallback: an invalid key is not passed on, wherever it was
        self._hide(conf, ctx, header=True, query=True)
        ctx.attach_consumer(anon)
        return None

    @staticmethod
    def _hide(conf: Conf, ctx: RequestContext, *, header: bool, query: bool) -> None:
        """hide_credentials: the key leaves the request (header and/or query)."""
        if not conf.hide_credentials:
            return
        if header and ctx.get_header(conf.header) is not None:
            ctx.set_request_header(conf.header, None)
        if query and conf.query in ctx.args:
            remove_query_arg(ctx, conf.query)


PLUGINS = [KeyAuth]
