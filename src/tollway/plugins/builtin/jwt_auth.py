"""jwt-auth (APISIX priority 2510, auth): a consumer identified by a signed JWT.

The token is read from the ``header`` (a ``Bearer `` prefix is dropped), then the ``query``
argument, then the ``cookie``. Its ``key_claim_name`` claim names the consumer, whose conf gives
the algorithm and the secret or public key. The token's ``alg`` must be the consumer's algorithm
(no algorithm confusion). HS* signatures are checked here with ``hmac``; the others with PyJWT's
algorithm objects, keys loaded once per consumer conf.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import secrets
import time
from base64 import b64decode, urlsafe_b64decode
from collections.abc import Callable
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from tollway.plugins.builtin.auth_consumer import (
    ANONYMOUS_FAILED,
    anonymous_consumer,
    remove_query_arg,
)
from tollway.plugins.kit import Consumer, Exit, Plugin, RequestContext

Algorithm = Literal[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512",
    "PS256", "PS384", "PS512", "EdDSA",
]  # fmt: skip
_HMAC = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


class Conf(msgspec.Struct):
    header: str = "authorization"
    query: str = "jwt"
    cookie: str = "jwt"
    hide_credentials: bool = False
    key_claim_name: Annotated[str, Meta(min_length=1)] = "key"
    store_in_ctx: bool = False
    anonymous_consumer: Annotated[str, Meta(min_length=1)] | None = None
    realm: str = "jwt"
    claims_to_verify: list[Literal["exp", "nbf"]] = msgspec.field(
        default_factory=lambda: ["exp", "nbf"]
    )

    def __post_init__(self) -> None:
        if len(set(self.claims_to_verify)) != len(self.claims_to_verify):
            raise ValueError('property "claims_to_verify" validation failed: duplicate items')


class ConsumerConf(msgspec.Struct):
    key: Annotated[str, Meta(min_length=1)]
    secret: Annotated[str, Meta(min_length=1)] | None = None
    algorithm: Algorithm = "HS256"
    exp: Annotated[int, Meta(ge=1)] = 86400
    base64_secret: bool = False
    lifetime_grace_period: Annotated[int, Meta(ge=0)] = 0
    public_key: str | None = None
    private_key: str | None = None  # accepted for configs written for APISIX < 3.8

    def __post_init__(self) -> None:
        if self.algorithm in _HMAC:
            if self.secret is None:
                # APISIX generates a secret for an HS* consumer that has none.
                self.secret = secrets.token_urlsafe(32)
            elif self.base64_secret and _b64(self.secret) is None:
                raise ValueError("base64_secret required but the secret is not in base64 format")
        elif not self.public_key:
            raise ValueError("missing valid public key")
        else:
            # PyJWT (and cryptography under it, ~60 ms) is imported when a public-key consumer
            # is decoded (config time), not at every process start, nor on a request.
            import jwt.algorithms  # noqa: F401


def _b64(text: str) -> bytes | None:
    try:
        return b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _b64url(text: str) -> bytes:
    return urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Token:
    """A parsed, not yet verified, compact JWS."""

    __slots__ = ("header", "payload", "signature", "signing_input")

    def __init__(self, raw: str) -> None:
        """Raises ValueError when ``raw`` is not a JWT."""
        parts = raw.split(".")
        if len(parts) != 3:
            raise ValueError("invalid jwt string")
        try:
            self.header = json.loads(_b64url(parts[0]))
            self.payload = json.loads(_b64url(parts[1]))
            self.signature = _b64url(parts[2])
        except (binascii.Error, ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"invalid jwt string: {e}") from None
        if not isinstance(self.header, dict) or not isinstance(self.payload, dict):
            raise ValueError("invalid jwt string")
        self.signing_input = f"{parts[0]}.{parts[1]}".encode("latin-1")


# -- verification (pure: keys, time and the token are inputs) --------------------------------

Verifier = Callable[[bytes, bytes], bool]
_VERIFIERS: dict[int, tuple[ConsumerConf, Verifier]] = {}


def verifier(conf: ConsumerConf) -> Verifier:
    """Checks (signing input, signature) with the consumer's key; built once per conf."""
    hit = _VERIFIERS.get(id(conf))
    if hit is not None and hit[0] is conf:
        return hit[1]
    fn = _build_verifier(conf)
    if len(_VERIFIERS) > 10000:
        _VERIFIERS.clear()
    _VERIFIERS[id(conf)] = (conf, fn)
    return fn


