"""Bad input never gets a 5xx nor a traceback (issue #18), through the real gateway: the Admin
API (etcd and API-driven standalone), the control API and the status API. Each case is one the
issue found answering 500; what was refused is not stored, and writes go on reaching the data
plane afterwards."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.etcd import EtcdServer
from tests.support.gateway import Gateway, wait_until
from tests.support.upstream import Upstream
from tollway.admin.body import MAX_DEPTH

KEY = "test-admin-key-0123456789"
PREFIX = "/badin"
NODES = {"127.0.0.1:1980": 1}
API_DRIVEN = {
    "deployment": {"role": "traditional", "role_traditional": {"config_provider": "yaml"}}
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, shared_etcd: EtcdServer) -> Iterator[Gateway]:
    root: Path = tmp_path_factory.mktemp("admin-bad-input")
    with Gateway(root, mode="etcd", etcd=shared_etcd.endpoint, prefix=PREFIX, admin_key=KEY) as g:
        yield g


def admin(
    gw: Gateway, method: str, path: str, body: bytes | None = None, **headers: Any
) -> requests.Response:
    h: dict[str, Any] = {"X-API-KEY": KEY, **headers}
    return requests.request(method, gw.admin_url(path), data=body, headers=h, timeout=30)


def raw_request(port: int, head: bytes, *, half_close: bool = False) -> bytes:
    """A request requests/http.client would refuse to send (raw bytes in the path, a body
    shorter than its Content-Length)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def nested(depth: int, *, obj: bool = False) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth if obj else b"[" * depth + b"]" * depth


def assert_400(r: requests.Response, *words: str) -> None:
    assert r.status_code == 400, (r.status_code, r.text[:300])
    msg = r.json()["error_msg"]
    for w in words:
        assert w in msg, msg


def no_tracebacks(gw: Gateway) -> None:
    logs = gw.logs()
    assert "Traceback" not in logs, logs[-3000:]


# -- the key ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-KEY": b"\xff\xfe"},
        {"X-API-KEY": KEY.encode() + b"\x80"},
        {"Cookie": b"X-API-KEY=\xff\xfe"},
    ],
)
def test_a_key_that_is_not_utf8_is_a_wrong_key(gw: Gateway, headers: dict[str, bytes]) -> None:
    r = requests.get(gw.admin_url("/routes"), headers=headers, timeout=10)
    assert r.status_code == 401
    assert r.json() == {"error_msg": "failed to check token", "description": "wrong apikey"}


def test_a_lone_surrogate_in_the_query_key_is_a_wrong_key(gw: Gateway) -> None:
    r = requests.get(gw.admin_url("/routes?api_key=%ED%A0%80"), timeout=10)
    assert r.status_code == 401 and r.json()["description"] == "wrong apikey"


# -- bodies -----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [50_000, 100_000])
@pytest.mark.parametrize("obj", [False, True])
@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("PUT", "/routes/deep", "labels"),
        ("POST", "/routes", "labels"),
        ("PATCH", "/routes/keep", "labels"),
        ("POST", "/schema/validate/routes", "labels"),
        ("POST", "/configs/validate", "routes"),
    ],
)
def test_deep_nesting_is_a_400(
    gw: Gateway, method: str, path: str, field: str, depth: int, obj: bool
) -> None:
    body = b'{"uri":"/a","' + field.encode() + b'":' + nested(depth, obj=obj) + b"}"
    assert_400(admin(gw, method, path, body), f"nested deeper than {MAX_DEPTH} levels")


def test_nesting_at_the_limit_is_checked_as_usual(gw: Gateway) -> None:
    labels = nested(MAX_DEPTH - 1, obj=True)
    r = admin(gw, "PUT", "/routes/deep", b'{"uri":"/a","labels":' + labels + b"}")
    assert_400(r, "labels")  # the schema's answer: labels are strings, not the depth
    assert "nested deeper" not in r.json()["error_msg"]


