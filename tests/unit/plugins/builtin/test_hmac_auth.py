from __future__ import annotations

import asyncio
import base64
import calendar
import hashlib
import hmac
from email.utils import formatdate
from typing import Any

import pytest

from tests.unit.plugins.ctx import FakeIndex, decode, make_ctx
from tollway.errors import ConfigError
from tollway.plugins.builtin.hmac_auth import (
    Conf,
    ConsumerConf,
    HmacAuth,
    body_digest,
    decode_signature,
    parse_authorization,
    parse_http_time,
)
from tollway.plugins.kit import Consumer
from tollway.plugins.registry import load_registry

PLUGIN = HmacAuth()
REG = load_registry()
JACK = Consumer("jack", ConsumerConf(key_id="jack-key", secret_key="jack-secret"), {})
GUEST = Consumer("guest", ConsumerConf(key_id="guest-key", secret_key="x"), {})
OPAQUE = {"message": "client request can't be validated"}
NOW = 1_725_605_689  # Fri, 06 Sep 2024 06:54:49 GMT


def gmt(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def signed(
    method: str = "GET",
    uri: str = "/get",
    *,
    key_id: str = "jack-key",
    secret: str = "jack-secret",
    algorithm: str = "hmac-sha256",
    date: str | None = None,
    extra: dict[str, str] | None = None,
    headers_field: str = "@request-target date",
    digest: str | None = None,
) -> dict[str, str]:
    """Headers of a request signed the way the APISIX docs' client does."""
    date = date or gmt(NOW)
    hdrs = {"Date": date, **(extra or {})}
    if digest is not None:
        hdrs["Digest"] = digest
    lines = [key_id]
    for name in headers_field.split(" "):
        if name == "@request-target":
            lines.append(f"{method} {uri}")
        else:
            value = next((v for k, v in hdrs.items() if k.lower() == name.lower()), None)
            if value is not None:
                lines.append(f"{name}: {value}")
    algo = {"hmac-sha1": hashlib.sha1, "hmac-sha256": hashlib.sha256}.get(algorithm, hashlib.sha512)
    sig = hmac.new(secret.encode(), ("\n".join(lines) + "\n").encode(), algo).digest()
    hdrs["Authorization"] = (
        f'Signature keyId="{key_id}",algorithm="{algorithm}",'
        f'headers="{headers_field}",signature="{base64.b64encode(sig).decode()}"'
    )
    return hdrs


def ctx_with(uri: str = "/get", headers: dict[str, str] | None = None, method: str = "GET"):  # type: ignore[no-untyped-def]
    ctx = make_ctx(uri, headers=headers, method=method)
    index = FakeIndex()
    index.add("hmac-auth", "jack-key", JACK)
    index.add("hmac-auth", "guest-key", GUEST)
    ctx.consumers = index
    return ctx


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tollway.plugins.builtin.hmac_auth.time.time", lambda: float(NOW))


def run(conf_raw: dict[str, Any], ctx: Any) -> Any:
    conf = decode(Conf, conf_raw)
    fn = PLUGIN.phase_method("rewrite", conf)
    res = fn(conf, ctx)
    return asyncio.run(res) if asyncio.iscoroutine(res) else res


# -- schema ---------------------------------------------------------------------------------


def test_schema_defaults_and_consumer_schema() -> None:
    conf = REG.decode_conf("hmac-auth", {})
    assert conf.allowed_algorithms == ["hmac-sha1", "hmac-sha256", "hmac-sha512"]
    assert (conf.clock_skew, conf.signed_headers, conf.validate_request_body) == (300, None, False)
    assert conf.hide_credentials is False and conf.anonymous_consumer is None
    c = REG.decode_conf("hmac-auth", {"key_id": "k", "secret_key": "s"}, consumer=True)
    assert (c.key_id, c.secret_key) == ("k", "s")
    assert REG.get("hmac-auth").consumer_key_field == "key_id"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("raw", "consumer"),
    [
        ({"allowed_algorithms": []}, False),
        ({"allowed_algorithms": ["hmac-md5"]}, False),
        ({"clock_skew": 0}, False),
        ({"clock_skew": 1.5}, False),
        ({"signed_headers": [""]}, False),
        ({"signed_headers": ["x" * 51]}, False),
        ({"validate_request_body": "yes"}, False),
        ({"anonymous_consumer": ""}, False),
        ({"key_id": "k"}, True),
        ({"secret_key": "s"}, True),
        ({"key_id": "", "secret_key": "s"}, True),
        ({"key_id": "k", "secret_key": "s" * 257}, True),
    ],
)
def test_schema_rejects(raw: dict[str, Any], consumer: bool) -> None:
    with pytest.raises(ConfigError, match="plugin hmac-auth"):
        REG.decode_conf("hmac-auth", raw, consumer=consumer)


