from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from tests.support.clock import Clock, fake_shared_tables
from tests.unit.plugins.ctx import make_ctx
from tollway.errors import ConfigError
from tollway.plugins.builtin.limit_count import Conf, LimitCount, count_step, windows
from tollway.plugins.builtin.limit_scope import counter_scope
from tollway.plugins.kit import Consumer
from tollway.plugins.registry import load_registry


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return fake_shared_tables(monkeypatch, "plugin-limit-count", now=100.0)


class Route:
    def __init__(self, plugins: dict[str, Any], versions: tuple[int, int, int] = (5, 0, 0)) -> None:
        self.key = "/apisix/routes/r1"
        self.plugins = plugins
        self.versions = versions


def conf_of(raw: dict[str, Any]) -> Conf:
    return msgspec.convert(raw, Conf)


def test_schema() -> None:
    reg = load_registry()
    conf = reg.decode_conf("limit-count", {"count": 2, "time_window": 60})
    assert (conf.key, conf.key_type, conf.rejected_code, conf.policy) == (
        "remote_addr",
        "var",
        503,
        "local",
    )
    assert conf.show_limit_quota_header is True and conf.allow_degradation is False
    reg.decode_conf("limit-count", {"count": "$http_n", "time_window": 60})
    reg.decode_conf(
        "limit-count", {"rules": [{"count": 1, "time_window": 2, "key": "$remote_addr"}]}
    )
    reg.decode_conf(
        "limit-count",
        {
            "count": 1,
            "time_window": 2,
            "policy": "redis-cluster",
            "redis_cluster_nodes": ["127.0.0.1:7000"],
            "redis_cluster_name": "c",
        },
    )


@pytest.mark.parametrize(
    "raw",
    [
        {"count": 1},
        {"count": 0, "time_window": 1},
        {"count": 1, "time_window": 1, "rejected_code": 199},
        {"count": 1, "time_window": 1, "key_type": "other"},
        {"count": 1, "time_window": 1, "rejected_msg": ""},
        {"count": 1, "time_window": 1, "policy": "redis"},
        {"count": 1, "time_window": 1, "policy": "redis-cluster", "redis_cluster_nodes": ["a:1"]},
        {
            "rules": [
                {"count": 1, "time_window": 1, "key": "a"},
                {"count": 2, "time_window": 1, "key": "a"},
            ]
        },
        {"rules": [], "count": 1, "time_window": 1},
    ],
)
def test_schema_rejects(raw: dict[str, Any]) -> None:
    with pytest.raises(
        ConfigError, match="failed to check the configuration of plugin limit-count"
    ):
        load_registry().decode_conf("limit-count", raw)


def test_count_step_fixed_window_from_first_hit() -> None:
    rec, res = count_step(None, 10.0, 2, 60)
    assert res == (True, 1, 60)
    rec, res = count_step(rec, 40.0, 2, 60)
    assert res == (True, 0, 30)
    rec, res = count_step(rec, 41.0, 2, 60)
    assert res == (False, 0, 29)