def test_a_patch_sub_path_cannot_nest_past_the_limit(gw: Gateway, shared_etcd: EtcdServer) -> None:
    put = admin(
        gw,
        "PUT",
        "/routes/keep",
        json.dumps({"uri": "/keep", "upstream": {"nodes": NODES}}).encode(),
    )
    assert put.status_code in (200, 201)
    before = shared_etcd.get(PREFIX + "/routes/keep")
    r = admin(gw, "PATCH", "/routes/keep/" + "a/" * (MAX_DEPTH + 5) + "b", b"1")
    assert_400(r, f"nested deeper than {MAX_DEPTH} levels", "(at a.a.a")
    assert shared_etcd.get(PREFIX + "/routes/keep") == before


@pytest.mark.parametrize(
    ("body", "place"),
    [
        (b'{"uri":"/s","name":"\\ud800","upstream":{"nodes":{"127.0.0.1:1980":1}}}', "name: "),
        (b'{"uri":"/s","desc":"x\\udfff","upstream":{"nodes":{"127.0.0.1:1980":1}}}', "desc: "),
        (b'{"uri":"/s","labels":{"\\ud800":"v"},"upstream":{"nodes":{"127.0.0.1:1980":1}}}', "labels: the key"),
        (b'{"uri":"/s","plugins":{"proxy-rewrite":{"uri":"/\\ud800"}},"upstream":{"nodes":{"127.0.0.1:1980":1}}}', "plugins.proxy-rewrite.uri: "),
        (b'{"uri":"/s","name":"\xed\xa0\x80","upstream":{"nodes":{"127.0.0.1:1980":1}}}', "name: "),
    ],
)  # fmt: skip
def test_a_lone_surrogate_is_a_400_and_nothing_is_stored(
    gw: Gateway, shared_etcd: EtcdServer, body: bytes, place: str
) -> None:
    assert_400(admin(gw, "PUT", "/routes/sur", body), place, "lone UTF-16 surrogate")
    assert shared_etcd.get(PREFIX + "/routes/sur") is None
    assert_400(admin(gw, "PATCH", "/routes/keep/desc", b'"\\ud800"'), "lone UTF-16 surrogate")


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_numbers_json_cannot_hold_are_a_400(
    gw: Gateway, shared_etcd: EtcdServer, number: bytes
) -> None:
    body = (
        b'{"uri":"/n","upstream":{"nodes":{"127.0.0.1:1980":1},"timeout":{"connect":'
        + number
        + b"}}}"
    )
    assert_400(admin(gw, "PUT", "/routes/num", body), "invalid request body")
    assert shared_etcd.get(PREFIX + "/routes/num") is None


def test_huge_integers_are_a_400_not_a_500(gw: Gateway) -> None:
    assert_400(admin(gw, "PUT", "/routes/big", b'{"uri":"/b","priority":' + b"9" * 5000 + b"}"))
    assert_400(admin(gw, "PUT", "/routes/big", b'{"uri":"/b","priority":' + b"9" * 40 + b"}"))


def test_surrogates_in_url_parts_are_not_a_500(gw: Gateway) -> None:
    for method, path in (
        ("GET", "/routes/%ED%A0%80"),
        ("DELETE", "/routes/%ED%A0%80"),
        ("PUT", "/routes/%ED%A0%80"),
        ("PATCH", "/routes/keep/%ED%A0%80"),
        ("GET", "/routes?name=%ED%A0%80&label=%FF"),
    ):
        r = admin(gw, method, path, b'{"uri":"/u","upstream":{"nodes":{"127.0.0.1:1980":1}}}')
        assert r.status_code < 500, (method, path, r.text)
    out = raw_request(
        gw.admin_port,
        b"GET /apisix/admin/routes/\xff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.") and b" 400 " in out.split(b"\r\n")[0]


