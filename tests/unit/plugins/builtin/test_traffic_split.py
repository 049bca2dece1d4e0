from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.plugins.ctx import decode, make_ctx
from tollway.errors import ConfigError
from tollway.plugins.builtin.traffic_split import (
    ROUTE,
    Compiled,
    Conf,
    Split,
    TrafficSplit,
    WeightedUpstream,
    inline_conf,
)
from tollway.plugins.registry import load_registry

PLUGIN = TrafficSplit()
UP_A = {"nodes": {"127.0.0.1:1981": 1}, "type": "roundrobin"}


class FakeSource:
    """The pipeline's upstream resolver, reduced to what set_upstream calls."""

    def __init__(self, ids: set[str]) -> None:
        self.ids = ids
        self.inline: list[Any] = []

    def upstream_by_id(self, upstream_id: str) -> Any:
        return f"id:{upstream_id}" if upstream_id in self.ids else None

    def inline_upstream(self, conf: Any) -> Any:
        self.inline.append(conf)
        return ("inline", conf)


def ctx_for(uri: str = "/", headers: dict[str, str] | None = None, ids: set[str] | None = None):  # type: ignore[no-untyped-def]
    ctx = make_ctx(uri, headers=headers)
    ctx.upstream_source = FakeSource(ids or {"1", "2"})
    return ctx


def check(raw: dict[str, Any]) -> Any:
    return load_registry().decode_conf("traffic-split", raw)


# -- schema ---------------------------------------------------------------------------------


def test_schema_accepts_apisix_examples() -> None:
    conf = check(
        {
            "rules": [
                {
                    "match": [
                        {"vars": [["arg_name", "==", "jack"], ["arg_age", "!", "<", "16"]]},
                        {"vars": [["arg_name", "==", "rose"], ["arg_age", "!", ">", "32"]]},
                    ],
                    "weighted_upstreams": [
                        {"upstream": {**UP_A, "timeout": {"connect": 15, "send": 15, "read": 15}}},
                        {"upstream_id": 1, "weight": 2},
                        {"weight": 1},
                    ],
                }
            ]
        }
    )
    assert conf.rules[0].weighted_upstreams[0].weight == 1
    assert check({}).rules is None
    # weighted_upstreams defaults to the route's own upstream, weight 1
    rule = check({"rules": [{"match": [{"vars": [["uri", "==", "/"]]}]}]}).rules[0]
    assert [(w.upstream_id, w.upstream, w.weight) for w in rule.weighted_upstreams] == [
        (None, None, 1)
    ]
    assert (
        check({"rules": [{"weighted_upstreams": [{}]}]}).rules[0].weighted_upstreams[0].weight == 1
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"rules": [{"match": [{"vars": [["arg_name", 123, "jack"]]}]}]},
            "failed to validate the 'vars' expression: invalid operator '123'",
        ),
        (
            {"rules": [{"match": [{}]}]},
            "failed to validate the 'vars' expression: missing argument rule",
        ),
        ({"rules": [{"weighted_upstreams": [{"weight": -1}]}]}, "weight"),
        ({"rules": [{"weighted_upstreams": [{"weight": 1.5}]}]}, "weight"),
        ({"rules": [{"weighted_upstreams": []}]}, "expect array to have at least 1 items"),
        ({"rules": [{"weighted_upstreams": [{}] * 21}]}, "expect array to have at most 20 items"),
        ({"rules": [{"weighted_upstreams": [{"upstream_id": "a b"}]}]}, "upstream_id"),
        ({"rules": [{"weighted_upstreams": [{"upstream_id": 0}]}]}, "upstream_id"),
        ({"rules": [{"unknown": 1}]}, "unknown"),
        ({"rules": {}}, "rules"),
        ({"other": 1}, "other"),
        (
            {"rules": [{"weighted_upstreams": [{"upstream": {**UP_A, "foo": 1}}]}]},
            'property "upstream" validation failed: additional properties forbidden, found foo',
        ),
        (
            {"rules": [{"weighted_upstreams": [{"upstream": {"type": "roundrobin"}}]}]},
            'property "upstream" validation failed',
        ),
    ],
)
def test_schema_rejects(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="plugin traffic-split err") as info:
        check(raw)
    assert message in str(info.value)


# -- the weighted choice --------------------------------------------------------------------


def split_of(entries: list[dict[str, Any]], seed: int = 0) -> Split:
    return Split([decode(WeightedUpstream, e) for e in entries], random.Random(seed))


