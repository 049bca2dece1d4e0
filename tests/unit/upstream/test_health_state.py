"""The target state machine (lua-resty-healthcheck counters) and the Checker, with no I/O."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from tollway.model import HealthChecks, Upstream
from tollway.upstream import (
    HEALTHY,
    MOSTLY_HEALTHY,
    MOSTLY_UNHEALTHY,
    UNHEALTHY,
    Checker,
    Target,
    TargetHealth,
    Thresholds,
    record,
    targets_for,
)

TH = Thresholds(
    successes=2,
    http_failures=3,
    tcp_failures=2,
    timeouts=3,
    healthy_statuses=frozenset({200, 302}),
    unhealthy_statuses=frozenset({500, 503}),
)


def checks(**conf: object) -> HealthChecks:
    return msgspec.convert(conf, HealthChecks)


def target(addr: str) -> Target:
    host, _, port = addr.rpartition(":")
    return Target(addr, host, int(port), int(port), host, host)


def test_tcp_failures_reach_the_threshold() -> None:
    t = TargetHealth()
    assert record(t, TH, "tcp", 0, 0.0) is False
    assert t.state == MOSTLY_HEALTHY and t.tcp_failure == 1  # still routed
    assert record(t, TH, "tcp", 0, 1.0) is True
    assert t.state == UNHEALTHY and not t.healthy and t.unhealthy_since == 1.0


def test_failure_kinds_count_separately() -> None:
    t = TargetHealth()
    record(t, TH, "tcp", 0, 0)
    record(t, TH, "timeout", 0, 0)
    record(t, TH, "http", 500, 0)
    record(t, TH, "timeout", 0, 0)
    assert (t.tcp_failure, t.timeout_failure, t.http_failure) == (1, 2, 1)
    assert t.healthy
    record(t, TH, "timeout", 0, 0)
    assert t.state == UNHEALTHY


def test_success_resets_failures_and_failure_resets_successes() -> None:
    t = TargetHealth()
    record(t, TH, "http", 500, 0)
    record(t, TH, "http", 500, 0)
    record(t, TH, "http", 200, 0)  # a success in mostly_healthy: failures cleared
    assert t.counters() == {"success": 1, "http_failure": 0, "tcp_failure": 0, "timeout_failure": 0}
    record(t, TH, "http", 500, 0)
    assert t.success == 0 and t.http_failure == 1


def test_recovery_goes_through_mostly_unhealthy() -> None:
    t = TargetHealth()
    for _ in range(2):
        record(t, TH, "tcp", 0, 0)
    assert t.state == UNHEALTHY
    assert record(t, TH, "success", 0, 1) is False
    assert t.state == MOSTLY_UNHEALTHY and not t.healthy
    assert record(t, TH, "http", 302, 2) is True
    assert t.state == HEALTHY


def test_reports_of_the_current_full_state_are_not_counted() -> None:
    t = TargetHealth()
    record(t, TH, "success", 0, 0)
    assert t.success == 0  # fully healthy: successes are not counted (lua incr_counter)
    for _ in range(2):
        record(t, TH, "tcp", 0, 0)
    record(t, TH, "tcp", 0, 0)
    assert t.tcp_failure == 2


def test_statuses_in_neither_list_are_ignored_and_0_is_a_failure() -> None:
    t = TargetHealth()
    assert record(t, TH, "http", 404, 0) is False
    assert t.counters()["http_failure"] == 0
    record(t, TH, "http", 0, 0)  # no parsable status line
    assert t.http_failure == 1


def test_a_zero_threshold_disables_that_counter() -> None:
    th = Thresholds(0, 0, 0, 0, frozenset({200}), frozenset({500}))
    t = TargetHealth()
    for outcome in ("tcp", "timeout", "http"):
        assert record(t, th, outcome, 500, 0) is False
    assert t.state == HEALTHY and t.counters() == TargetHealth().counters()


@given(st.lists(st.sampled_from(["success", "tcp", "timeout", "http200", "http500"]), max_size=80))
def test_invariants_on_any_sequence(seq: list[str]) -> None:
    t = TargetHealth()
    for step in seq:
        outcome, status = ("http", int(step[4:])) if step.startswith("http") else (step, 0)
        was = t.healthy
        flipped = record(t, TH, outcome, status, 0)
        assert flipped == (was != t.healthy)
        failures = (t.http_failure, t.tcp_failure, t.timeout_failure)
        if outcome == "success" or status == 200:
            assert failures == (0, 0, 0) or t.state == HEALTHY
        else:
            assert t.success == 0
        assert max(t.success, *failures) <= 255
        # The state agrees with the counters that reached a threshold.
        if t.tcp_failure >= 2 or t.timeout_failure >= 3 or t.http_failure >= 3:
            assert t.state == UNHEALTHY
        if t.success >= 2:
            assert t.state == HEALTHY


def test_checker_keeps_state_when_the_node_list_changes() -> None:
    c = Checker("/apisix/upstreams/1", checks(active={}))
    c.set_targets([target("10.0.0.1:80"), target("10.0.0.2:80")])
    for _ in range(2):
        c.report("10.0.0.2:80", "tcp", 0, 0, active=True)
    assert c.unhealthy() == ["10.0.0.2:80"]
    changed = c.set_targets([target("10.0.0.1:80"), target("10.0.0.2:80"), target("10.0.0.3:80")])
    assert changed is False
    assert c.unhealthy() == ["10.0.0.2:80"]
    assert c.health["10.0.0.2:80"].tcp_failure == 2  # counters kept too
    assert c.set_targets([target("10.0.0.1:80")]) is True  # the unhealthy one is gone
    assert c.unhealthy() == []
    # Coming back later, it is a new target: healthy.
    c.set_targets([target("10.0.0.1:80"), target("10.0.0.2:80")])
    assert c.unhealthy() == []


def test_checker_keeps_state_when_its_settings_change() -> None:
    c = Checker("k", checks(active={}))
    c.set_targets([target("10.0.0.1:80")])
    for _ in range(2):
        c.report("10.0.0.1:80", "tcp", 0, 0, active=True)
    c.set_conf(checks(active={"healthy": {"successes": 1}}))
    assert c.unhealthy() == ["10.0.0.1:80"]
    c.report("10.0.0.1:80", "success", 0, 0, active=True)
    assert c.unhealthy() == []


def test_reports_need_the_matching_check_kind() -> None:
    c = Checker("k", checks(active={}))
    c.set_targets([target("10.0.0.1:80")])
    for _ in range(10):
        assert c.report("10.0.0.1:80", "tcp", 0, 0, active=False) is False  # no passive
    assert c.report("10.9.9.9:80", "tcp", 0, 0, active=True) is False  # unknown target
    assert c.unhealthy() == []


def test_passive_only_recovers_after_the_period() -> None:
    c = Checker("k", checks(passive={}), recover_after=10.0)
    c.set_targets([target("10.0.0.1:80"), target("10.0.0.2:80")])
    assert c.passive_only
    for now in (100.0, 101.0):
        c.report("10.0.0.1:80", "tcp", 0, now, active=False)
    assert c.unhealthy() == ["10.0.0.1:80"]
    assert c.next_recovery() == 111.0
    assert c.recover(110.9) is False
    assert c.recover(111.0) is True
    assert c.unhealthy() == [] and c.health["10.0.0.1:80"].tcp_failure == 0
    assert c.next_recovery() is None


def test_active_checks_do_not_recover_by_time() -> None:
    c = Checker("k", checks(active={}, passive={}), recover_after=1.0)
    c.set_targets([target("10.0.0.1:80")])
    for _ in range(2):
        c.report("10.0.0.1:80", "tcp", 0, 0, active=False)
    assert c.next_recovery() is None
    assert c.recover(1e9) is False
    assert c.unhealthy() == ["10.0.0.1:80"]


def test_groups_and_description() -> None:
    c = Checker("/apisix/routes/r", checks(active={"type": "tcp"}))
    c.set_targets([target("10.0.0.1:80"), target("10.0.0.2:81")])
    for _ in range(2):
        c.report("10.0.0.2:81", "timeout", 0, 0, active=True)
    c.report("10.0.0.2:81", "timeout", 0, 0, active=True)
    assert [t.addr for t in c.group(True)] == ["10.0.0.1:80"]
    assert [t.addr for t in c.group(False)] == ["10.0.0.2:81"]
    d = c.describe()
    assert d["name"] == "/apisix/routes/r" and d["type"] == "tcp"
    assert d["nodes"][1] == {
        "ip": "10.0.0.2",
        "port": 81,
        "hostname": "10.0.0.2",
        "status": UNHEALTHY,
        "counter": {"success": 0, "http_failure": 0, "tcp_failure": 0, "timeout_failure": 3},
    }


def up(conf: dict[str, object]) -> Upstream:
    return msgspec.convert(conf, Upstream)


def test_targets_follow_dns_and_apisix_probe_host_rules() -> None:
    u = up(
        {
            "nodes": [
                {"host": "api.example", "port": 8080, "weight": 1},
                {"host": "10.0.0.9", "weight": 1},
                {"host": "[::1]", "port": 81, "weight": 1},
            ],
            "pass_host": "node",
            "checks": {"active": {"port": 9000, "host": "probe.example"}},
        }
    )
    ts = targets_for(u, {"api.example": ("10.0.0.1", "fe80::1")})
    assert [(t.addr, t.ip, t.port, t.node_port, t.hostname, t.host_header) for t in ts] == [
        ("10.0.0.1:8080", "10.0.0.1", 9000, 8080, "api.example", "api.example"),
        ("[fe80::1]:8080", "fe80::1", 9000, 8080, "api.example", "api.example"),
        ("10.0.0.9:80", "10.0.0.9", 9000, 80, "10.0.0.9", "probe.example"),
        ("[::1]:81", "::1", 9000, 81, "[::1]", "probe.example"),
    ]
    rewrite = up(
        {
            "nodes": {"10.0.0.1:80": 1},
            "pass_host": "rewrite",
            "upstream_host": "svc.internal",
            "checks": {"active": {}},
        }
    )
    assert targets_for(rewrite, {})[0].host_header == "svc.internal"
