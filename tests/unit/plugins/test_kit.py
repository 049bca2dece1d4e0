"""The plugin kit's own API: the typed route/consumer views and the kit_* modules."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from tests.unit.plugins.ctx import FakeIndex, make_ctx
from tollway.config.source import KeyValue
from tollway.config.store import Store
from tollway.plugins.kit import Consumer, RequestContext
from tollway.plugins.kit_match import ExprError, compile_expr, compile_regex
from tollway.plugins.kit_upstream import WeightedRoundRobin, error_page, upstream_conf_error
from tollway.plugins.registry import load_registry
from tollway.runtime.compiler import Compiler
from tollway.settings import default_settings

LIMIT = {"count": 5, "time_window": 60}


def compiled(items: dict[str, object]) -> Compiler:
    store = Store()
    store.load(
        1, [KeyValue(f"/apisix/{k}", json.dumps(v).encode(), 1, 1) for k, v in items.items()]
    )
    comp = Compiler(default_settings(Path("/tmp/conf")), load_registry())
    asyncio.run(comp.rebuild(store))
    return comp


def matched(comp: Compiler, route_id: str) -> RequestContext:
    """A context as the pipeline leaves it after matching ``route_id``."""
    ctx = make_ctx("/a")
    route = comp.routes[route_id]
    ctx.route, ctx.route_id, ctx.service_id = route, route.id, route.service_id
    return ctx


def test_matched_route_shows_the_compiled_routes_identity() -> None:
    comp = compiled(
        {
            "services/s": {"plugins": {"limit-count": LIMIT}},
            "routes/1": {"uri": "/a", "name": "r1", "service_id": "s",
                         "upstream": {"nodes": {"127.0.0.1:1": 1}}},
        }
    )  # fmt: skip
    ctx = matched(comp, "1")
    route = ctx.matched_route
    assert route is not None
    assert (route.id, route.key, route.name, route.service_id) == (
        "1",
        "/apisix/routes/1",
        "r1",
        "s",
    )
    assert dict(route.plugins) == {"limit-count": LIMIT}  # merged with its service's
    assert make_ctx("/").matched_route is None


def test_is_route_conf_tells_the_routes_own_conf_from_an_equal_global_one() -> None:
    comp = compiled(
        {
            "global_rules/g": {"plugins": {"limit-count": LIMIT}},
            "routes/1": {"uri": "/a", "plugins": {"limit-count": LIMIT},
                         "upstream": {"nodes": {"127.0.0.1:1": 1}}},
        }
    )  # fmt: skip
    ctx = matched(comp, "1")
    own = [e.conf for e in comp.routes["1"].own_chain.access]
    global_ = [e.conf for e in comp.runtime.global_chain.access]
    assert own and global_ and own[0] == global_[0]
    assert ctx.is_route_conf(own[0])
    assert not ctx.is_route_conf(global_[0])
    assert not make_ctx("/").is_route_conf(own[0])  # no route matched


def test_consumer_by_name_reads_the_consumer_lookup() -> None:
    ctx = make_ctx("/")
    assert ctx.consumer_by_name("jack") is None  # no consumers at all
    index = FakeIndex()
    jack = Consumer("jack", None, {})
    index.add("key-auth", "k1", jack)
    ctx.consumers = index
    assert ctx.consumer_by_name("jack") is jack
    assert ctx.find_consumer("key-auth", "k1") is jack
    assert ctx.consumer_by_name("jill") is None


def test_weighted_round_robin_gives_each_position_its_share_per_cycle() -> None:
    wrr = WeightedRoundRobin([3, 1, 0, 2], random.Random(7))
    picks = Counter(wrr.pick() for _ in range(6 * 50))  # 50 cycles of sum(weights)/gcd
    assert picks == {0: 150, 1: 50, 3: 100}
    # all-zero weights: plain rotation (Lua's gcd 0)
    rot = WeightedRoundRobin([0, 0], random.Random(1))
    assert Counter(rot.pick() for _ in range(10)) == {0: 5, 1: 5}


def test_upstream_conf_error_uses_the_schema_words() -> None:
    assert upstream_conf_error({"nodes": {"127.0.0.1:80": 1}}) is None
    err = upstream_conf_error({"nodes": {"127.0.0.1:80": 1}, "retries": -1})
    assert err is not None and "retries" in err and not err.startswith("invalid configuration")


def test_matching_api_compiles_expressions_and_regexes() -> None:
    expr = compile_expr([["arg_x", "==", "1"]])
    assert expr.eval(make_ctx("/?x=1").var) and not expr.eval(make_ctx("/?x=2").var)
    with pytest.raises(ExprError):
        compile_expr([["arg_x", "no-such-op", "1"]])
    assert compile_regex("^/a(b+)$").search("/abb") is not None


def test_error_page_is_the_gateways_html() -> None:
    page = error_page(502)
    assert b"502" in page and b"<html>" in page


def test_get_header_finds_one_field_without_decoding_the_others() -> None:
    """``get_header`` (and ``header_by``, its form for a name prepared once) is ``headers``'
    value: any case, repeated fields joined in order, the recorded edits applied."""
    ctx = make_ctx("/", headers={"Host": "x", "ApiKey": "k1", "X-A": "1", "x-a": "2"})
    ctx.raw_headers.append((b"X-A", b"3"))
    assert ctx.get_header("apikey") == ctx.header_by("apikey", b"apikey") == "k1"
    assert ctx.get_header("X-A") == "1, 2, 3"
    assert ctx.get_header("x-missing") is None
    assert ctx._headers is None  # nothing decoded on the way
    assert ctx.get_header("X-A") == ctx.headers["x-a"]
    ctx = make_ctx("/", headers={"apikey": "k1"})
    ctx.attach_consumer(Consumer("jack", None, {}))
    assert ctx.get_header("x-consumer-username") == "jack"  # an edit, seen through the map


def test_request_length_sums_every_field() -> None:
    ctx = make_ctx("/a", method="POST", headers={"Host": "x", "Content-Length": "3"})
    ctx.raw_headers.append((b"X-Empty", b""))
    # "POST /a HTTP/1.1\r\n" + "Host: x\r\n" + "Content-Length: 3\r\n" + "X-Empty: \r\n" + "\r\n"
    assert ctx.request_length == 18 + 9 + 19 + 11 + 2
