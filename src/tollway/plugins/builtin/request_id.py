"""request-id (APISIX priority 12015): give each request an id, upstream and in the response.

An id the client already sent in ``header_name`` is kept. Algorithms: uuid (v4), uuidv7, nanoid
(21 URL-safe characters), ksuid (27 base62 characters), range_id (``length`` characters from
``char_set``).
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from tollway.plugins.kit import Exit, PerConf, Plugin, RequestContext

DEFAULT_CHARSET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
NANOID_ALPHABET = "_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KSUID_EPOCH = 1_400_000_000


class RangeId(msgspec.Struct):
    length: Annotated[int, Meta(ge=6)] = 16
    char_set: Annotated[str, Meta(min_length=6)] = DEFAULT_CHARSET


class Conf(msgspec.Struct):
    header_name: str = "X-Request-Id"
    include_in_response: bool = True
    algorithm: Literal["uuid", "nanoid", "range_id", "ksuid", "uuidv7"] = "uuid"
    range_id: RangeId = msgspec.field(default_factory=RangeId)


def uuid7(now_ms: int | None = None, rand: bytes | None = None) -> str:
    """RFC 9562 UUIDv7: 48-bit Unix milliseconds, version 7, 74 random bits, variant 10."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    r = int.from_bytes(rand if rand is not None else os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((r >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= r & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def ksuid(now: float | None = None, rand: bytes | None = None) -> str:
    """Segment's KSUID: 4-byte seconds since 2014-05-13 + 16 random bytes, base62, 27 chars."""
    ts = int(time.time() if now is None else now) - KSUID_EPOCH
    n = int.from_bytes(
        ts.to_bytes(4, "big") + (rand if rand is not None else os.urandom(16)), "big"
    )
    out = []
    for _ in range(27):
        n, rem = divmod(n, 62)
        out.append(BASE62[rem])
    return "".join(reversed(out))


def generator(conf: Conf) -> Callable[[], str]:
    if conf.algorithm == "nanoid":
        return lambda: "".join(secrets.choice(NANOID_ALPHABET) for _ in range(21))
    if conf.algorithm == "range_id":
        chars, length = conf.range_id.char_set, conf.range_id.length
        return lambda: "".join(secrets.choice(chars) for _ in range(length))
    if conf.algorithm == "ksuid":
        return ksuid
    if conf.algorithm == "uuidv7":
        return uuid7
    return lambda: str(uuid.uuid4())


_generator = PerConf(generator)


class RequestId(Plugin):
    name = "request-id"
    priority = 12015
    schema = Conf

    def rewrite(self, conf: Conf, ctx: RequestContext) -> Exit:
        value = ctx.get_header(conf.header_name)
        if value is None:
            value = _generator(conf)()
            ctx.set_request_header(conf.header_name, value)
        if conf.include_in_response:
            ctx.set_var("request-id-" + conf.header_name.lower(), value)
        return None

    def header_filter(self, conf: Conf, ctx: RequestContext) -> None:
        if not conf.include_in_response or ctx.get_response_header(conf.header_name) is not None:
            return
        value = ctx.var("request-id-" + conf.header_name.lower())
        if value is not None:
            ctx.set_response_header(conf.header_name, value)


PLUGINS = [RequestId]
