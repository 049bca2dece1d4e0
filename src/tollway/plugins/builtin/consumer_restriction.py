"""consumer-restriction (APISIX priority 2400): allow or deny by consumer, group, route, service.

Blacklist first (a hit is rejected), then the whitelist, then ``allowed_by_methods`` (only for a
value the whitelist did not allow). A request without the value (no consumer...) is a 401.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tollway.plugins.kit import Exit, Plugin, RequestContext

Method = Literal[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE"
]
Names = Annotated[list[str], Meta(min_length=1)]


class AllowedByMethods(msgspec.Struct):
    user: str | None = None
    methods: Annotated[list[Method], Meta(min_length=1)] | None = None


class Conf(msgspec.Struct):
    type: Literal["consumer_name", "service_id", "route_id", "consumer_group_id"] = "consumer_name"
    blacklist: Names | None = None
    whitelist: Names | None = None
    allowed_by_methods: list[AllowedByMethods] | None = None
    rejected_code: Annotated[int, Meta(ge=200)] = 403
    rejected_msg: str | None = None

    def __post_init__(self) -> None:
        if self.blacklist is None and self.whitelist is None and self.allowed_by_methods is None:
            raise ValueError(
                "value should match at least one schema: "
                'property "blacklist", "whitelist" or "allowed_by_methods" is required'
            )


def _group_id(ctx: RequestContext) -> Any:
    consumer = ctx.consumer
    return consumer.group_id if consumer is not None else None


FETCH: dict[str, Callable[[RequestContext], Any]] = {
    "consumer_name": lambda ctx: ctx.consumer_name,
    "route_id": lambda ctx: ctx.route_id,
    "service_id": lambda ctx: ctx.service_id,
    "consumer_group_id": _group_id,
}


def method_allowed(rules: list[AllowedByMethods], method: str, user: str) -> bool:
    """The first rule naming the user decides; a user no rule names is allowed."""
    for rule in rules:
        if rule.user == user:
            return method in (rule.methods or ())
    return True


def decide(conf: Conf, value: str, method: str) -> bool:
    """True when the request may pass."""
    if conf.blacklist and value in conf.blacklist:
        return False
    whitelisted = False
    if conf.whitelist:
        whitelisted = value in conf.whitelist
        if not whitelisted:
            return False
    if conf.allowed_by_methods and not whitelisted:
        return method_allowed(conf.allowed_by_methods, method, value)
    return True


class ConsumerRestriction(Plugin):
    name = "consumer-restriction"
    priority = 2400
    schema = Conf

    def access(self, conf: Conf, ctx: RequestContext) -> Exit:
        value = FETCH[conf.type](ctx)
        if value is None:
            msg = f"The request is rejected, please check the {conf.type} for this request"
            return 401, {"message": msg}
        if decide(conf, str(value), ctx.method):
            return None
        if conf.rejected_msg is not None:
            return conf.rejected_code, {"message": conf.rejected_msg}
        return conf.rejected_code, {"message": f"The {conf.type} is forbidden."}


PLUGINS = [ConsumerRestriction]