def test_access_counts_sets_headers_and_rejects(clock: Clock) -> None:
    plugin = LimitCount()
    conf = conf_of({"count": 2, "time_window": 10, "rejected_msg": "no"})
    route = Route({"limit-count": {"count": 2, "time_window": 10, "rejected_msg": "no"}})
    results = []
    for _ in range(3):
        ctx = make_ctx()
        ctx.route = route
        results.append((plugin.access(conf, ctx), (ctx.plugin_state or {}).get("limit-count")))
    assert results[0] == (
        None,
        {"X-RateLimit-Limit": "2", "X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "10"},
    )
    assert results[1][1]["X-RateLimit-Remaining"] == "0"  # type: ignore[index]
    assert results[2][0] == (
        503,
        {"error_msg": "no"},
        {"X-RateLimit-Limit": "2", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "10"},
    )
    clock.now += 10
    ctx = make_ctx()
    ctx.route = route
    assert plugin.access(conf, ctx) is None


def test_plugin_metadata_renames_the_quota_headers(clock: Clock) -> None:
    plugin = LimitCount()
    assert plugin.metadata_schema is not None
    plugin.set_metadata(
        msgspec.convert(
            {"limit_header": "L", "remaining_header": "R", "reset_header": "T"},
            plugin.metadata_schema,
        )
    )
    ctx = make_ctx()
    ctx.route = Route({"limit-count": {"count": 2, "time_window": 10}})
    assert plugin.access(conf_of({"count": 2, "time_window": 10}), ctx) is None
    assert (ctx.plugin_state or {})["limit-count"] == {"L": "2", "R": "1", "T": "10"}


def test_keys_count_separately_and_nil_key_falls_back_to_client(clock: Clock) -> None:
    plugin = LimitCount()
    conf = conf_of({"count": 1, "time_window": 10, "key": "http_x_user"})
    assert plugin.access(conf, make_ctx(headers={"X-User": "a"})) is None
    assert plugin.access(conf, make_ctx(headers={"X-User": "b"})) is None
    assert plugin.access(conf, make_ctx(headers={"X-User": "a"})) is not None
    assert plugin.access(conf, make_ctx(remote_addr="10.0.0.1")) is None
    assert plugin.access(conf, make_ctx(remote_addr="10.0.0.1")) is not None


def test_var_combination_and_var_count(clock: Clock) -> None:
    conf = conf_of(
        {
            "count": "$http_n",
            "time_window": 10,
            "key_type": "var_combination",
            "key": "$remote_addr $http_x",
        }
    )
    ctx = make_ctx(headers={"N": "3", "X": "1"})
    (w,) = windows(conf, ctx) or []
    assert (w.count, w.key) == (3, "127.0.0.1 1")
    assert windows(conf, make_ctx(headers={"N": "abc"})) is None
    assert LimitCount().access(conf, make_ctx(headers={"N": "abc"})) == (500, None)


def test_rules_skip_unresolved_keys() -> None:
    conf = conf_of(
        {
            "rules": [
                {"count": 1, "time_window": 10, "key": "$http_a"},
                {"count": 5, "time_window": 60, "key": "$http_b", "header_prefix": "b"},
            ]
        }
    )
    ws = windows(conf, make_ctx(headers={"B": "x"})) or []
    assert [(w.count, w.headers.limit_header) for w in ws] == [(5, "X-b-RateLimit-Limit")]


def test_only_redis_policies_take_the_async_path() -> None:
    # The local policy stays synchronous (the pipeline's fast path); Redis needs a coroutine.
    plugin = LimitCount()
    local = plugin.phase_method("access", conf_of({"count": 1, "time_window": 1}))
    assert not inspect.iscoroutinefunction(local)
    base = {"count": 1, "time_window": 1, "policy": "redis", "redis_host": "127.0.0.1"}
    assert inspect.iscoroutinefunction(plugin.phase_method("access", conf_of(base)))
    assert not inspect.iscoroutinefunction(plugin.phase_method("header_filter", conf_of(base)))


def test_counter_scope_by_owner() -> None:
    raw = {"count": 1, "time_window": 10}
    conf = conf_of(raw)
    ctx = make_ctx()
    ctx.route = Route({"limit-count": raw})
    scope = counter_scope(ctx, "limit-count", conf, conf_of)
    assert scope.startswith("/apisix/routes/r1:")
    # another part of the route changed, not the conf: the same counter (limit-count3.t TEST 3/4)
    ctx.route = Route({"limit-count": raw}, versions=(6, 0, 0))
    assert counter_scope(ctx, "limit-count", conf, conf_of) == scope
    # the conf changed: a new counter
    raw2 = {"count": 2, "time_window": 10}
    ctx.route = Route({"limit-count": raw2})
    assert counter_scope(ctx, "limit-count", conf_of(raw2), conf_of) != scope
    ctx.consumer = Consumer("jack", None, {"limit-count": dict(raw)}, version=3)
    assert counter_scope(ctx, "limit-count", conf, conf_of).startswith("/apisix/consumers/jack:")
    ctx.consumer = None
    ctx.route = Route({})
    assert counter_scope(ctx, "limit-count", conf, conf_of).startswith("global:")


def test_an_equal_global_rule_conf_counts_apart_from_the_routes() -> None:
    # limit-conn2.t TEST 3/4: the same conf on a global rule and on the route, two counters
    raw = {"count": 1, "time_window": 10}
    route_conf, global_conf = conf_of(raw), conf_of(raw)
    ctx = make_ctx()
    route = Route({"limit-count": raw})
    route.own_chain = SimpleNamespace(  # type: ignore[attr-defined]
        rewrite=(), access=(SimpleNamespace(conf=route_conf),), log=()
    )
    ctx.route = route
    assert counter_scope(ctx, "limit-count", route_conf, conf_of).startswith("/apisix/routes/r1:")
    assert counter_scope(ctx, "limit-count", global_conf, conf_of).startswith("global:")


def test_the_compiled_access_counts_per_scope_and_key(clock: Clock) -> None:
    # What the chain calls for a fixed local window: it keeps the last scope and the keys'
    # table slots, so a change of route or client must still count apart.
    plugin = LimitCount()
    raw = {"count": 1, "time_window": 10}
    conf = conf_of(raw)
    access = plugin.phase_method("access", conf)
    r1, r2 = Route({"limit-count": raw}), Route({"limit-count": raw})
    r2.key = "/apisix/routes/r2"

    def request(route: Route, addr: str = "127.0.0.1") -> Any:
        ctx = make_ctx(remote_addr=addr)
        ctx.route = route
        return access(conf, ctx)

    assert request(r1) is None
    assert request(r2) is None  # another route: its own counter
    assert request(r1)[0] == 503
    assert request(r1, "10.0.0.2") is None  # another client
    assert request(r2)[0] == 503
    clock.now += 10
    assert request(r1) is None and request(r2) is None  # the windows restart


def test_the_compiled_access_gives_the_quota_lines_the_head_appends(clock: Clock) -> None:
    # The request path (phase_method) hands the response its three lines as a head's pieces
    # (kit_head.EarlyHeaders): the constant parts encoded once, the numbers per request.
    plugin = LimitCount()
    raw = {"count": 3, "time_window": 10}
    conf = conf_of(raw)
    access = plugin.phase_method("access", conf)
    route = Route({"limit-count": raw})

    def lines() -> bytes:
        ctx = make_ctx()
        ctx.route = route
        assert access(conf, ctx) is None
        ((group, pieces),) = ctx.resp_early or []
        assert group.wire_names == pieces[0::4]
        return b"".join(pieces)

    assert (
        lines() == b"X-RateLimit-Limit: 3\r\nX-RateLimit-Remaining: 2\r\nX-RateLimit-Reset: 10\r\n"
    )
    clock.now += 2.5
    assert lines().endswith(b"X-RateLimit-Remaining: 1\r\nX-RateLimit-Reset: 8\r\n")  # rounded up
    assert lines().endswith(b"X-RateLimit-Remaining: 0\r\nX-RateLimit-Reset: 8\r\n")
    ctx = make_ctx()
    ctx.route = route
    assert access(conf, ctx) == (
        503,
        None,
        {"X-RateLimit-Limit": "3", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "8"},
    )
    assert ctx.resp_early is None  # a rejection carries them in its own answer
    # plugin_metadata renames them: the lines follow
    assert plugin.metadata_schema is not None
    plugin.set_metadata(
        msgspec.convert(
            {"limit_header": "L", "remaining_header": "R", "reset_header": "T"},
            plugin.metadata_schema,
        )
    )
    clock.now += 10
    assert lines() == b"L: 3\r\nR: 2\r\nT: 10\r\n"


def test_the_compiled_access_without_quota_headers_counts_and_sets_none(clock: Clock) -> None:
    # show_limit_quota_header false: phase_method gives the counting-only method
    plugin = LimitCount()
    raw = {"count": 2, "time_window": 10, "show_limit_quota_header": False}
    conf = conf_of(raw)
    access = plugin.phase_method("access", conf)
    route = Route({"limit-count": raw})
    answers = []
    for _ in range(3):
        ctx = make_ctx()
        ctx.route = route
        answers.append(access(conf, ctx))
        assert ctx.resp_early is None
    assert answers == [None, None, (503, None, {})]
    ctx = make_ctx()
    ctx.route = route
    assert plugin.access(conf, ctx) == (503, None, {})  # the method: the same counter
    assert ctx.plugin_state is None


def test_the_compiled_access_follows_the_runtimes_metadata(clock: Clock) -> None:
    # The names come from the request's runtime (ctx.upstream_source): looked up again when
    # its plugin_metadata map is another one, not per request.
    plugin = LimitCount()
    raw = {"count": 5, "time_window": 10}
    conf = conf_of(raw)
    access = plugin.phase_method("access", conf)
    route = Route({"limit-count": raw})
    renamed = {"limit-count": msgspec.convert({"limit_header": "L"}, plugin.metadata_schema)}

    def names(metadata: dict[str, Any]) -> list[bytes]:
        ctx = make_ctx()
        ctx.route = route
        ctx.upstream_source = SimpleNamespace(plugin_metadata=metadata)  # type: ignore[assignment]
        assert access(conf, ctx) is None
        ((_, pieces),) = ctx.resp_early or []
        return list(pieces[0::4])

    default = [b"X-RateLimit-Limit", b"X-RateLimit-Remaining", b"X-RateLimit-Reset"]
    none: dict[str, Any] = {}
    assert names(none) == default
    assert names(renamed) == [b"L", *default[1:]]
    assert names(renamed) == [b"L", *default[1:]]
    assert names(none) == default  # another runtime without it: the default names again


def test_a_key_variable_without_a_value_counts_the_client_address(clock: Clock) -> None:
    plugin = LimitCount()
    raw = {"count": 1, "time_window": 10, "key": "http_x_user"}
    conf = conf_of(raw)
    access = plugin.phase_method("access", conf)
    route = Route({"limit-count": raw})

    def request(addr: str, user: str | None = None) -> Any:
        ctx = make_ctx(remote_addr=addr, headers={"X-User": user} if user else None)
        ctx.route = route
        return access(conf, ctx)

    assert request("10.0.0.1") is None
    assert request("10.0.0.1")[0] == 503  # no header: counted by address
    assert request("10.0.0.2") is None
    assert request("10.0.0.1", "10.0.0.2")[0] == 503  # the header's value is the key
    assert request("10.0.0.1", "anna") is None
