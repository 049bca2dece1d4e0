"""jwt-auth through the real process: HS256 and RS256 consumers."""

from __future__ import annotations

import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.gateway import Gateway, StartGateway
from tests.support.upstream import Upstream

SECRET = "a-secret-that-is-at-least-32-bytes-long!"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUB = (
    RSA_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)

CONFIG = """
routes:
  - id: jwt
    uri: /jwt
    plugins:
      jwt-auth: {}
    upstream: {nodes: {"%(up)s": 1}}
consumers:
  - username: jack
    plugins:
      jwt-auth: {key: user-key, secret: "%(secret)s"}
  - username: rose
    plugins:
      jwt-auth:
        key: rsa-key
        algorithm: RS256
        public_key: |
%(pub)s
#END
"""


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    pub = "\n".join("          " + line for line in RSA_PUB.strip().splitlines())
    text = CONFIG % {"up": upstream.addr, "secret": SECRET, "pub": pub}
    return standalone_gateway(text)


def test_missing_and_invalid(gw: Gateway) -> None:
    r = requests.get(gw.url("/jwt"))
    assert r.status_code == 401
    assert r.text == '{"message":"Missing JWT token in request"}\n'
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="jwt"'
    r = requests.get(gw.url("/jwt"), headers={"Authorization": "Bearer x.y"})
    assert r.json() == {"message": "JWT token invalid"}
    r = requests.get(gw.url("/jwt"), params={"jwt": jwt.encode({"key": "nope"}, SECRET)})
    assert r.json() == {"message": "Invalid user key in JWT token"}
    expired = jwt.encode({"key": "user-key", "exp": int(time.time()) - 5}, SECRET)
    r = requests.get(gw.url("/jwt"), headers={"Authorization": expired})
    assert r.status_code == 401 and r.json() == {"message": "failed to verify jwt"}


def test_hs256_and_rs256_pass(gw: Gateway) -> None:
    token = jwt.encode({"key": "user-key", "exp": int(time.time()) + 60}, SECRET)
    r = requests.get(gw.url("/jwt"), headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    token = jwt.encode({"key": "rsa-key"}, RSA_KEY, algorithm="RS256")
    r = requests.get(gw.url("/jwt"), cookies={"jwt": token})
    assert r.status_code == 200, r.text
