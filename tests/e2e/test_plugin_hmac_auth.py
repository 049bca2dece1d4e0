"""hmac-auth through the real process: signed requests pass, APISIX's 401s otherwise."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from email.utils import formatdate

import pytest
import requests

from tests.support.gateway import Gateway, StartGateway
from tests.support.upstream import Upstream

CONFIG = """
routes:
  - id: hmac
    uris: [/hmac, /hmac/*]
    plugins:
      hmac-auth: {}
    upstream: {nodes: {"%(up)s": 1}}
  - id: hmac-body
    uri: /hmac-body
    plugins:
      hmac-auth: {validate_request_body: true, hide_credentials: true}
    upstream: {nodes: {"%(up)s": 1}}
  - id: hmac-headers
    uri: /hmac-headers
    plugins:
      hmac-auth: {signed_headers: [x-tenant], allowed_algorithms: [hmac-sha512]}
    upstream: {nodes: {"%(up)s": 1}}
consumers:
  - username: jack
    plugins:
      hmac-auth: {key_id: jack-key, secret_key: jack-secret}
      proxy-rewrite: {headers: {set: {X-Consumer-Plugin: jack}}}
#END
"""
OPAQUE = {"message": "client request can't be validated"}


@pytest.fixture(scope="module")
def gw(standalone_gateway: StartGateway, upstream: Upstream) -> Gateway:
    return standalone_gateway(CONFIG % {"up": upstream.addr})


def sign(
    method: str,
    target: str,
    *,
    key_id: str = "jack-key",
    secret: str = "jack-secret",
    algorithm: str = "hmac-sha256",
    date: str | None = None,
    extra: dict[str, str] | None = None,
    body: bytes | None = None,
) -> dict[str, str]:
    """A client as in the APISIX docs: keyId, request target and date (plus ``extra``)."""
    headers = {"Date": date or formatdate(time.time(), usegmt=True), **(extra or {})}
    lines = [key_id, f"{method} {target}", f"date: {headers['Date']}"]
    names = "@request-target date"
    for k, v in (extra or {}).items():
        lines.append(f"{k.lower()}: {v}")
        names += f" {k.lower()}"
    algo = hashlib.sha512 if algorithm == "hmac-sha512" else hashlib.sha256
    digest = hmac.new(secret.encode(), ("\n".join(lines) + "\n").encode(), algo).digest()
    headers["Authorization"] = (
        f'Signature keyId="{key_id}",algorithm="{algorithm}",headers="{names}",'
        f'signature="{base64.b64encode(digest).decode()}"'
    )
    if body is not None:
        headers["Digest"] = "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()
    return headers


def test_correctly_signed_request_passes(gw: Gateway) -> None:
    r = requests.get(gw.url("/hmac/x?b=2&a=1"), headers=sign("GET", "/hmac/x?b=2&a=1"), timeout=5)
    assert r.status_code == 200, r.text
    seen = r.json()["headers"]
    assert seen["authorization"].startswith('Signature keyId="jack-key"')
    assert seen["x-consumer-plugin"] == "jack"  # the consumer's plugins apply


def test_bad_signature_unknown_key_and_skewed_date(gw: Gateway) -> None:
    for headers in (
        sign("GET", "/hmac", secret="not-the-secret"),
        sign("GET", "/hmac", key_id="nobody"),
        sign("GET", "/hmac", date=formatdate(time.time() - 3600, usegmt=True)),
        sign("GET", "/other-path"),
    ):
        r = requests.get(gw.url("/hmac"), headers=headers, timeout=5)
        assert r.status_code == 401
        assert r.json() == OPAQUE
        assert "WWW-Authenticate" not in r.headers


def test_unparsable_authorization_says_why(gw: Gateway) -> None:
    r = requests.get(gw.url("/hmac"), timeout=5)
    assert r.status_code == 401
    assert r.json() == {
        "message": "client request can't be validated: missing Authorization header"
    }
    r = requests.get(gw.url("/hmac"), headers={"Authorization": "Basic Zm9vOmJhcg=="}, timeout=5)
    assert r.json() == {
        "message": "client request can't be validated: "
        "Authorization header does not start with 'Signature'"
    }


def test_body_digest_and_hidden_credentials(gw: Gateway) -> None:
    body = b'{"name": "world"}'
    r = requests.post(
        gw.url("/hmac-body"), data=body, headers=sign("POST", "/hmac-body", body=body), timeout=5
    )
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["body"] == body.decode()  # the upstream still gets the body
    assert "authorization" not in seen["headers"]
    r = requests.post(
        gw.url("/hmac-body"),
        data=b"tampered",
        headers=sign("POST", "/hmac-body", body=body),
        timeout=5,
    )
    assert (r.status_code, r.json()) == (401, OPAQUE)
    r = requests.post(
        gw.url("/hmac-body"), data=body, headers=sign("POST", "/hmac-body"), timeout=5
    )
    assert (r.status_code, r.json()) == (401, OPAQUE)  # no Digest header


def test_signed_headers_and_allowed_algorithms(gw: Gateway) -> None:
    ok = sign("GET", "/hmac-headers", algorithm="hmac-sha512", extra={"X-Tenant": "t1"})
    assert requests.get(gw.url("/hmac-headers"), headers=ok, timeout=5).status_code == 200
    unsigned_tenant = sign("GET", "/hmac-headers", algorithm="hmac-sha512")
    r = requests.get(gw.url("/hmac-headers"), headers=unsigned_tenant, timeout=5)
    assert (r.status_code, r.json()) == (401, OPAQUE)
    sha256 = sign("GET", "/hmac-headers", extra={"X-Tenant": "t1"})
    r = requests.get(gw.url("/hmac-headers"), headers=sha256, timeout=5)
    assert (r.status_code, r.json()) == (401, OPAQUE)
