"""Pieces every auth plugin shares: the anonymous consumer and hiding query credentials."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode

from tollway.plugins.kit import Consumer, RequestContext

ANONYMOUS_FAILED = {"message": "Invalid user authorization"}


def anonymous_consumer(ctx: RequestContext, name: str) -> Consumer | None:
    """APISIX ``consumer.get_anonymous_consumer``: the consumer called ``name``."""
    return ctx.consumer_by_name(name)


def remove_query_arg(ctx: RequestContext, name: str) -> None:
    """Drop an argument from the request's query (APISIX ``core.request.set_uri_args``): what
    the upstream receives and what later plugins see as ``$args``."""
    pairs = [(k, v) for k, v in parse_qsl(ctx.query, keep_blank_values=True) if k != name]
    query = urlencode(pairs, quote_via=quote)
    ctx.query = query
    ctx._args = None  # re-parsed on next use
    path = ctx.request_uri.partition("?")[0]
    ctx.set_upstream_uri(f"{path}?{query}" if query else path)
