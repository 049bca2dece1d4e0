from __future__ import annotations

import pytest

from tests.unit.plugins.ctx import FakeIndex, decode, make_ctx
from tollway.errors import ConfigError
from tollway.plugins.builtin.key_auth import Conf, KeyAuth
from tollway.plugins.kit import Consumer
from tollway.plugins.registry import load_registry

PLUGIN = KeyAuth()
JACK = Consumer("jack", None, {})


def ctx_with(uri: str = "/", headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    ctx = make_ctx(uri, headers=headers)
    index = FakeIndex()
    index.add("key-auth", "k1", JACK)
    index.add("key-auth", "g", Consumer("guest", None, {}))
    ctx.consumers = index
    return ctx


def test_schema_defaults_and_consumer_schema() -> None:
    reg = load_registry()
    conf = reg.decode_conf("key-auth", {})
    assert (conf.header, conf.query, conf.hide_credentials, conf.realm) == (
        "apikey",
        "apikey",
        False,
        "key",
    )
    assert reg.decode_conf("key-auth", {"key": "abc"}, consumer=True).key == "abc"
    with pytest.raises(ConfigError, match="failed to check the configuration of plugin key-auth"):
        reg.decode_conf("key-auth", {}, consumer=True)
    with pytest.raises(ConfigError):
        reg.decode_conf("key-auth", {"hide_credentials": "yes"})


def test_missing_and_invalid_key() -> None:
    conf = decode(Conf, {})
    assert PLUGIN.rewrite(conf, ctx_with()) == (
        401,
        {"message": "Missing API key in request"},
        {"WWW-Authenticate": 'apikey realm="key"'},
    )
    res = PLUGIN.rewrite(conf, ctx_with(headers={"apikey": "zz"}))
    assert res is not None and res[1] == {"message": "Invalid API key in request"}


def test_header_then_query_and_consumer_attached() -> None:
    conf = decode(Conf, {})
    ctx = ctx_with("/?apikey=k1")
    assert PLUGIN.rewrite(conf, ctx) is None
    assert ctx.consumer is JACK and ctx.consumer_name == "jack"
    ctx = ctx_with("/?apikey=k1", headers={"apikey": "bad"})
    assert PLUGIN.rewrite(conf, ctx) is not None


def test_hide_credentials() -> None:
    conf = decode(Conf, {"hide_credentials": True})
    ctx = ctx_with(headers={"apikey": "k1"})
    assert PLUGIN.rewrite(conf, ctx) is None
    assert "apikey" not in ctx.headers
    ctx = ctx_with("/p?a=1&apikey=k1&b=x%20y")
    assert PLUGIN.rewrite(conf, ctx) is None
    assert ctx.up_uri == "/p?a=1&b=x%20y"
    assert ctx.var("arg_apikey") is None and ctx.var("arg_a") == "1"


def test_anonymous_consumer() -> None:
    conf = decode(Conf, {"anonymous_consumer": "guest"})
    ctx = ctx_with()
    assert PLUGIN.rewrite(conf, ctx) is None
    assert ctx.consumer_name == "guest"
    conf = decode(Conf, {"anonymous_consumer": "nobody"})
    assert PLUGIN.rewrite(conf, ctx_with()) == (401, {"message": "Invalid user authorization"})