@given(
    st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=6),
    st.integers(min_value=0, max_value=1000),
)
def test_every_cycle_gives_exact_shares(weights: list[int], seed: int) -> None:
    split = split_of([{"upstream_id": i + 1, "weight": w} for i, w in enumerate(weights)], seed)
    positive = [w for w in weights if w > 0]
    if not positive:
        cycle, expect = len(weights), dict.fromkeys(range(1, len(weights) + 1), 1)
    else:
        from math import gcd

        g = gcd(*positive)
        cycle = sum(positive) // g
        expect = {i + 1: w // g for i, w in enumerate(weights) if w > 0}
        if len(weights) == 1:
            expect = {1: 1}
    for _ in range(3):  # several cycles, each exact
        got = Counter(split.pick()[1] for _ in range(cycle))
        assert dict(got) == expect


def test_route_entry_and_inline_upstream_targets() -> None:
    split = split_of([{"upstream": UP_A, "weight": 2}, {"weight": 1}])
    got = Counter(t[0] for t in (split.pick() for _ in range(300)))
    assert got == {"inline": 200, "route": 100}
    assert inline_conf(UP_A)["timeout"] == {"connect": 15, "send": 15, "read": 15}


def test_duplicate_keys_merge_like_lua_tables() -> None:
    # server_list[upstream_id] = weight: the later entry replaces the earlier weight.
    split = split_of([{"upstream_id": 1, "weight": 5}, {"weight": 1}, {"upstream_id": 1}])
    got = Counter(split.pick() for _ in range(200))
    assert got == {("id", 1): 100, ROUTE: 100}


def test_inline_conf_keeps_only_what_apisix_copies() -> None:
    up = {
        **UP_A,
        "name": "a",
        "pass_host": "rewrite",
        "upstream_host": "x.test",
        "scheme": "https",
        "retries": 3,
        "timeout": {"connect": 1, "send": 2, "read": 3},
    }
    assert inline_conf(up) == {
        "name": "a",
        "type": "roundrobin",
        "pass_host": "rewrite",
        "upstream_host": "x.test",
        "nodes": {"127.0.0.1:1981": 1},
        "timeout": {"connect": 1, "send": 2, "read": 3},
    }


# -- rule matching --------------------------------------------------------------------------


def rules_conf(*rules: dict[str, Any]) -> Conf:
    return decode(Conf, {"rules": list(rules)})


def chosen(conf: Conf, uri: str, headers: dict[str, str] | None = None) -> Any:
    split = Compiled(conf, random.Random(0)).choose(make_ctx(uri, headers=headers).var)
    return None if split is None else split.pick()


def test_first_matching_rule_wins_or_between_matches_and_within_vars() -> None:
    conf = rules_conf(
        {
            "match": [
                {"vars": [["arg_name", "==", "jack"], ["arg_age", ">", 16]]},
                {"vars": [["http_release", "==", "blue"]]},
            ],
            "weighted_upstreams": [{"upstream_id": 1}],
        },
        {
            "match": [{"vars": [["arg_name", "==", "jack"]]}],
            "weighted_upstreams": [{"upstream_id": 2}],
        },
        {"weighted_upstreams": [{"upstream_id": 3}]},
    )
    assert chosen(conf, "/?name=jack&age=20") == ("id", 1)
    assert chosen(conf, "/", {"release": "blue"}) == ("id", 1)
    assert chosen(conf, "/?name=jack&age=10") == ("id", 2)  # AND failed: next rule
    assert chosen(conf, "/?name=rose") == ("id", 3)  # no match: always matches
    only = rules_conf({"match": [{"vars": [["arg_id", "==", "1"]]}], "weighted_upstreams": [{}]})
    assert chosen(only, "/?id=2") is None
    assert chosen(only, "/?id=1") == ROUTE


def test_empty_match_keeps_previous_verdict() -> None:
    conf = rules_conf(
        {"match": [{"vars": [["arg_a", "==", "1"]]}], "weighted_upstreams": [{"upstream_id": 1}]},
        {"match": [], "weighted_upstreams": [{"upstream_id": 2}]},
    )
    assert chosen(conf, "/?a=2") is None
    assert chosen(rules_conf({"match": [], "weighted_upstreams": [{"upstream_id": 2}]}), "/") == (
        "id",
        2,
    )


# -- access ---------------------------------------------------------------------------------


def test_access_sets_the_chosen_upstream() -> None:
    conf = rules_conf(
        {"match": [{"vars": [["arg_to", "==", "id"]]}], "weighted_upstreams": [{"upstream_id": 2}]},
        {
            "match": [{"vars": [["arg_to", "==", "inline"]]}],
            "weighted_upstreams": [{"upstream": UP_A}],
        },
        {
            "match": [{"vars": [["arg_to", "==", "gone"]]}],
            "weighted_upstreams": [{"upstream_id": 9}],
        },
    )
    ctx = ctx_for("/?to=id")
    assert PLUGIN.access(conf, ctx) is None and ctx.upstream_override == "id:2"
    ctx = ctx_for("/?to=inline")
    assert PLUGIN.access(conf, ctx) is None
    assert ctx.upstream_override == ("inline", inline_conf(UP_A))
    ctx = ctx_for("/?to=none")
    assert PLUGIN.access(conf, ctx) is None and ctx.upstream_override is None
    res = PLUGIN.access(conf, ctx_for("/?to=gone"))
    assert res is not None and res[0] == 502 and b"502 Bad Gateway" in res[1]


def test_access_without_rules_and_with_empty_rules() -> None:
    ctx = ctx_for()
    assert PLUGIN.access(decode(Conf, {}), ctx) is None and ctx.upstream_override is None
    res = PLUGIN.access(decode(Conf, {"rules": []}), ctx_for())
    assert res is not None and res[0] == 500


def test_picker_state_persists_per_conf() -> None:
    conf = rules_conf({"weighted_upstreams": [{"upstream_id": 1, "weight": 3}, {"weight": 1}]})
    got = Counter()
    for _ in range(40):
        ctx = ctx_for()
        PLUGIN.access(conf, ctx)
        got[ctx.upstream_override] += 1
    assert got == {"id:1": 30, None: 10}
