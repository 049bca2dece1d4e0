from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.plugins.ctx import decode, make_ctx
from tollway.errors import ConfigError
from tollway.plugins.builtin.proxy_mirror import (
    MAX_MIRROR_BODY,
    Conf,
    MirrorClient,
    ProxyMirror,
    Timeouts,
    mirror_headers,
    mirror_uri,
    parse_duration,
    sampled,
)
from tollway.plugins.outbound import Endpoint, request_bytes
from tollway.plugins.registry import load_registry

REG = load_registry()


def conf_of(**kw: Any) -> Conf:
    return decode(Conf, {"host": "http://127.0.0.1:1986", **kw})


@pytest.mark.parametrize(
    "host",
    ["http://127.0.0.1:1986", "https://mirror.test", "http://[::1]:80", "grpc://g.test:50051"],
)
def test_schema_accepts(host: str) -> None:
    conf = REG.decode_conf("proxy-mirror", {"host": host})
    assert (conf.path, conf.path_concat_mode, conf.sample_ratio) == (None, "replace", 1.0)


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"host": "127.0.0.1:1986"},
        {"host": "http://127.0.0.1:1986/"},
        {"host": "http://127.0.0.1:1986/path"},
        {"host": "ftp://127.0.0.1"},
        {"host": "http://a.test", "path": "no-slash"},
        {"host": "http://a.test", "path": "/a?b"},
        {"host": "http://a.test", "path_concat_mode": "append"},
        {"host": "http://a.test", "sample_ratio": 0},
        {"host": "http://a.test", "sample_ratio": 1.5},
    ],
)
def test_schema_rejects(raw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="plugin proxy-mirror"):
        REG.decode_conf("proxy-mirror", raw)


def test_mirror_uri_modes() -> None:
    ctx = make_ctx("/a/b?x=1")
    assert mirror_uri(conf_of(), ctx) == "/a/b?x=1"
    assert mirror_uri(conf_of(path="/m"), ctx) == "/m?x=1"
    assert mirror_uri(conf_of(path="/m", path_concat_mode="prefix"), ctx) == "/m/a/b?x=1"
    assert mirror_uri(conf_of(path="/m"), make_ctx("/a")) == "/m"
    # the decoded $uri goes back on the request line escaped
    ctx = make_ctx("/a b")
    ctx.path = "/a b"
    assert mirror_uri(conf_of(), ctx) == "/a%20b"
    # an upstream URI set by a plugin that ran before (APISIX reads $upstream_uri)
    ctx = make_ctx("/a?x=1")
    ctx.set_upstream_uri("/rewritten?y=2")
    assert mirror_uri(conf_of(path="/p", path_concat_mode="prefix"), ctx) == "/p/rewritten?y=2"


def test_sampling_rule() -> None:
    assert sampled(1, 0.999999)
    assert sampled(0.5, 0.49) and not sampled(0.5, 0.5)


def test_headers_without_hop_by_hop_and_with_upstream_host() -> None:
    ctx = make_ctx(
        "/",
        headers={
            "Host": "api.test",
            "X-A": "1",
            "Connection": "keep-alive",
            "Transfer-Encoding": "chunked",
            "Content-Length": "3",
        },
    )
    h = mirror_headers(ctx)
    assert list(h.items()) == [("Host", "api.test"), ("X-A", "1")]
    ctx.set_request_header("X-B", "2")
    ctx.set_upstream_host("up.test")
    h = mirror_headers(ctx)
    assert h["x-b"] == "2" and h["Host"] == "up.test" and "connection" not in h


def test_parse_duration() -> None:
    assert parse_duration("60s") == 60
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2m") == 120
    assert parse_duration(3) == 3
    assert parse_duration(None) == 60
    assert parse_duration("soon") == 60
    assert parse_duration(0) == 60


def test_init_reads_plugin_attr_timeouts() -> None:
    plugin = ProxyMirror()
    assert plugin.client.timeouts == Timeouts(60, 60, 60)
    plugin.init({"timeout": {"connect": "2s", "send": "3s", "read": "500ms"}})
    assert plugin.client.timeouts == Timeouts(2, 3, 0.5)


