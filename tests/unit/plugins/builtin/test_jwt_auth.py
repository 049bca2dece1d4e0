from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.unit.plugins.ctx import FakeIndex, decode, make_ctx
from tollway.errors import ConfigError
from tollway.plugins.builtin.jwt_auth import Conf, ConsumerConf, JwtAuth, Token, verify
from tollway.plugins.kit import Consumer, RequestContext
from tollway.plugins.registry import load_registry

PLUGIN = JwtAuth()
SECRET = "my-secret-key-which-is-long-enough-0123"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUB = (
    RSA_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def consumer(**conf: Any) -> Consumer:
    return Consumer(conf["key"], decode(ConsumerConf, conf), {})


def sign(payload: dict[str, Any], key: Any = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=alg)


def ctx_with(uri: str = "/", headers: dict[str, str] | None = None) -> RequestContext:
    ctx = make_ctx(uri, headers=headers)
    index = FakeIndex()
    index.add("jwt-auth", "user-key", consumer(key="user-key", secret=SECRET))
    index.add("jwt-auth", "rsa-key", consumer(key="rsa-key", algorithm="RS256", public_key=RSA_PUB))
    ctx.consumers = index
    return ctx


def run(ctx: RequestContext, **raw: Any) -> Any:
    return PLUGIN.rewrite(decode(Conf, raw), ctx)


def test_schema() -> None:
    reg = load_registry()
    conf = reg.decode_conf("jwt-auth", {})
    assert (conf.header, conf.query, conf.cookie, conf.key_claim_name) == (
        "authorization",
        "jwt",
        "jwt",
        "key",
    )
    assert conf.claims_to_verify == ["exp", "nbf"] and conf.hide_credentials is False
    c = reg.decode_conf("jwt-auth", {"key": "k", "secret": "s"}, consumer=True)
    assert (c.algorithm, c.exp, c.base64_secret, c.lifetime_grace_period) == (
        "HS256",
        86400,
        False,
        0,
    )
    assert reg.decode_conf("jwt-auth", {"key": "k"}, consumer=True).secret  # generated
    for bad in (
        {"key": "k", "algorithm": "RS256"},
        {"key": "k", "algorithm": "XX256", "secret": "s"},
        {"key": "", "secret": "s"},
        {"key": "k", "secret": "!!", "base64_secret": True},
    ):
        with pytest.raises(ConfigError, match="plugin jwt-auth err"):
            reg.decode_conf("jwt-auth", bad, consumer=True)
    with pytest.raises(ConfigError):
        reg.decode_conf("jwt-auth", {"claims_to_verify": ["iat"]})


def test_messages() -> None:
    challenge = {"WWW-Authenticate": 'Bearer realm="jwt"'}
    assert run(ctx_with()) == (401, {"message": "Missing JWT token in request"}, challenge)
    assert run(ctx_with(headers={"Authorization": "abc"}))[1] == {"message": "JWT token invalid"}
    no_key = sign({"sub": "x"})
    assert run(ctx_with(f"/?jwt={no_key}"))[1] == {"message": "missing user key in JWT token"}
    unknown = sign({"key": "nobody"})
    assert run(ctx_with(f"/?jwt={unknown}"))[1] == {"message": "Invalid user key in JWT token"}
    forged = sign({"key": "user-key"}, key="another-secret-that-is-long-enough")
    assert run(ctx_with(f"/?jwt={forged}"))[1] == {"message": "failed to verify jwt"}
    expired = sign({"key": "user-key", "exp": int(time.time()) - 10})
    assert run(ctx_with(f"/?jwt={expired}"))[1] == {"message": "failed to verify jwt"}
    assert run(ctx_with(f"/?jwt={expired}"), claims_to_verify=["nbf"]) is None


def test_header_bearer_query_cookie_and_consumer() -> None:
    token = sign({"key": "user-key", "exp": int(time.time()) + 60})
    for ctx in (
        ctx_with(headers={"Authorization": f"Bearer {token}"}),
        ctx_with(headers={"Authorization": token}),
        ctx_with(f"/?jwt={token}"),
        ctx_with(headers={"Cookie": f"a=b; jwt={token}"}),
    ):
        assert run(ctx) is None
        assert ctx.consumer_name == "user-key"


def test_rs256_and_algorithm_confusion() -> None:
    token = sign({"key": "rsa-key"}, key=RSA_KEY, alg="RS256")
    assert run(ctx_with(f"/?jwt={token}")) is None
    # An HS256 token signed with the public key text must not pass for an RS256 consumer.
    conf = decode(ConsumerConf, {"key": "rsa-key", "algorithm": "RS256", "public_key": RSA_PUB})
    import base64
    import hashlib
    import hmac
    import json

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"key": "rsa-key"}).encode())
    sig = hmac.new(RSA_PUB.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert verify(Token(f"{head}.{body}.{b64(sig)}"), conf, [], time.time()) is not None


def test_grace_period_and_nbf() -> None:
    conf = decode(ConsumerConf, {"key": "k", "secret": SECRET, "lifetime_grace_period": 30})
    now = 1000.0
    assert verify(Token(sign({"exp": 990})), conf, ["exp"], now) is None
    assert verify(Token(sign({"exp": 960})), conf, ["exp"], now) is not None
    assert verify(Token(sign({"nbf": 1020})), conf, ["nbf"], now) is None
    assert verify(Token(sign({"nbf": 1040})), conf, ["nbf"], now) is not None


def test_hide_credentials() -> None:
    token = sign({"key": "user-key"})
    ctx = ctx_with(f"/p?jwt={token}&a=1")
    assert run(ctx, hide_credentials=True) is None
    assert ctx.up_uri == "/p?a=1"
    ctx = ctx_with(headers={"Cookie": f"a=b; jwt={token}"})
    assert run(ctx, hide_credentials=True) is None
    assert ctx.headers["cookie"] == "a=b"