def _build_verifier(conf: ConsumerConf) -> Verifier:
    digest = _HMAC.get(conf.algorithm)
    if digest is not None:
        secret = conf.secret or ""
        key = (_b64(secret) or b"") if conf.base64_secret else secret.encode()

        def check_hmac(msg: bytes, sig: bytes) -> bool:
            return hmac.compare_digest(hmac.new(key, msg, digest).digest(), sig)

        return check_hmac
    from jwt.algorithms import get_default_algorithms  # imported when the conf was decoded

    alg = get_default_algorithms()[conf.algorithm]
    try:
        public = alg.prepare_key(conf.public_key or "")
    except Exception:  # a PEM the crypto library refuses: nothing verifies

        def refuse(msg: bytes, sig: bytes) -> bool:
            return False

        return refuse

    def check_public(msg: bytes, sig: bytes) -> bool:
        try:
            return bool(alg.verify(msg, public, sig))
        except Exception:
            return False

    return check_public


def verify(token: Token, conf: ConsumerConf, claims: list[str], now: float) -> str | None:
    """None when the token is good, else why not (logged; the client sees a generic 401)."""
    if token.header.get("alg") != conf.algorithm:
        return f"algorithm mismatch: {token.header.get('alg')!r}"
    if not verifier(conf)(token.signing_input, token.signature):
        return "signature mismatch"
    grace = conf.lifetime_grace_period
    for claim in claims:
        value = token.payload.get(claim)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f"'{claim}' claim must be a number"
        if claim == "exp" and now >= value + grace:
            return f"'exp' claim expired at {value}"
        if claim == "nbf" and now < value - grace:
            return f"'nbf' claim not valid until {value}"
    return None


# -- the plugin -------------------------------------------------------------------------------


def fetch_token(conf: Conf, ctx: RequestContext) -> tuple[str, str] | None:
    """(token, where it came from: header|query|cookie)."""
    value = ctx.get_header(conf.header)
    if value is not None:
        if value[:7] in ("Bearer ", "bearer "):
            value = value[7:]
        return value, "header"
    value = ctx.args.get(conf.query)
    if value is not None:
        return value, "query"
    value = ctx.cookies.get(conf.cookie)
    if value is not None:
        return value, "cookie"
    return None


def _hide(conf: Conf, ctx: RequestContext, source: str) -> None:
    if source == "header":
        ctx.set_request_header(conf.header, None)
    elif source == "query":
        remove_query_arg(ctx, conf.query)
    else:
        raw = ctx.get_header("cookie") or ""
        kept = [c for c in raw.split(";") if c.strip().partition("=")[0] != conf.cookie]
        ctx.set_request_header("Cookie", ";".join(kept).strip() or None)


class JwtAuth(Plugin):
    name = "jwt-auth"
    priority = 2510
    type = "auth"
    schema = Conf
    consumer_schema = ConsumerConf
    consumer_key_field = "key"

    def find(self, conf: Conf, ctx: RequestContext) -> Consumer | str:
        fetched = fetch_token(conf, ctx)
        if fetched is None:
            return "Missing JWT token in request"
        try:
            token = Token(fetched[0])
        except ValueError:
            return "JWT token invalid"
        user_key = token.payload.get(conf.key_claim_name)
        if user_key is None:
            return "missing user key in JWT token"
        consumer = ctx.find_consumer(self.name, str(user_key))
        if consumer is None:
            return "Invalid user key in JWT token"
        if verify(token, consumer.auth_conf, list(conf.claims_to_verify), time.time()):
            return "failed to verify jwt"
        if conf.store_in_ctx:
            ctx.set_var("jwt_auth_payload", token.payload)
        if conf.hide_credentials:
            _hide(conf, ctx, fetched[1])
        return consumer

    def rewrite(self, conf: Conf, ctx: RequestContext) -> Exit:
        found = self.find(conf, ctx)
        if isinstance(found, str):
            if conf.anonymous_consumer is None:
                challenge = {"WWW-Authenticate": f'Bearer realm="{conf.realm}"'}
                return 401, {"message": found}, challenge
            anon = anonymous_consumer(ctx, conf.anonymous_consumer)
            if anon is None:
                return 401, ANONYMOUS_FAILED
            found = anon
        ctx.attach_consumer(found)
        return None


PLUGINS = [JwtAuth]
