"""request-id, real-ip, redirect, fault-injection, uri-blocker, ua- and referer-restriction."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import pytest

from tests.unit.plugins.ctx import decode, make_ctx
from tollway.errors import ConfigError
from tollway.plugins.builtin import fault_injection as fi
from tollway.plugins.builtin import real_ip as ri
from tollway.plugins.builtin import redirect as rd
from tollway.plugins.builtin import referer_restriction as rr
from tollway.plugins.builtin import request_id as rid
from tollway.plugins.builtin import ua_restriction as ua
from tollway.plugins.builtin import uri_blocker as ub
from tollway.plugins.registry import load_registry

REG = load_registry()


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("request-id", {"algorithm": "sha"}),
        ("request-id", {"range_id": {"length": 5}}),
        ("real-ip", {}),
        ("real-ip", {"source": "http_x", "trusted_addresses": ["nope"]}),
        ("redirect", {}),
        ("redirect", {"uri": "/a", "http_to_https": True}),
        ("redirect", {"regex_uri": ["(", "x"]}),
        ("redirect", {"http_to_https": True, "append_query_string": True}),
        ("fault-injection", {}),
        ("fault-injection", {"abort": {"http_status": 199}}),
        ("fault-injection", {"abort": {"http_status": 200, "percentage": 101}}),
        ("fault-injection", {"delay": {"duration": 1, "vars": [[["arg_a", "bad-op", "1"]]]}}),
        ("uri-blocker", {}),
        ("uri-blocker", {"block_rules": ["("]}),
        ("uri-blocker", {"block_rules": ["a", "a"]}),
        ("ua-restriction", {}),
        ("ua-restriction", {"allowlist": ["a"], "denylist": ["b"]}),
        ("referer-restriction", {"whitelist": ["bad host/"]}),
        ("referer-restriction", {}),
        # Header names that would break the head they are written into (issue #18).
        ("proxy-rewrite", {"headers": {"set": {"X-A\r\nX-Injected": "1"}}}),
        ("proxy-rewrite", {"headers": {"Bad:Name": "1"}}),
        ("proxy-rewrite", {"headers": {"remove": ["Bad Name"]}}),
        ("response-rewrite", {"headers": {"set": {"X-A\nX-B": "1"}}}),
    ],
)
def test_schemas_reject(name: str, raw: dict[str, Any]) -> None:
    with pytest.raises(
        ConfigError, match=f"failed to check the configuration of plugin {name} err"
    ):
        REG.decode_conf(name, raw)


def test_schema_defaults() -> None:
    c = REG.decode_conf("request-id", {})
    assert (c.header_name, c.include_in_response, c.algorithm) == ("X-Request-Id", True, "uuid")
    assert (c.range_id.length, len(c.range_id.char_set)) == (16, 62)
    assert REG.decode_conf("real-ip", {"source": "http_x_real_ip"}).recursive is False
    r = REG.decode_conf("redirect", {"uri": "/x"})
    assert (r.ret_code, r.encode_uri, r.append_query_string) == (302, False, False)
    u = REG.decode_conf("uri-blocker", {"block_rules": ["a"]})
    assert (u.rejected_code, u.case_insensitive) == (403, False)
    assert REG.decode_conf("ua-restriction", {"denylist": ["bot"]}).message == "Not allowed"
    assert (
        REG.decode_conf("referer-restriction", {"whitelist": ["*.a.com"]}).message
        == "Your referer host is not allowed"
    )


# -- request-id ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "pattern"),
    [
        ("uuid", r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"),
        ("uuidv7", r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"),
        ("nanoid", r"^[A-Za-z0-9_-]{21}$"),
        ("ksuid", r"^[0-9A-Za-z]{27}$"),
        ("range_id", r"^[a-zA-Z0-9]{16}$"),
    ],
)
def test_request_id_algorithms(algorithm: str, pattern: str) -> None:
    gen = rid.generator(decode(rid.Conf, {"algorithm": algorithm}))
    a, b = gen(), gen()
    assert re.match(pattern, a) and a != b


def test_uuid7_carries_the_time() -> None:
    u = uuid.UUID(rid.uuid7(0x0123456789AB, bytes(10)))
    assert u.version == 7 and u.int >> 80 == 0x0123456789AB


def test_request_id_keeps_incoming_and_sets_response() -> None:
    plugin, conf = rid.RequestId(), decode(rid.Conf, {})
    ctx = make_ctx(headers={"X-Request-Id": "abc"})
    plugin.rewrite(conf, ctx)
    plugin.header_filter(conf, ctx)
    assert ctx.get_response_header("X-Request-Id") == "abc"
    ctx = make_ctx()
    plugin.rewrite(conf, ctx)
    generated = ctx.headers["x-request-id"]
    ctx.resp_headers = []
    plugin.header_filter(conf, ctx)
    assert ctx.get_response_header("X-Request-Id") == generated


# -- real-ip ------------------------------------------------------------------------------


def real(raw: dict[str, Any], headers: dict[str, str], peer: str = "127.0.0.1") -> tuple[str, int]:
    ctx = make_ctx(headers=headers, remote_addr=peer)
    ri.RealIp().rewrite(decode(ri.Conf, raw), ctx)
    return ctx.remote_addr, ctx.remote_port


def test_real_ip() -> None:
    assert real({"source": "http_x_real_ip"}, {"X-Real-IP": "1.2.3.4"}) == ("1.2.3.4", 50000)
    assert real({"source": "http_x_real_ip"}, {"X-Real-IP": "1.2.3.4:81"}) == ("1.2.3.4", 81)
    assert real({"source": "http_x_real_ip"}, {"X-Real-IP": "[::2]:82"}) == ("::2", 82)
    assert real({"source": "http_x_real_ip"}, {"X-Real-IP": "junk"})[0] == "127.0.0.1"
    assert real({"source": "arg_realip"}, {})[0] == "127.0.0.1"
    xff = {"X-Forwarded-For": "9.9.9.9, 10.0.0.1, 10.0.0.2"}
    assert real({"source": "http_x_forwarded_for"}, xff)[0] == "10.0.0.2"
    trusted = {"source": "http_x_forwarded_for", "trusted_addresses": ["127.0.0.1", "10.0.0.0/8"]}
    assert real({**trusted, "recursive": True}, xff)[0] == "9.9.9.9"
    assert real(trusted, xff, peer="8.8.8.8")[0] == "8.8.8.8"  # untrusted peer: unchanged
    # real-ip.t TEST 7: an address with a port out of range is no address at all
    assert real({"source": "http_xff"}, {"XFF": "1.1.1.1:65536"})[0] == "127.0.0.1"
    with pytest.raises(ConfigError, match="failed to validate item 1: object matches none"):
        load_registry(None).decode_conf(
            "real-ip", {"source": "http_xff", "trusted_addresses": ["127.0.0.1/33"]}
        )


# -- redirect -----------------------------------------------------------------------------


def redirect(raw: dict[str, Any], uri: str = "/", method: str = "GET", **kw: Any) -> Any:
    return rd.Redirect().rewrite(decode(rd.Conf, raw), make_ctx(uri, method=method, **kw))


def test_redirect_uri_and_regex() -> None:
    assert redirect({"uri": "/new/$arg_a"}, "/old?a=x") == (302, None, {"Location": "/new/x"})
    assert redirect({"uri": "/n", "append_query_string": True, "ret_code": 301}, "/o?a=1") == (
        301,
        None,
        {"Location": "/n?a=1"},
    )
    conf = {"regex_uri": ["^/api/(.*)", "/v2/$1"]}
    assert redirect(conf, "/api/users") == (302, None, {"Location": "/v2/users"})
    assert redirect(conf, "/other") is None
    assert redirect({"uri": "/a b/c", "encode_uri": True})[2]["Location"] == "/a%20b/c"


def test_http_to_https() -> None:
    conf = {"http_to_https": True}
    assert redirect(conf, "/p?q=1", host="h.com") == (
        301,
        None,
        {"Location": "https://h.com/p?q=1"},
    )
    assert redirect(conf, "/p", method="POST", host="h.com")[0] == 308
    assert redirect(conf, "/p", scheme="https") is None
    assert redirect(conf, "/p", headers={"X-Forwarded-Proto": "https"}) is None
    plugin = rd.Redirect()
    plugin.https_port = 9443
    res = plugin.rewrite(decode(rd.Conf, conf), make_ctx("/p", host="h.com"))
    assert res == (301, None, {"Location": "https://h.com:9443/p"})


# -- fault-injection ----------------------------------------------------------------------


def fault(raw: dict[str, Any], uri: str = "/") -> Any:
    return asyncio.run(fi.FaultInjection().rewrite(decode(fi.Conf, raw), make_ctx(uri)))


def test_fault_injection_abort() -> None:
    raw = {"abort": {"http_status": 418, "body": "no $arg_name\n", "headers": {"X-F": "$arg_name"}}}
    assert fault(raw, "/?name=jack") == (418, "no jack\n", {"X-F": "jack"})
    assert fault({"abort": {"http_status": 200, "percentage": 0}}) is None
    vars_raw = {"abort": {"http_status": 403, "vars": [[["arg_name", "==", "jack"]]]}}
    assert fault(vars_raw, "/?name=jack") == (403, None, {})
    assert fault(vars_raw, "/?name=rose") is None


def test_fault_injection_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(d: float) -> None:
        slept.append(d)

    monkeypatch.setattr(fi.asyncio, "sleep", fake_sleep)
    assert fault({"delay": {"duration": 0.5}}) is None
    assert fault({"delay": {"duration": 1, "vars": [[["arg_a", "==", "1"]]]}}, "/?a=2") is None
    assert slept == [0.5]


def test_sample_hit() -> None:
    assert fi.sample_hit(None) and not fi.sample_hit(0)
    assert fi.sample_hit(50, lambda a, b: 50) and not fi.sample_hit(50, lambda a, b: 51)


# -- uri-blocker, ua-restriction, referer-restriction -------------------------------------


def test_uri_blocker() -> None:
    plugin = ub.UriBlocker()
    conf = decode(ub.Conf, {"block_rules": [r"root\.exe", "^/admin"]})
    assert plugin.rewrite(conf, make_ctx("/x/root.exe?a")) == (403, None)
    assert plugin.rewrite(conf, make_ctx("/ok?f=ROOT.exe")) is None
    assert plugin.rewrite(conf, make_ctx("/ok?f=root.exe")) == (403, None)  # query searched too
    conf = decode(
        ub.Conf, {"block_rules": ["^/ADMIN"], "case_insensitive": True, "rejected_msg": "m"}
    )
    assert plugin.rewrite(conf, make_ctx("/admin")) == (403, {"error_msg": "m"})


def test_ua_restriction() -> None:
    deny = decode(ua.Conf, {"denylist": ["(Baiduspider)", "bot"]})
    assert not ua.allowed(deny, "Mozilla Baiduspider/2.0") and ua.allowed(deny, "curl/8")
    assert not ua.allowed(deny, None)
    allow = decode(ua.Conf, {"allowlist": ["^curl"], "bypass_missing": True})
    assert ua.allowed(allow, "curl/8") and not ua.allowed(allow, "wget") and ua.allowed(allow, None)
    res = ua.UaRestriction().access(deny, make_ctx(headers={"User-Agent": "a bot"}))
    assert res == (403, {"message": "Not allowed"})


def test_referer_restriction() -> None:
    wl = decode(rr.Conf, {"whitelist": ["*.xx.com", "yy.com"]})
    assert rr.allowed(wl, "http://a.xx.com/page") and rr.allowed(wl, "https://yy.com:8443/")
    assert not rr.allowed(wl, "http://xx.com/") and not rr.allowed(wl, "http://zz.com")
    assert not rr.allowed(wl, None) and not rr.allowed(wl, "not a url")
    bl = decode(rr.Conf, {"blacklist": ["bad.com"], "bypass_missing": True})
    assert rr.allowed(bl, None) and not rr.allowed(bl, "http://BAD.com/x")
    res = rr.RefererRestriction().access(wl, make_ctx(headers={"Referer": "http://zz.com"}))
    assert res == (403, {"message": "Your referer host is not allowed"})


def test_http_variables_match_dashes_and_underscores_as_nginx() -> None:
    ctx = make_ctx(headers={"X-Dash": "d", "X_Under": "u"})
    assert ctx.var("http_x_dash") == "d"
    assert ctx.var("http_x_under") == "u"  # underscores_in_headers on (APISIX's default)
    assert ctx.var("http_x_missing") is None


def test_balancer_ip_and_port() -> None:
    ctx = make_ctx()
    assert ctx.var("balancer_ip") is None
    ctx.upstream_addr = "10.0.0.5:8080"
    assert (ctx.var("balancer_ip"), ctx.var("balancer_port")) == ("10.0.0.5", "8080")
    ctx.upstream_addr = "[::1]:81"
    assert (ctx.var("balancer_ip"), ctx.var("balancer_port")) == ("::1", "81")


def test_uri_blocker_sees_the_normalised_uri_too() -> None:
    # APISIX uri-blocker.t TEST 21/22: "/./internal/x" must not slip past "^/internal/"
    plugin = ub.UriBlocker()
    conf = decode(ub.Conf, {"block_rules": ["^/internal/"]})
    ctx = make_ctx("/./internal/x?aa=1")
    ctx.path = "/internal/x"  # what the pipeline's normalisation gives
    assert plugin.rewrite(conf, ctx) == (403, None)
    assert plugin.rewrite(conf, make_ctx("/public/internal/x")) is None


def test_user_regexes_run_on_re2() -> None:
    # issue #18: linear time; "$" keeps PCRE's final-newline meaning, so a decoded %0A cannot
    # slip past "^/admin$"; what RE2 cannot run is refused when the conf is checked
    plugin = ub.UriBlocker()
    conf = decode(ub.Conf, {"block_rules": ["^/admin$", "^/(a+)+$"]})
    ctx = make_ctx("/admin%0A")
    ctx.path = "/admin\n"
    assert plugin.rewrite(conf, ctx) == (403, None)
    assert plugin.rewrite(conf, make_ctx("/" + "a" * 50_000 + "!")) is None
    deny = decode(ua.Conf, {"denylist": ["^(a|aa)+$"]})
    assert ua.allowed(deny, "a" * 50_000 + "!") and not ua.allowed(deny, "aaa")
    for name, raw, words in [
        ("uri-blocker", {"block_rules": ["a(?=b)"]}, "failed to compile block rule a(?=b)"),
        ("ua-restriction", {"denylist": ["(a)\\1"]}, "invalid denylist: (a)\\1"),
        ("redirect", {"regex_uri": ["^/(a)", "/$2"]}, "capture group 2 is out of range"),
        ("redirect", {"regex_uri": ["^/a", "/$x"]}, "invalid capturing variable name"),
        ("proxy-rewrite", {"regex_uri": ["^/(?<=a)", "/"]}, "invalid perl operator"),
    ]:
        with pytest.raises(ConfigError) as e:
            REG.decode_conf(name, raw)
        assert words in str(e.value), (name, str(e.value))
    rewrite = {"regex_uri": ["^/a/(.*)", "/b/$1$$"]}
    assert redirect(rewrite, "/a/x") == (302, None, {"Location": "/b/x$"})


def test_escaped_variables_are_kept_as_written() -> None:
    # APISIX redirect.t TEST 11/12: "\$uri" is not a variable, its backslash stays
    got = redirect({"uri": "\\$uri/foo$uri\\$uri/bar"}, "/hello")
    assert got == (302, None, {"Location": "\\$uri/foo/hello\\$uri/bar"})


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"uri": "hello"}, 'property "uri" validation failed: failed to match pattern'),
        ({"host": "bad host/x"}, 'property "host" validation failed: failed to match pattern'),
        (
            {"regex_uri": ["^/test/(.*)", "/$`1"]},
            "invalid regex_uri(^/test/(.*), /$`1): invalid capturing variable name",
        ),
        ({"regex_uri": ["^/a", "/$1"]}, "invalid regex_uri(^/a, /$1): capture group 1"),
        ({"regex_uri": ["^/a", "/b", "^/c"]}, "The length of regex_uri should be an even number"),
    ],
)
def test_proxy_rewrite_checks(conf: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_registry(None).decode_conf("proxy-rewrite", conf)
    assert message in str(e.value)


def test_proxy_rewrite_allows_other_properties_and_dollar_dollar() -> None:
    # APISIX 3.x's schema has no additionalProperties: false (routes from 2.x keep loading)
    r = load_registry(None)
    assert r.decode_conf("proxy-rewrite", {"uri": "/x", "enable_websocket": True}).uri == "/x"
    from tollway.plugins.builtin.proxy_rewrite import _pair

    rx, template = _pair("^/a/(.*)", "/${1}/$$")
    assert rx.sub(template, "/a/b") == "/b/$"


def test_exclusive_bounds_in_the_validators_words() -> None:
    with pytest.raises(ConfigError) as e:
        load_registry(None).decode_conf("limit-count", {"count": -100, "time_window": 60})
    assert str(e.value).endswith(
        'property "count" validation failed: expected -100 to be greater than 0'
    )


@pytest.mark.parametrize(
    ("name", "conf", "message"),
    [
        # APISIX ip-restriction.t TEST 2-6/24
        ("ip-restriction", {"whitelist": ["10.255.256.0/24"]}, "but matches none"),
        ("ip-restriction", {"whitelist": ["::ffgg"]}, "but matches none"),
        ("ip-restriction", {"blacklist": []}, "but matches none"),
        ("ip-restriction", {"whitelist": ["::1/129"]}, "invalid ip address: ::1/129"),
        # limit-req.t TEST 2: the first of APISIX's required list
        ("limit-conn", {"burst": 0, "key": "remote_addr"}, 'property "conn" is required'),
        # proxy-rewrite3.t TEST 5: method is an enum
        ("proxy-rewrite", {"method": "GET1"}, "matches none of the enum values"),
        # basic-auth.t TEST 14: a conf that is not an object
        (
            "basic-auth",
            "blah",
            'invalid plugins configuration: invalid plugin conf "blah" for plugin [basic-auth]',
        ),
    ],
)
def test_messages_from_apisix_plugin_tests(name: str, conf: Any, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_registry(None).decode_conf(name, conf)
    assert message in str(e.value)
