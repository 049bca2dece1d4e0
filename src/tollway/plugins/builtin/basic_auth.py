"""basic-auth (APISIX priority 2520, auth): a consumer identified by HTTP Basic credentials.

As APISIX: ``Basic <base64>`` is searched (not anchored) in the Authorization header, the decoded
text is split on ``:`` (the password is the second field, so a ``:`` inside it cuts it short) and
whitespace is removed from both parts.
"""

from __future__ import annotations

import binascii
import hmac
import re
from base64 import b64decode
from typing import Annotated

import msgspec
from msgspec import Meta

from tollway.plugins.builtin.auth_consumer import ANONYMOUS_FAILED, anonymous_consumer
from tollway.plugins.kit import Consumer, Exit, Plugin, RequestContext


class Conf(msgspec.Struct):
    hide_credentials: bool = False
    anonymous_consumer: Annotated[str, Meta(min_length=1)] | None = None
    realm: str = "basic"


class ConsumerConf(msgspec.Struct):
    username: str
    password: str


_BASIC = re.compile(r"Basic\s(.+)", re.S)
_SPACE = re.compile(r"\s+")


def parse_basic(header: str) -> tuple[str, str] | None:
    """(username, password) from an Authorization value, or None when it is malformed."""
    m = _BASIC.search(header)
    if m is None:
        return None
    encoded = m.group(1)
    if len(encoded) % 4 == 1:
        return None
    try:
        decoded = b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    fields = decoded.decode("latin-1").split(":")
    while fields and fields[-1] == "":  # ngx.re.split drops trailing empty fields
        fields.pop()
    if len(fields) < 2:
        return None
    return _SPACE.sub("", fields[0]), _SPACE.sub("", fields[1])


def authenticate(ctx: RequestContext, plugin: str) -> Consumer | str:
    """The consumer, or the 401 message."""
    header = ctx.get_header("authorization")
    if header is None:
        return "Missing authorization in request"
    creds = parse_basic(header)
    if creds is None:
        return "Invalid authorization in request"
    consumer = ctx.find_consumer(plugin, creds[0])
    if consumer is None:
        return "Invalid user authorization"
    expected = str(consumer.auth_conf.password).encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(expected, creds[1].encode("utf-8", "surrogateescape")):
        return "Invalid user authorization"
    return consumer


class BasicAuth(Plugin):
    name = "basic-auth"
    priority = 2520
    type = "auth"
    schema = Conf
    consumer_schema = ConsumerConf
    consumer_key_field = "username"

    def rewrite(self, conf: Conf, ctx: RequestContext) -> Exit:
        found = authenticate(ctx, self.name)
        if isinstance(found, str):
            if conf.anonymous_consumer is None:
                challenge = {"WWW-Authenticate": f'Basic realm="{conf.realm}"'}
                return 401, {"message": found}, challenge
            anon = anonymous_consumer(ctx, conf.anonymous_consumer)
            if anon is None:
                return 401, ANONYMOUS_FAILED
            found = anon
        if conf.hide_credentials:
            ctx.set_request_header("Authorization", None)
        ctx.attach_consumer(found)
        return None


PLUGINS = [BasicAuth]
