from __future__ import annotations

from base64 import b64encode

import pytest

from tests.unit.plugins.ctx import FakeIndex, decode, make_ctx
from tollway.errors import ConfigError
from tollway.plugins.builtin.basic_auth import BasicAuth, Conf, ConsumerConf, parse_basic
from tollway.plugins.kit import Consumer, RequestContext
from tollway.plugins.registry import load_registry

PLUGIN = BasicAuth()
FOO = Consumer("foo", decode(ConsumerConf, {"username": "foo", "password": "bar"}), {})


def basic(text: str) -> str:
    return "Basic " + b64encode(text.encode()).decode()


def ctx_with(auth: str | None) -> RequestContext:
    ctx = make_ctx(headers={"Authorization": auth} if auth is not None else None)
    index = FakeIndex()
    index.add("basic-auth", "foo", FOO)
    ctx.consumers = index
    return ctx


def test_schema() -> None:
    reg = load_registry()
    conf = reg.decode_conf("basic-auth", {})
    assert (conf.hide_credentials, conf.realm, conf.anonymous_consumer) == (False, "basic", None)
    with pytest.raises(ConfigError, match="plugin basic-auth err"):
        reg.decode_conf("basic-auth", {"username": "foo"}, consumer=True)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (basic("foo:bar"), ("foo", "bar")),
        (basic(" foo : b a r "), ("foo", "bar")),
        (basic("foo:bar:baz"), ("foo", "bar")),
        ("Basic " + b64encode(b"foo:bar").decode().rstrip("="), ("foo", "bar")),
        ("xx Basic " + b64encode(b"foo:bar").decode(), ("foo", "bar")),
        (basic("foo"), None),
        (basic("foo:"), None),
        ("Basic !!!", None),
        ("Bearer abc", None),
        ("basic " + b64encode(b"foo:bar").decode(), None),
    ],
)
def test_parse(header: str, expected: tuple[str, str] | None) -> None:
    assert parse_basic(header) == expected


def test_messages_and_challenge() -> None:
    conf = decode(Conf, {})
    challenge = {"WWW-Authenticate": 'Basic realm="basic"'}
    assert PLUGIN.rewrite(conf, ctx_with(None)) == (
        401,
        {"message": "Missing authorization in request"},
        challenge,
    )
    assert PLUGIN.rewrite(conf, ctx_with("Basic ???")) == (
        401,
        {"message": "Invalid authorization in request"},
        challenge,
    )
    for bad in (basic("nobody:bar"), basic("foo:wrong")):
        res = PLUGIN.rewrite(conf, ctx_with(bad))
        assert res == (401, {"message": "Invalid user authorization"}, challenge)


def test_success_and_hide_credentials() -> None:
    ctx = ctx_with(basic("foo:bar"))
    assert PLUGIN.rewrite(decode(Conf, {"hide_credentials": True}), ctx) is None
    assert ctx.consumer_name == "foo" and "authorization" not in ctx.headers