@pytest.mark.parametrize(
    "query",
    [
        "page=inf&page_size=10", "page=1&page_size=nan", "page=1e400&page_size=20",
        "name=(&uri=[", "filter=service_id%3D%ED%A0%80", "label=%00",
    ],
)  # fmt: skip
def test_odd_list_arguments_are_not_a_500(gw: Gateway, query: str) -> None:
    r = admin(gw, "GET", f"/routes?{query}")
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["list"], list)


@pytest.mark.parametrize("ttl", ["nan", "inf", "-inf", "1e400", "0x10", ""])
def test_odd_ttl_is_a_400(gw: Gateway, shared_etcd: EtcdServer, ttl: str) -> None:
    r = admin(gw, "PUT", f"/routes/ttl?ttl={ttl}", route_body("/ttl"))
    assert_400(r, "invalid argument ttl")
    assert shared_etcd.get(PREFIX + "/routes/ttl") is None


def test_non_utf8_cors_request_headers_are_not_a_500(gw: Gateway) -> None:
    r = requests.options(
        gw.admin_url("/routes"),
        headers={"Access-Control-Request-Headers": b"\xff", "Origin": b"http://\xfe"},
        timeout=10,
    )
    assert r.status_code == 200


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_body_that_does_not_inflate_is_a_400(gw: Gateway, encoding: str) -> None:
    r = admin(gw, "PUT", "/routes/enc", b"not compressed", **{"Content-Encoding": encoding})
    assert_400(r, "invalid request body", f"Can not decode content-encoding: {encoding}")


def test_broken_framing_is_a_400_logged_in_one_line(gw: Gateway) -> None:
    head = b"PUT /apisix/admin/routes/f HTTP/1.1\r\nHost: x\r\nX-API-KEY: " + KEY.encode()
    out = raw_request(
        gw.admin_port, head + b"\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n"
    )
    assert b" 400 " in out.split(b"\r\n")[0], out[:100]
    # a body cut short: the peer's EOF closes the connection (asyncio), no answer can be sent;
    # the handler's failed read must leave no traceback (checked at the end of this file)
    raw_request(gw.admin_port, head + b"\r\nContent-Length: 50\r\n\r\n{}", half_close=True)
    wait_until(
        lambda: (
            "the client sent an invalid request: 400, message: Invalid character in chunk size"
            in gw.logs()
        )
    )


# -- cross-site writes (a deliberate difference from APISIX) -----------------------------------


def route_body(uri: str) -> bytes:
    return json.dumps({"uri": uri, "upstream": {"nodes": NODES}}).encode()


def count_routes(gw: Gateway, uri: str) -> int:
    r = admin(gw, "GET", "/routes")
    return sum(1 for n in r.json()["list"] if n["value"].get("uri") == uri)