# -- parsing --------------------------------------------------------------------------------


def test_parse_authorization() -> None:
    assert parse_authorization(None) == "missing Authorization header"
    assert parse_authorization("Basic abc") == (
        "Authorization header does not start with 'Signature'"
    )
    p = parse_authorization(
        'Signature keyId="k",algorithm="hmac-sha1", headers="@request-target date x",'
        'signature="c2ln",junk'
    )
    assert not isinstance(p, str)
    assert (p.key_id, p.algorithm, p.signature, p.headers) == (
        "k",
        "hmac-sha1",
        "c2ln",
        ["@request-target", "date", "x"],
    )
    empty = parse_authorization("Signature")
    assert not isinstance(empty, str) and empty.key_id is None


def test_parse_http_time_like_nginx() -> None:
    t = calendar.timegm((1994, 11, 6, 8, 49, 37, 0, 0, 0))
    assert parse_http_time("Sun, 06 Nov 1994 08:49:37 GMT") == t
    assert parse_http_time("Sunday, 06-Nov-94 08:49:37 GMT") == t
    assert parse_http_time("Sun Nov  6 08:49:37 1994") == t
    assert parse_http_time("Xyz, 06 Nov 1994 08:49:37") == t  # weekday and zone not checked
    for bad in ["", "yesterday", "Sun, 31 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 1994 24:00:00 GMT"]:
        assert parse_http_time(bad) is None
    assert parse_http_time("Mon, 29 Feb 2021 00:00:00 GMT") is None
    assert parse_http_time("Thu, 29 Feb 2024 00:00:00 GMT") is not None


def test_decode_signature_like_nginx() -> None:
    assert decode_signature("YQ==") == b"a"
    assert decode_signature("YQ") == b"a"  # padding optional
    assert decode_signature("YQ==junk") == b"a"  # stops at the first '='
    assert decode_signature("Y") is None
    assert decode_signature("Y*==") is None


def test_body_digest_matches_apisix_docs() -> None:
    assert (
        body_digest(b'{"name": "world"}') == "SHA-256=78qzJuLwSpZ8HacsTdFCQJWxzPMOf8bYctRk2ySLpS8="
    )


# -- the rewrite phase ----------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["hmac-sha1", "hmac-sha256", "hmac-sha512"])
def test_correctly_signed_request_passes(algorithm: str) -> None:
    ctx = ctx_with("/get?b=2&a=1", signed(uri="/get?b=2&a=1", algorithm=algorithm))
    assert run({}, ctx) is None
    assert ctx.consumer is JACK and ctx.consumer_name == "jack"
    ops = ctx.up_header_ops or []
    assert all(name != "Authorization" for name, *_ in ops)  # kept by default
    assert ("X-Consumer-Username", "jack", False) in ops  # the upstream learns who called


def test_signed_custom_headers_and_missing_listed_header_is_skipped() -> None:
    hdrs = signed(extra={"X-Custom": "v1"}, headers_field="@request-target date x-custom x-absent")
    assert run({"signed_headers": ["x-custom"]}, ctx_with(headers=hdrs)) is None


