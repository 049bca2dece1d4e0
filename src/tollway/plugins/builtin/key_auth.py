"""key-auth (APISIX priority 2500, auth): a consumer identified by an API key.

The key is read from the ``header`` (default ``apikey``) first, then the ``query`` argument. A
missing or unknown key is a 401 with ``WWW-Authenticate: apikey realm="<realm>"``, unless an
``anonymous_consumer`` is configured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tollway.plugins.builtin.auth_consumer import (
    ANONYMOUS_FAILED,
    anonymous_consumer,
    remove_query_arg,
)
from tollway.plugins.builtin.key_auth_conf import Conf, ConsumerConf
from tollway.plugins.kit import Exit, Plugin, RequestContext


class KeyAuth(Plugin):
    name = "key-auth"
    priority = 2500
    type = "auth"
    schema = Conf
    consumer_schema = ConsumerConf
    consumer_key_field = "key"

    def rewrite(self, conf: Conf, ctx: RequestContext) -> Exit:
        """The phase as the chain runs it (the chain keeps the function ``phase_method`` makes
        once per conf; a direct call makes it for this call)."""
        return self.phase_method("rewrite", conf)(conf, ctx)

    def phase_method(self, phase: str, conf: Conf) -> Any:
        if phase == "rewrite":
            return self._rewriter(conf)
        return super().phase_method(phase, conf)

    def _rewriter(self, conf: Conf) -> Callable[[Conf, RequestContext], Exit]:
        """The rewrite phase of ``conf``: what depends on the conf alone (the header's name
        lowercased and encoded, the plugin's name in the index) is made once, here."""
        lname = conf.header.lower()
        wanted = lname.encode() if lname.isascii() else None
        name = self.name
        hide = conf.hide_credentials
        refuse = self._refuse

        def rewrite(conf: Conf, ctx: RequestContext) -> Exit:
            key = ctx.header_by(lname, wanted)  # (the other fields stay undecoded)
            if key is None:
                return self._from_query(conf, ctx)
            index = ctx.consumers  # (index.find, inline: a call less per request)
            table = index.by_plugin.get(name) if index is not None else None
            consumer = table.get(key) if table is not None else None
            if consumer is None:
                return refuse(conf, ctx, "Invalid API key in request")
            if hide:
                self._hide(conf, ctx, header=True, query=False)
            ctx.attach_consumer(consumer)
            return None

        return rewrite

    def _from_query(self, conf: Conf, ctx: RequestContext) -> Exit:
        """No key in the header: the query argument's, if any."""
        key = ctx.args.get(conf.query)
        if key is None:
            return self._refuse(conf, ctx, "Missing API key in request")
        consumer = ctx.find_consumer(self.name, key)
        if consumer is None:
            return self._refuse(conf, ctx, "Invalid API key in request")
        self._hide(conf, ctx, header=False, query=True)
        ctx.attach_consumer(consumer)
        return None

    def _refuse(self, conf: Conf, ctx: RequestContext, err: str) -> Exit:
        """A missing or unknown key: 401, or the anonymous consumer when one is configured."""
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