def test_endpoint_parse() -> None:
    assert Endpoint.parse("http://127.0.0.1:1986") == (Endpoint("http", "127.0.0.1", 1986), "/")
    assert Endpoint.parse("https://m.test")[0] == Endpoint("https", "m.test", 443)
    assert Endpoint.parse("http://m.test/log?x=1") == (Endpoint("http", "m.test", 80), "/log?x=1")
    assert Endpoint.parse("http://m.test?x=1") == (Endpoint("http", "m.test", 80), "/?x=1")
    assert Endpoint.parse("http://[::1]:81/p")[0] == Endpoint("http", "[::1]", 81)
    assert Endpoint.parse("HTTPS://[::1]")[0] == Endpoint("https", "[::1]", 443)


def test_request_bytes() -> None:
    headers = mirror_headers(make_ctx("/", headers={"Host": "h.test", "X-A": "1"}))
    assert request_bytes("GET", "/a?b=1", headers.items(), b"") == (
        b"GET /a?b=1 HTTP/1.1\r\nHost: h.test\r\nX-A: 1\r\n\r\n"
    )
    assert request_bytes("POST", "/", headers.items(), b"abc").endswith(
        b"Content-Length: 3\r\n\r\nabc"
    )
    assert b"Content-Length: 0" in request_bytes("PUT", "/", headers.items(), b"")
    headers["X-Bad"] = "a\r\nInjected: 1"
    assert b"Injected" not in request_bytes("GET", "/", headers.items(), b"")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bytes, bytes]] = []

    def submit(self, method: str, endpoint: Endpoint, request: bytes) -> bool:
        head, _, body = request.partition(b"\r\n\r\n")
        url = f"{endpoint.scheme}://{endpoint.host}:{endpoint.port}"
        self.calls.append((method, url + head.split(b" ")[1].decode(), head + b"\r\n\r\n", body))
        return True


def run_phases(plugin: ProxyMirror, conf: Conf, ctx: Any) -> None:
    assert plugin.rewrite(conf, ctx) is None
    assert asyncio.run(plugin.before_proxy(conf, ctx)) is None


def test_rewrite_then_before_proxy_submits_a_copy() -> None:
    plugin = ProxyMirror()
    rec = Recorder()
    plugin.client = rec  # type: ignore[assignment]
    ctx = make_ctx("/x?y=1", method="POST", headers={"Host": "h.test"})

    async def reader(limit: int) -> bytes:
        assert limit == MAX_MIRROR_BODY
        return b"payload"

    ctx.body_reader = reader
    run_phases(plugin, conf_of(), ctx)
    assert rec.calls == [
        (
            "POST",
            "http://127.0.0.1:1986/x?y=1",
            b"POST /x?y=1 HTTP/1.1\r\nHost: h.test\r\nContent-Length: 7\r\n\r\n",
            b"payload",
        )
    ]


class FixedDraw:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_too_large_body_and_unsampled_and_grpc_are_not_mirrored() -> None:
    plugin = ProxyMirror()
    rec = Recorder()
    plugin.client = rec  # type: ignore[assignment]

    async def too_large(limit: int) -> None:
        return None

    ctx = make_ctx("/x", method="PUT")
    ctx.body_reader = too_large
    run_phases(plugin, conf_of(), ctx)
    assert plugin.too_large == 1
    plugin._rng = FixedDraw(0.3)  # type: ignore[assignment]
    run_phases(plugin, conf_of(sample_ratio=0.3), make_ctx("/unsampled"))
    run_phases(plugin, conf_of(sample_ratio=0.31), make_ctx("/sampled"))
    run_phases(plugin, decode(Conf, {"host": "grpc://g.test:1"}), make_ctx("/grpc"))
    assert [c[1] for c in rec.calls] == ["http://127.0.0.1:1986/sampled"]
    # a request rejected after rewrite never reaches before_proxy: no copy
    plugin.rewrite(conf_of(), make_ctx("/rejected"))
    assert len(rec.calls) == 1


def test_client_bounds_copies_in_flight_and_closes() -> None:
    async def scenario() -> tuple[int, int, bool]:
        client = MirrorClient(Timeouts(), max_in_flight=2)
        gate = asyncio.Event()

        async def fake_send(method: str, endpoint: Endpoint, data: bytes) -> None:
            await gate.wait()

        client._send = fake_send  # type: ignore[method-assign]
        endpoint = Endpoint("http", "m.test", 80)
        results = [client.submit("GET", endpoint, b"GET / HTTP/1.1\r\n\r\n") for _ in range(3)]
        await asyncio.sleep(0)
        assert results == [True, True, False]
        in_flight = len(client.tasks)
        await client.aclose()  # cancels what is still running
        return in_flight, client.dropped, not client.tasks

    assert asyncio.run(scenario()) == (2, 1, True)
