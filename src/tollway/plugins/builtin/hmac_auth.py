"""hmac-auth (APISIX 3.x, priority 2530, auth): a consumer identified by an HMAC request signature.

The client sends ``Authorization: Signature keyId="...",algorithm="hmac-sha256",
headers="@request-target date",signature="<base64>"``. The signing string is the key id, then
one line per listed header (``name: value``; ``@request-target`` is ``METHOD request_uri``; a
listed header the request lacks is skipped), each line ending in ``\\n``
(draft-cavage-http-signatures-12 with APISIX's key-id line). As APISIX 3.x:

* a missing ``Authorization`` header, or one not starting with ``Signature``, is a 401
  ``{"message":"client request can't be validated: <reason>"}``; every later failure (unknown key,
  algorithm not allowed, clock skew, missing signed header, bad signature, bad digest) is the
  opaque 401 ``{"message":"client request can't be validated"}``, the reason only in the log;
* the ``Date`` (else ``X-Date``) header must be within ``clock_skew`` seconds of now, parsed as
  nginx's ``ngx_parse_http_time``;
* with ``validate_request_body``, ``Digest`` must be ``SHA-256=<base64 of sha256(body)>``;
* no ``WWW-Authenticate`` header is sent.

Deviation: with ``validate_request_body`` a body over ``MAX_DIGEST_BODY`` is not buffered and
fails validation (APISIX buffers any body nginx accepts).
"""

from __future__ import annotations

import binascii
import calendar
import hashlib
import hmac
import logging
import re
import time
from base64 import b64decode, b64encode
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tollway.plugins.builtin.auth_consumer import ANONYMOUS_FAILED, anonymous_consumer
from tollway.plugins.kit import Consumer, Exit, Plugin, RequestContext

log = logging.getLogger("tollway.plugins")

Algorithm = Literal["hmac-sha1", "hmac-sha256", "hmac-sha512"]
ALGORITHMS: tuple[Algorithm, ...] = ("hmac-sha1", "hmac-sha256", "hmac-sha512")
_DIGESTS = {"hmac-sha1": hashlib.sha1, "hmac-sha256": hashlib.sha256, "hmac-sha512": hashlib.sha512}
MAX_DIGEST_BODY = 16 * 1024 * 1024
REJECTED = "client request can't be validated"


def _all_algorithms() -> list[Algorithm]:
    return list(ALGORITHMS)


class Conf(msgspec.Struct):
    allowed_algorithms: Annotated[list[Algorithm], Meta(min_length=1)] = msgspec.field(
        default_factory=_all_algorithms
    )
    clock_skew: Annotated[int, Meta(ge=1)] = 300
    signed_headers: list[Annotated[str, Meta(min_length=1, max_length=50)]] | None = None
    validate_request_body: bool = False
    hide_credentials: bool = False
    anonymous_consumer: Annotated[str, Meta(min_length=1)] | None = None


class ConsumerConf(msgspec.Struct):
    key_id: Annotated[str, Meta(min_length=1, max_length=256)]
    secret_key: Annotated[str, Meta(min_length=1, max_length=256)]


# -- the pure core --------------------------------------------------------------------------


class Params(msgspec.Struct):
    """What the request carries: the Authorization fields, the date and the body digest."""

    key_id: str | None = None
    algorithm: str | None = None
    signature: str | None = None
    headers: list[str] | None = None
    date: str | None = None
    digest: str | None = None


# Lua ``%s*(%w+)="(.-)"``, searched (not anchored) in each comma-separated field.
_FIELD = re.compile(r'\s*([A-Za-z0-9]+)="(.*?)"', re.S)


def parse_authorization(value: str | None) -> Params | str:
    """The signature fields of an Authorization header, or the reason it is unusable."""
    if value is None:
        return "missing Authorization header"
    if not value.startswith("Signature"):
        return "Authorization header does not start with 'Signature'"
    params = Params()
    for field in value[9:].split(","):
        m = _FIELD.search(field)
        if m is None:
            continue
        key, val = m.group(1), m.group(2)
        if key == "keyId":
            params.key_id = val
        elif key == "algorithm":
            params.algorithm = val
        elif key == "signature":
            params.signature = val
        elif key == "headers":
            params.headers = val.split(" ")
    return params


_MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}
_MON = "(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_HMS = r"(\d\d):(\d\d):(\d\d)"
_RFC822 = re.compile(rf"[^, ]*, *(\d\d) {_MON} (\d{{4}}) {_HMS}")
_RFC850 = re.compile(rf"[^, ]*, *(\d\d)-{_MON}-(\d\d) {_HMS}")
_ASCTIME = re.compile(rf"[^, ]* +{_MON}  ?(\d\d?) {_HMS} (\d{{4}})")


def parse_http_time(value: str) -> int | None:
    """nginx ``ngx_parse_http_time``: RFC 1123, RFC 850 or asctime dates; the weekday is not
    checked and whatever follows the time (``GMT``) is ignored. None when it does not parse."""
    if m := _RFC822.match(value):
        day, mon, year, hh, mm, ss = m.groups()
        y = int(year)
    elif m := _RFC850.match(value):
        day, mon, year, hh, mm, ss = m.groups()
        y = int(year)
        y += 2000 if y < 70 else 1900
    elif m := _ASCTIME.match(value):
        mon, day, hh, mm, ss, year = m.groups()
        y = int(year)
    else:
        return None
    month, d, h, mi, s = _MONTHS[mon], int(day), int(hh), int(mm), int(ss)
    if h > 23 or mi > 59 or s > 59:
        return None
    if d > calendar.monthrange(y, month)[1]:
        return None
    return calendar.timegm((y, month, d, h, mi, s, 0, 0, 0))


