"""Pieces every auth plugin shares: the anonymous consumer and hiding query credentials."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode

from tollway.plugins.kit import Consumer, RequestContext

ANONYMOUS_FAILED = {"message": "Invalid user authorization"}


def anonymous_consumer(ctx: RequestContext, name: str) -> Consumer | None:
    """APISIX ``consumer.get_anonymous_consumer``: the consumer called ``name``.

    The runtime indexes consumers by their auth credentials; a consumer is found here when it has
    at least one auth plugin conf (or when the index offers ``by_name``)."""
    index = ctx.consumers
    if index is None:
        return None
    by_name = getattr(index, "by_name", None)
    if by_name is not None:
        found: Consumer | None = by_name.get(name)
        return found
    for table in getattr(index, "by_plugin", {}).values():
        for consumer in table.values():
            if consumer.username == name:
                return consumer
    return None


def remove_query_arg(ctx: RequestContext, name: str) -> None:
    """Drop an argument from the request's query (APISIX ``core.request.set_uri_args``): what
    the upstream receives and what later plugins see as ``$args``."""
    pairs = [(k, v) for k, v in parse_qsl(ctx.query, keep_blank_values=True) if k != name]
    query = urlencode(pairs, quote_via=quote)
    ctx.query = query
    ctx._args = None  # re-parsed on next use
    path = ctx.request_uri.partition("?")[0]
    ctx.set_upstream_uri(f"{path}?{query}" if query else path)