@pytest.mark.parametrize(
    ("conf", "headers", "message"),
    [
        ({}, {}, "client request can't be validated: missing Authorization header"),
        (
            {},
            {"Authorization": "Bearer x"},
            "client request can't be validated: Authorization header does not start with "
            "'Signature'",
        ),
        ({}, {"Authorization": 'Signature algorithm="hmac-sha256"'}, OPAQUE["message"]),
        ({}, signed(key_id="nobody"), OPAQUE["message"]),
        ({}, signed(secret="wrong"), OPAQUE["message"]),
        ({"allowed_algorithms": ["hmac-sha512"]}, signed(), OPAQUE["message"]),
        ({}, signed(date=gmt(NOW - 301)), OPAQUE["message"]),
        ({"clock_skew": 600}, signed(date="not a date"), OPAQUE["message"]),
        ({"signed_headers": ["x-custom"]}, signed(), OPAQUE["message"]),
    ],
)
def test_rejections(conf: dict[str, Any], headers: dict[str, str], message: str) -> None:
    ctx = ctx_with(headers=headers)
    assert run(conf, ctx) == (401, {"message": message})
    assert ctx.consumer is None


def test_clock_skew_window_and_x_date() -> None:
    assert run({}, ctx_with(headers=signed(date=gmt(NOW + 300)))) is None
    assert run({"clock_skew": 1000}, ctx_with(headers=signed(date=gmt(NOW - 900)))) is None
    hdrs = signed(headers_field="@request-target x-date", extra={"X-Date": gmt(NOW)})
    del hdrs["Date"]
    assert run({}, ctx_with(headers=hdrs)) is None
    no_date = signed()
    del no_date["Date"]
    assert run({}, ctx_with(headers=no_date)) == (401, OPAQUE)


def test_request_target_uses_method_and_uri() -> None:
    hdrs = signed("GET", "/get")
    assert run({}, ctx_with("/get", hdrs, method="POST")) == (401, OPAQUE)
    assert run({}, ctx_with("/other", hdrs)) == (401, OPAQUE)


def test_hide_credentials_removes_authorization() -> None:
    ctx = ctx_with(headers=signed())
    assert run({"hide_credentials": True}, ctx) is None
    assert ("Authorization", None, False) in (ctx.up_header_ops or [])


def test_anonymous_consumer() -> None:
    ctx = ctx_with(headers={})
    assert run({"anonymous_consumer": "guest"}, ctx) is None and ctx.consumer is GUEST
    assert run({"anonymous_consumer": "nobody"}, ctx_with()) == (
        401,
        {"message": "Invalid user authorization"},
    )


def body_ctx(body: bytes | None, headers: dict[str, str]) -> Any:
    ctx = ctx_with("/post", headers, method="POST")

    async def reader(limit: int) -> bytes | None:
        return body

    ctx.body_reader = reader
    return ctx


def test_validate_request_body_digest() -> None:
    conf = decode(Conf, {"validate_request_body": True})
    assert asyncio.iscoroutinefunction(PLUGIN.phase_method("rewrite", conf))
    assert not asyncio.iscoroutinefunction(PLUGIN.phase_method("rewrite", decode(Conf, {})))
    body = b'{"name": "world"}'
    good = signed("POST", "/post", digest=body_digest(body))
    on = {"validate_request_body": True}
    assert run(on, body_ctx(body, good)) is None
    assert run(on, body_ctx(b"tampered", good)) == (401, OPAQUE)
    assert run(on, body_ctx(None, good)) == (401, OPAQUE)  # too large to buffer
    assert run(on, body_ctx(body, signed("POST", "/post"))) == (401, OPAQUE)  # no Digest
    # without a body the digest is that of ""
    assert run(on, body_ctx(b"", signed("POST", "/post", digest=body_digest(b"")))) is None
    # a bad signature is rejected before the body is looked at
    assert run(on, body_ctx(body, signed("POST", "/post", secret="no", digest="x"))) == (
        401,
        OPAQUE,
    )