def decode_signature(text: str) -> bytes | None:
    """nginx ``ngx_decode_base64``: stops at the first ``=``, padding optional."""
    data = text.split("=", 1)[0]
    if len(data) % 4 == 1:
        return None
    try:
        return b64decode(data + "=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def signing_string(params: Params, method: str, request_uri: str, header: Any) -> bytes:
    """APISIX ``generate_signature``'s input: the key id, then each listed header present in
    the request as ``name: value`` (``@request-target``: ``METHOD uri``), lines ending in \\n."""
    items = [params.key_id or ""]
    for name in params.headers or ():
        value = header(name)
        if value is not None:
            items.append(f"{name}: {value}")
        elif name == "@request-target":
            items.append(f"{method} {request_uri}")
    return ("\n".join(items) + "\n").encode("utf-8", "surrogateescape")


def sign(algorithm: str, secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode(), message, _DIGESTS[algorithm]).digest()


def body_digest(body: bytes) -> str:
    return "SHA-256=" + b64encode(hashlib.sha256(body).digest()).decode()


def check_request(
    conf: Conf,
    params: Params,
    find: Callable[[str], Consumer | None],
    method: str,
    request_uri: str,
    header: Callable[[str], str | None],
    now: float,
) -> Consumer | str:
    """APISIX ``validate`` up to (not including) the body digest: the consumer, or why not."""
    if not params.key_id or not params.signature:
        return "keyId or signature missing"
    if not params.algorithm:
        return "algorithm missing"
    consumer = find(params.key_id)
    if consumer is None:
        return "Invalid key_id"
    if params.algorithm not in conf.allowed_algorithms:
        return "Invalid algorithm"
    if params.date is None:
        return "Date header missing. failed to validate clock skew"
    at = parse_http_time(params.date)
    if at is None:
        return "Invalid GMT format time"
    if abs(int(now) - at) > conf.clock_skew:
        return "Clock skew exceeded"
    if conf.signed_headers:
        if params.headers is None:
            return "headers missing"
        for name in conf.signed_headers:
            if name not in params.headers:
                return f'expected header "{name}" missing in signing'
    given = decode_signature(params.signature)
    expected = sign(
        params.algorithm,
        consumer.auth_conf.secret_key,
        signing_string(params, method, request_uri, header),
    )
    if given is None or not hmac.compare_digest(given, expected):
        return "Invalid signature"
    return consumer


# -- the plugin -----------------------------------------------------------------------------


class HmacAuth(Plugin):
    name = "hmac-auth"
    priority = 2530
    type = "auth"
    schema = Conf
    consumer_schema = ConsumerConf
    consumer_key_field = "key_id"

    def phase_method(self, phase: str, conf: Any) -> Any:
        # Only a conf that validates the body needs to wait for it (a coroutine).
        if phase == "rewrite" and conf.validate_request_body:
            return self.rewrite_with_body
        return super().phase_method(phase, conf)

    def rewrite(self, conf: Conf, ctx: RequestContext) -> Exit:
        found = self._authenticate(conf, ctx)
        return self._finish(conf, ctx, found)

    async def rewrite_with_body(self, conf: Conf, ctx: RequestContext) -> Exit:
        found = self._authenticate(conf, ctx)
        if isinstance(found, Consumer):
            digest = ctx.get_header("digest")
            body = await ctx.read_body(MAX_DIGEST_BODY) if digest is not None else None
            if body is None or body_digest(body) != digest:
                found = (REJECTED, "Invalid digest")
        return self._finish(conf, ctx, found)

    def _authenticate(self, conf: Conf, ctx: RequestContext) -> Consumer | tuple[str, str]:
        """The consumer, or (the 401 message, the reason for the log)."""
        params = parse_authorization(ctx.get_header("authorization"))
        if isinstance(params, str):
            return f"{REJECTED}: {params}", params
        params.date = ctx.get_header("date") or ctx.get_header("x-date")
        found = check_request(
            conf,
            params,
            lambda key: ctx.find_consumer(self.name, key),
            ctx.method,
            ctx.path + (f"?{ctx.query}" if ctx.query else ""),  # APISIX's reset $request_uri
            ctx.get_header,
            time.time(),
        )
        if isinstance(found, str):
            return REJECTED, found
        return found

    def _finish(self, conf: Conf, ctx: RequestContext, found: Any) -> Exit:
        if not isinstance(found, Consumer):
            message, reason = found
            log.debug("hmac-auth: %s: %s", REJECTED, reason)
            if conf.anonymous_consumer is None:
                return 401, {"message": message}
            found = anonymous_consumer(ctx, conf.anonymous_consumer)
            if found is None:
                return 401, ANONYMOUS_FAILED
        if conf.hide_credentials:
            ctx.set_request_header("Authorization", None)
        ctx.attach_consumer(found)
        return None


PLUGINS = [HmacAuth]
