from __future__ import annotations

from typing import Any

import pytest

from tests.unit.plugins.ctx import decode, make_ctx
from tollway.errors import ConfigError
from tollway.plugins.builtin import consumer_restriction as cr
from tollway.plugins.builtin import ip_restriction as ipr
from tollway.plugins.kit import Consumer
from tollway.plugins.registry import load_registry


def test_consumer_restriction_schema() -> None:
    reg = load_registry()
    conf = reg.decode_conf("consumer-restriction", {"whitelist": ["a"]})
    assert (conf.type, conf.rejected_code) == ("consumer_name", 403)
    for bad in (
        {},
        {"whitelist": []},
        {"whitelist": ["a"], "type": "x"},
        {"whitelist": ["a"], "rejected_code": 100},
        {"allowed_by_methods": [{"user": "a", "methods": ["FOO"]}]},
    ):
        with pytest.raises(ConfigError, match="plugin consumer-restriction err"):
            reg.decode_conf("consumer-restriction", bad)


def access(raw: dict[str, Any], consumer: str | None = "jack", method: str = "GET") -> Any:
    ctx = make_ctx(method=method)
    if consumer is not None:
        ctx.attach_consumer(Consumer(consumer, None, {}, group_id="g1"))
    ctx.route_id = "r1"
    return cr.ConsumerRestriction().access(decode(cr.Conf, raw), ctx)


def test_consumer_restriction_decisions() -> None:
    assert access({"whitelist": ["jack"]}) is None
    assert access({"whitelist": ["rose"]}) == (403, {"message": "The consumer_name is forbidden."})
    assert access({"blacklist": ["jack"], "rejected_code": 401, "rejected_msg": "no"}) == (
        401,
        {"message": "no"},
    )
    assert access({"whitelist": ["jack"]}, consumer=None) == (
        401,
        {"message": "The request is rejected, please check the consumer_name for this request"},
    )
    assert access({"type": "route_id", "blacklist": ["r1"]}) == (
        403,
        {"message": "The route_id is forbidden."},
    )
    assert access({"type": "consumer_group_id", "whitelist": ["g1"]}) is None
    assert access({"type": "service_id", "whitelist": ["s"]})[0] == 401


def test_allowed_by_methods() -> None:
    rules = {"allowed_by_methods": [{"user": "jack", "methods": ["POST"]}]}
    assert access(rules, method="POST") is None
    assert access(rules, method="GET") is not None
    assert access(rules, consumer="rose") is None  # not named: allowed
    # A whitelisted consumer is not limited by methods.
    assert access({**rules, "whitelist": ["jack"]}, method="GET") is None


def test_ip_restriction_schema() -> None:
    reg = load_registry()
    conf = reg.decode_conf("ip-restriction", {"whitelist": ["127.0.0.1", "10.0.0.0/8", "::1"]})
    assert (conf.message, conf.response_code) == ("Your IP address is not allowed", 403)
    for bad in (
        {},
        {"whitelist": ["1.2.3.4"], "blacklist": ["1.2.3.4"]},
        {"whitelist": []},
        {"whitelist": ["999.1.1.1"]},
        {"blacklist": ["a"], "response_code": 401},
    ):
        with pytest.raises(ConfigError, match="plugin ip-restriction err"):
            reg.decode_conf("ip-restriction", bad)


@pytest.mark.parametrize(
    ("raw", "addr", "blocked"),
    [
        ({"whitelist": ["10.0.0.0/8"]}, "10.1.2.3", False),
        ({"whitelist": ["10.0.0.0/8"]}, "11.0.0.1", True),
        ({"blacklist": ["10.0.0.0/8", "2001:db8::/32"]}, "2001:db8::1", True),
        ({"blacklist": ["10.0.0.0/8"]}, "127.0.0.1", False),
    ],
)
def test_ip_restriction(raw: dict[str, Any], addr: str, blocked: bool) -> None:
    res = ipr.IpRestriction().access(decode(ipr.Conf, raw), make_ctx(remote_addr=addr))
    assert (res == (403, {"message": "Your IP address is not allowed"})) is blocked