def test_a_cross_site_simple_post_with_the_cookie_is_refused(gw: Gateway) -> None:
    """What a form on any web page makes a browser send: text/plain, the cookie, its Origin."""
    r = requests.post(
        gw.admin_url("/routes"),
        data=route_body("/csrf"),
        headers={"Content-Type": "text/plain", "Origin": "http://evil.example"},
        cookies={"X-API-KEY": KEY},
        timeout=10,
    )
    assert r.status_code == 403
    assert "X-API-KEY cookie alone does not authorize a write" in r.json()["error_msg"]
    assert count_routes(gw, "/csrf") == 0
    # without an Origin (a client that is not a browser, or an old one) it is refused as well
    r = requests.put(
        gw.admin_url("/routes/csrf"),
        data=route_body("/csrf"),
        cookies={"X-API-KEY": KEY},
        timeout=10,
    )
    assert r.status_code == 403 and count_routes(gw, "/csrf") == 0


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"Origin": "ORIGIN"}, ""),  # the Admin API's own origin (its dashboard)
        ({"X-Requested-With": "XMLHttpRequest"}, ""),  # needs a CORS preflight cross-site
        ({"X-API-KEY": KEY, "Origin": "http://evil.example"}, ""),  # the key itself
        ({}, f"?api_key={KEY}"),
    ],
)
def test_writes_that_a_page_cannot_forge_are_accepted(
    gw: Gateway, headers: dict[str, str], query: str
) -> None:
    own = f"http://127.0.0.1:{gw.admin_port}"
    h = {k: (own if v == "ORIGIN" else v) for k, v in headers.items()}
    uri = f"/ok-{len(h)}-{bool(query)}-{'Origin' in h}"
    r = requests.post(
        gw.admin_url("/routes" + query),
        data=route_body(uri),
        headers=h,
        cookies={"X-API-KEY": KEY},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    assert count_routes(gw, uri) == 1


def test_reads_with_the_cookie_alone_still_work(gw: Gateway) -> None:
    r = requests.get(
        gw.admin_url("/routes"),
        cookies={"X-API-KEY": KEY},
        headers={"Origin": "http://evil.example"},
        timeout=10,
    )
    assert r.status_code == 200


def test_without_a_required_key_a_foreign_origin_cannot_write(
    tmp_path: Path, shared_etcd: EtcdServer
) -> None:
    conf = {"deployment": {"admin": {"admin_key_required": False}}}
    with Gateway(
        tmp_path, mode="etcd", etcd=shared_etcd.endpoint, prefix="/nokey", config=conf
    ) as g:
        url = g.admin_url("/routes/r1")
        r = requests.put(
            url, data=route_body("/x"), headers={"Origin": "http://evil.example"}, timeout=10
        )
        assert r.status_code == 403 and "foreign origin" in r.json()["error_msg"]
        r = requests.put(url, data=route_body("/x"), headers={"Origin": "null"}, timeout=10)
        assert r.status_code == 403
        assert shared_etcd.get("/nokey/routes/r1") is None
        assert requests.put(url, data=route_body("/x"), timeout=10).status_code == 201
        own = f"http://127.0.0.1:{g.admin_port}"
        r = requests.put(url, data=route_body("/y"), headers={"Origin": own}, timeout=10)
        assert r.status_code == 200
        no_tracebacks(g)


# -- the control and status APIs --------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/route/%ED%A0%80", "/v1/service/%FF", "/v1/upstream/%00", "/v1/%ED%A0%80",
        "/v1/healthcheck/routes/%ED%A0%80", "/v1/healthcheck/%FF/1", "/v1/healthcheck/%FF",
        "/v1/plugin_metadata/%ED%A0%80", "/v1/routes?x=%FF", "/v1/schema?%ED%A0%80",
    ],
)  # fmt: skip
def test_control_api_odd_paths_are_not_a_500(gw: Gateway, path: str) -> None:
    r = requests.get(
        f"http://127.0.0.1:{gw.control_port}{path}",
        headers={"Accept": b"text/html\xff", "X-Odd": b"\xfe"},
        timeout=10,
    )
    assert r.status_code < 500, (path, r.status_code, r.text)
    r = requests.post(f"http://127.0.0.1:{gw.control_port}/v1/gc", data=nested(100_000), timeout=10)
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("listener", "path"),
    [
        ("status_port", "/status"), ("status_port", "/status/ready"),
        ("status_port", "/status/config?%FF"), ("status_port", "/status/%ED%A0%80"),
        ("prometheus_port", "/apisix/prometheus/metrics?%ED%A0%80"),
        ("prometheus_port", "/apisix/prometheus/%FF"),
    ],
)  # fmt: skip
def test_status_and_metrics_odd_requests_are_not_a_500(
    gw: Gateway, listener: str, path: str
) -> None:
    port = getattr(gw, listener)
    r = requests.get(f"http://127.0.0.1:{port}{path}", headers={"X-Odd": b"\xff"}, timeout=10)
    assert r.status_code < 500, (path, r.status_code)


