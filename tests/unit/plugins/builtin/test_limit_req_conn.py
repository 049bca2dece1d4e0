from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from tests.support.clock import Clock, fake_shared_tables
from tests.unit.plugins.ctx import make_ctx
from tollway.errors import ConfigError
from tollway.plugins.builtin import limit_conn as lc
from tollway.plugins.builtin import limit_req as lr
from tollway.plugins.registry import load_registry


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return fake_shared_tables(monkeypatch, "plugin-limit-req", "plugin-limit-conn", now=100.0)


def test_limit_req_schema() -> None:
    reg = load_registry()
    conf = reg.decode_conf("limit-req", {"rate": 1, "burst": 0, "key": "remote_addr"})
    assert (conf.key_type, conf.rejected_code, conf.nodelay, conf.policy) == (
        "var",
        503,
        False,
        "local",
    )
    for bad in (
        {"rate": 0, "burst": 0, "key": "k"},
        {"rate": 1, "key": "k"},
        {"rate": 1, "burst": -1, "key": "k"},
        {"rate": 1, "burst": 0, "key": "k", "key_type": "constant"},
        {"rate": 1, "burst": 0, "key": "k", "policy": "redis"},
    ):
        with pytest.raises(ConfigError, match="plugin limit-req err"):
            reg.decode_conf("limit-req", bad)


def test_leaky_bucket_steps() -> None:
    rec, delay = lr.leaky_step(None, 0.0, 2.0, 1.0)
    assert delay == 0.0
    rec, delay = lr.leaky_step(rec, 0.0, 2.0, 1.0)  # excess 1 -> waits 0.5 s
    assert delay == 0.5
    same, delay = lr.leaky_step(rec, 0.0, 2.0, 1.0)  # excess 2 > burst: rejected, not counted
    assert delay is None and same == rec
    rec, delay = lr.leaky_step(rec, 0.5, 2.0, 1.0)  # drained by 1 in 0.5 s
    assert delay == 0.5


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_limit_req_rejects_and_delays(clock: Clock) -> None:
    plugin = lr.LimitReq()
    conf = msgspec.convert(
        {"rate": 1, "burst": 0, "key": "remote_addr", "rejected_msg": "x"}, lr.Conf
    )
    assert run(plugin.access(conf, make_ctx())) is None
    assert run(plugin.access(conf, make_ctx())) == (503, {"error_msg": "x"})
    assert run(plugin.access(conf, make_ctx(remote_addr="10.0.0.2"))) is None
    clock.now += 1
    assert run(plugin.access(conf, make_ctx())) is None


def test_limit_conn_schema() -> None:
    reg = load_registry()
    raw = {"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"}
    conf = reg.decode_conf("limit-conn", raw)
    assert (conf.key_type, conf.rejected_code, conf.only_use_default_delay) == ("var", 503, False)
    for bad in (
        {**raw, "conn": 0},
        {k: v for k, v in raw.items() if k != "default_conn_delay"},
        {k: v for k, v in raw.items() if k != "key"},
        {**raw, "burst": -1},
    ):
        with pytest.raises(ConfigError, match="plugin limit-conn err"):
            reg.decode_conf("limit-conn", bad)


def test_conn_delay() -> None:
    assert [lc.conn_delay(n, 2, 0.5) for n in (1, 2, 3, 4, 5)] == [0, 0, 0.5, 0.5, 1.0]


def test_limit_conn_counts_in_and_out(clock: Clock) -> None:
    plugin = lc.LimitConn()
    conf = msgspec.convert(
        {"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"}, lc.Conf
    )
    first = make_ctx()
    assert run(plugin.access(conf, first)) is None
    second = make_ctx()
    assert run(plugin.access(conf, second)) == (503, None)
    plugin.log(conf, second)  # the rejected one held nothing
    assert run(plugin.access(conf, make_ctx())) == (503, None)
    plugin.log(conf, first)
    third = make_ctx()
    assert run(plugin.access(conf, third)) is None
    plugin.log(conf, third)
    plugin.log(conf, third)  # idempotent


def test_limit_conn_burst_is_delayed(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(d: float) -> None:
        slept.append(d)

    monkeypatch.setattr(lc.asyncio, "sleep", fake_sleep)
    plugin = lc.LimitConn()
    conf = msgspec.convert(
        {"conn": 1, "burst": 1, "default_conn_delay": 0.2, "key": "remote_addr"}, lc.Conf
    )
    assert run(plugin.access(conf, make_ctx())) is None
    assert run(plugin.access(conf, make_ctx())) is None
    assert run(plugin.access(conf, make_ctx())) == (503, None)
    assert slept == [0.2]


def test_local_policies_and_undelayed_faults_run_without_a_coroutine(clock: Clock) -> None:
    # The pipeline's fast path: a plain call unless the request must wait (a delay).
    import inspect

    from tollway.plugins.builtin.fault_injection import Conf as FaultConf
    from tollway.plugins.builtin.fault_injection import FaultInjection
    from tollway.plugins.builtin.limit_conn import Conf as ConnConf
    from tollway.plugins.builtin.limit_conn import LimitConn
    from tollway.plugins.builtin.limit_req import Conf as ReqConf
    from tollway.plugins.builtin.limit_req import LimitReq

    req = msgspec.convert({"rate": 1, "burst": 0, "key": "remote_addr"}, ReqConf)
    conn = msgspec.convert(
        {"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"}, ConnConf
    )
    fault = msgspec.convert({"abort": {"http_status": 403}}, FaultConf)
    delayed = msgspec.convert({"delay": {"duration": 1}}, FaultConf)
    assert not inspect.iscoroutinefunction(LimitReq().phase_method("access", req))
    assert not inspect.iscoroutinefunction(LimitConn().phase_method("access", conn))
    assert not inspect.iscoroutinefunction(FaultInjection().phase_method("rewrite", fault))
    assert inspect.iscoroutinefunction(FaultInjection().phase_method("rewrite", delayed))
    ctx = make_ctx()
    assert LimitReq().access_local(req, ctx) is None
    assert LimitReq().access_local(req, ctx) == (503, None)  # over the rate, burst 0
    assert FaultInjection().rewrite_now(fault, make_ctx()) == (403, None, {})