def test_raw_bytes_in_control_and_status_paths_are_a_400(gw: Gateway) -> None:
    for port, path in (
        (gw.control_port, b"/v1/route/\xff"),
        (gw.status_port, b"/status/\xff"),
        (gw.prometheus_port, b"/apisix/prometheus/metrics\xff"),
    ):
        out = raw_request(
            port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert b" 400 " in out.split(b"\r\n")[0], out[:100]


# -- afterwards -------------------------------------------------------------------------------


def test_after_all_that_writes_reach_the_data_plane_and_the_log_is_clean(
    gw: Gateway, upstream: Upstream
) -> None:
    """Runs last (file order): the gateway kept serving and logged no traceback."""
    body = {"uri": "/after", "upstream": {"nodes": {upstream.addr: 1}}}
    assert admin(gw, "PUT", "/routes/after", json.dumps(body).encode()).status_code in (200, 201)
    wait_until(lambda: requests.get(gw.url("/after"), timeout=5).status_code == 200)
    no_tracebacks(gw)


# -- API-driven standalone: /apisix/admin/configs ---------------------------------------------


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root: Path = tmp_path_factory.mktemp("configs-bad-input")
    with Gateway(root, config=API_DRIVEN, admin_key=KEY) as g:
        yield g


YAML = "application/yaml"
ALIASES = "\n".join(
    ["a0: &a0 [1,1,1,1,1,1,1,1,1,1]"]
    + [f"a{n}: &a{n} [{','.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 8)]
).encode()


@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [
        (b'{"routes":' + nested(100_000) + b"}", "application/json", ("nested deeper",)),
        (b'{"routes":[' + nested(50_000, obj=True) + b"]}", "application/json", ("nested deeper",)),
        (b'{"routes":[{"id":"1","uri":"/\\ud800"}]}', "application/json", ("routes[0].uri", "surrogate")),
        (b'{"routes":[{"id":"1","uri":"/","priority":NaN}]}', "application/json", ("NaN",)),
        (b"routes:\n- id: 1\n  uri: /a\n  priority: .nan\n", YAML, ("routes[0].priority",)),
        (b'routes:\n- id: 1\n  uri: "/\\ud800"\n', YAML, ("routes[0].uri", "surrogate")),
        (b"routes:\n- id: 1\n  uri: /a\n  desc: 2024-01-01\n", YAML, ("routes[0].desc", "date")),
        (b"a: " + nested(5000) + b"\n", YAML, ("nested deeper",)),
        (ALIASES, YAML, ("YAML aliases",)),
    ],
)  # fmt: skip
def test_configs_bad_bodies_are_a_400_and_change_nothing(
    standalone: Gateway, body: bytes, content_type: str, words: tuple[str, ...]
) -> None:
    before = admin(standalone, "GET", "/configs")
    r = admin(
        standalone, "PUT", "/configs", body, **{"X-Digest": "bad", "Content-Type": content_type}
    )
    assert_400(r, *words)
    after = admin(standalone, "GET", "/configs")
    assert after.json() == before.json()
    r = admin(standalone, "POST", "/configs/validate", body, **{"Content-Type": content_type})
    assert_400(r, *words)


def test_configs_digest_that_is_not_utf8_is_a_400(standalone: Gateway) -> None:
    r = admin(standalone, "PUT", "/configs", b'{"routes":[]}', **{"X-Digest": b"\xff\xfe"})
    assert_400(r, "invalid X-Digest header")


def test_configs_after_bad_input_still_serve(standalone: Gateway, upstream: Upstream) -> None:
    doc = {"routes": [{"id": "1", "uri": "/good", "upstream": {"nodes": {upstream.addr: 1}}}]}
    r = admin(standalone, "PUT", "/configs", json.dumps(doc).encode(), **{"X-Digest": "good"})
    assert r.status_code == 202
    wait_until(lambda: requests.get(standalone.url("/good"), timeout=5).status_code == 200)
    yaml_get = admin(standalone, "GET", "/configs", Accept=YAML)
    assert yaml_get.status_code == 200 and yaml_get.headers["X-Digest"] == "good"
    no_tracebacks(standalone)
