"""Issue #18, "regular expressions that block the worker", through the real process.

Every place a configured pattern meets request data gets a pattern that backtracking engines
(PCRE, Python's re) take exponential or polynomial time on, and an input built to trigger it:
the hostile request must answer promptly with the right outcome, and a normal request sent
alongside it (one worker, one event loop) must not wait for it. Then patterns RE2 cannot run are
refused by the Admin API (400 naming the field) and skipped, with the last good value kept, when
they arrive through etcd.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.etcd import EtcdServer
from tests.support.gateway import Gateway, wait_until
from tests.support.upstream import Upstream

# With Python's re, (a+)+$ against 24 "a"s and a "!" took 1.4 s and doubled with each "a": these
# inputs would take longer than the universe has existed. RE2 answers in microseconds.
EVIL = "a" * 5000 + "!"
PROMPT = 2.0  # seconds: generous for a loaded machine, far below what backtracking would take

CONFIG = """
routes:
  - id: vars
    uri: /v
    priority: 10
    vars: [["arg_q", "~~", "^(a+)+$"]]
    plugins: {proxy-rewrite: {headers: {set: {X-Route: vars}}}}
    upstream: {nodes: {"%(up)s": 1}}
  - id: vars-ci
    uri: /v
    priority: 5
    vars: [["http_x_probe", "~*", "^(A|AA)+$"]]
    plugins: {proxy-rewrite: {headers: {set: {X-Route: vars-ci}}}}
    upstream: {nodes: {"%(up)s": 1}}
  - id: fallback
    uri: /v
    plugins: {proxy-rewrite: {headers: {set: {X-Route: fallback}}}}
    upstream: {nodes: {"%(up)s": 1}}
  - id: blocker
    uri: /ub/*
    plugins: {uri-blocker: {block_rules: ["^/ub/(a+)+$"]}}
    upstream: {nodes: {"%(up)s": 1}}
  - id: rewrite
    uri: /pr/*
    plugins: {proxy-rewrite: {regex_uri: ["^/pr/(a+)+$", "/got/$1"]}}
    upstream: {nodes: {"%(up)s": 1}}
  - id: redirect
    uri: /rd/*
    plugins: {redirect: {regex_uri: ["^/rd/(a+)+$", "/to/$1"]}}
    upstream: {nodes: {"%(up)s": 1}}
  - id: ua
    uri: /ua
    plugins: {ua-restriction: {denylist: ["^(a+)+$"]}}
    upstream: {nodes: {"%(up)s": 1}}
  - id: cors
    uri: /cors
    plugins: {cors: {allow_origins_by_regex: ["^http://(a+)+[.]example[.]com$"]}}
    upstream: {nodes: {"%(up)s": 1}}
  - id: body
    uri: /rr/*
    plugins:
      response-rewrite:
        filters: [{regex: "(a+)+Z", replace: "[$1]", scope: global}]
    upstream: {nodes: {"%(up)s": 1}}
  - id: params
    uri: /rp/*a/x/*b/x/*c/end
    upstream: {nodes: {"%(up)s": 1}}
#END
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Gateway]:
    root: Path = tmp_path_factory.mktemp("gw")
    with Gateway(root, apisix_yaml=CONFIG % {"up": upstream.addr}) as g:  # one worker
        yield g


Call = Callable[[], requests.Response]


def _timed(call: Call) -> tuple[requests.Response, float]:
    t0 = time.monotonic()
    r = call()
    return r, time.monotonic() - t0


def together(hostile: Call, normal: Call) -> tuple[requests.Response, requests.Response]:
    """Send ``hostile`` and, while it is in flight, ``normal``; both must answer promptly."""
    with ThreadPoolExecutor(2) as pool:
        bad = pool.submit(_timed, hostile)
        good = pool.submit(_timed, normal)
        (rb, tb), (rg, tg) = bad.result(), good.result()
    assert tb < PROMPT, f"the hostile request took {tb:.2f}s"
    assert tg < PROMPT, f"the normal request waited {tg:.2f}s"
    return rb, rg


def get(gw: Gateway, path: str, **kw: Any) -> Call:
    kw.setdefault("timeout", 10)
    kw.setdefault("allow_redirects", False)
    return lambda: requests.get(gw.url(path), **kw)


def routed(r: requests.Response) -> str:
    assert r.status_code == 200, r.text
    return str(r.json()["headers"].get("x-route"))


def test_vars_regex(gw: Gateway) -> None:
    bad, good = together(get(gw, f"/v?q={EVIL}"), get(gw, "/v?q=aaaa"))
    assert routed(bad) == "fallback" and routed(good) == "vars"


def test_vars_regex_case_insensitive(gw: Gateway) -> None:
    bad, good = together(
        get(gw, "/v", headers={"X-Probe": EVIL}), get(gw, "/v", headers={"X-Probe": "aAaA"})
    )
    assert routed(bad) == "fallback" and routed(good) == "vars-ci"


def test_uri_blocker(gw: Gateway) -> None:
    bad, good = together(get(gw, f"/ub/{EVIL}"), get(gw, "/ub/aaaa"))
    assert bad.status_code == 200  # the rule does not match: not blocked
    assert good.status_code == 403


def test_proxy_rewrite_regex_uri(gw: Gateway) -> None:
    bad, good = together(get(gw, f"/pr/{EVIL}"), get(gw, "/pr/aaaa"))
    assert bad.status_code == 200 and bad.json()["path"] == f"/pr/{EVIL}"
    assert good.status_code == 200 and good.json()["path"] == "/got/aaaa"


def test_redirect_regex_uri(gw: Gateway) -> None:
    bad, good = together(get(gw, f"/rd/{EVIL}"), get(gw, "/rd/aaaa"))
    assert bad.status_code == 200  # no match: the request goes on to the upstream
    assert good.status_code == 302 and good.headers["Location"] == "/to/aaaa"


def test_ua_restriction(gw: Gateway) -> None:
    bad, good = together(
        get(gw, "/ua", headers={"User-Agent": EVIL}), get(gw, "/ua", headers={"User-Agent": "aa"})
    )
    assert bad.status_code == 200 and good.status_code == 403


def test_cors_origin_regex(gw: Gateway) -> None:
    evil_origin = f"http://{EVIL}.example.com"
    bad, good = together(
        get(gw, "/cors", headers={"Origin": evil_origin}),
        get(gw, "/cors", headers={"Origin": "http://aaa.example.com"}),
    )
    assert "Access-Control-Allow-Origin" not in bad.headers
    assert good.headers["Access-Control-Allow-Origin"] == "http://aaa.example.com"


def test_response_rewrite_filter(gw: Gateway) -> None:
    # the upstream echoes the path in its JSON body: the filter runs over the hostile text
    bad, good = together(get(gw, f"/rr/{'a' * 5000}"), get(gw, "/rr/aaZ"))
    assert bad.status_code == 200 and f"/rr/{'a' * 5000}" in bad.text
    assert good.status_code == 200
    assert "/rr/[aa]" in good.text and "aaZ" not in good.text


def test_route_uri_parameters(gw: Gateway) -> None:
    # three "*name" segments: a backtracking engine is cubic in the path's length
    bad, good = together(get(gw, "/rp/" + "x/" * 2000), get(gw, "/rp/1/x/2/x/3/end"))
    assert bad.status_code == 404
    assert good.status_code == 200 and good.json()["path"] == "/rp/1/x/2/x/3/end"


def test_yaml_item_re2_cannot_run_is_skipped(gw: Gateway, upstream: Upstream) -> None:
    # (the last test on this gateway: it rewrites its apisix.yaml)
    extra = """
  - id: bad
    uri: /bad
    vars: [["arg_q", "~~", "^(?!a)"]]
    upstream: {nodes: {"%(up)s": 1}}
  - id: good
    uri: /good
    vars: [["arg_q", "~~", "^a+$"]]
    upstream: {nodes: {"%(up)s": 1}}
#END
"""
    gw.write_yaml((CONFIG.replace("#END\n", "") + extra) % {"up": upstream.addr})
    wait_until(lambda: requests.get(gw.url("/good?q=aa"), timeout=5).status_code == 200)
    assert "rejected config item /apisix/routes/bad" in gw.logs()
    assert requests.get(gw.url("/bad?q=b"), timeout=5).status_code == 404
    assert requests.get(gw.url("/ub/aaaa"), timeout=5).status_code == 403  # the others serve


# -- patterns RE2 cannot run: refused when written ----------------------------------------------

KEY = "test-admin-key-regex-0123456789"
PREFIX = "/regex-linear"  # this module's own keys in the shared etcd


@pytest.fixture(scope="module")
def admin_gw(
    tmp_path_factory: pytest.TempPathFactory, shared_etcd: EtcdServer
) -> Iterator[Gateway]:
    root: Path = tmp_path_factory.mktemp("admin")
    with Gateway(root, mode="etcd", etcd=shared_etcd.endpoint, prefix=PREFIX, admin_key=KEY) as g:
        yield g


def put(gw: Gateway, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.put(
        gw.admin_url(path), data=json.dumps(body), headers={"X-API-KEY": KEY}, timeout=10
    )


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (
            {"vars": [["uri", "~~", "^/a(?=b)"]]},
            ["failed to validate the 'vars' expression", "(?="],
        ),
        ({"vars": [["uri", "~*", "(a)\\1"]]}, ["'vars'", "invalid escape sequence: \\1"]),
        (
            {"plugins": {"uri-blocker": {"block_rules": ["a++"]}}},
            ["uri-blocker", "failed to compile block rule a++", "bad repetition operator"],
        ),
        (
            {"plugins": {"proxy-rewrite": {"regex_uri": ["^/(?<!x)a", "/b"]}}},
            ["proxy-rewrite", "invalid regex_uri", "(?<!"],
        ),
        (
            {"plugins": {"proxy-rewrite": {"regex_uri": ["^/(a)", "/$2"]}}},
            ["proxy-rewrite", "capture group 2 is out of range"],
        ),
        (
            {
                "plugins": {
                    "response-rewrite": {
                        "filters": [{"regex": "a", "replace": "b", "options": "x"}]
                    }
                }
            },
            ["response-rewrite", "option x"],
        ),
        (
            {"plugins": {"ua-restriction": {"allowlist": ["(?>a)"]}}},
            ["ua-restriction", "allowlist", "(?>"],
        ),
        (
            {"plugins": {"cors": {"allow_origins_by_regex": ["\\Khttp://a"]}}},
            ["cors", "allow_origins_by_regex", "\\K"],
        ),
    ],
)
def test_admin_refuses_what_re2_cannot_run(
    admin_gw: Gateway, upstream: Upstream, body: dict[str, Any], words: list[str]
) -> None:
    route = {"uri": "/refused", "upstream": {"nodes": {upstream.addr: 1}}, **body}
    r = put(admin_gw, "/routes/refused", route)
    assert r.status_code == 400, r.text
    message = r.json()["error_msg"]
    for word in words:
        assert word in message, (word, message)
    assert requests.get(admin_gw.admin_url("/routes/refused"), headers={"X-API-KEY": KEY},
                        timeout=10).status_code == 404  # fmt: skip


def test_admin_refuses_ssl_skip_mtls_regex(admin_gw: Gateway) -> None:
    body = {
        "type": "client",
        "cert": "x" * 128,
        "key": "y" * 32,
        "client": {"ca": "z" * 128, "skip_mtls_uri_regex": ["^/a(?!b)"]},
    }
    r = put(admin_gw, "/ssls/refused", body)
    assert r.status_code == 400
    assert "skip_mtls_uri_regex" in r.json()["error_msg"]


def test_etcd_item_re2_cannot_run_keeps_the_last_good(
    admin_gw: Gateway, upstream: Upstream, shared_etcd: EtcdServer
) -> None:
    good = {
        "uri": "/kept",
        "vars": [["arg_q", "~~", "^(a+)+$"]],
        "upstream": {"nodes": {upstream.addr: 1}},
    }
    assert put(admin_gw, "/routes/kept", good).status_code in (200, 201)
    wait_until(lambda: requests.get(admin_gw.url("/kept?q=aa"), timeout=5).status_code == 200)
    # written behind the Admin API's back, as another tool could
    bad = {**good, "vars": [["arg_q", "~~", "^a(?=a)"]]}
    shared_etcd.put(f"{PREFIX}/routes/kept", json.dumps(bad))
    wait_until(lambda: f"rejected config item {PREFIX}/routes/kept" in admin_gw.logs())
    assert "invalid perl operator" in admin_gw.logs()
    assert requests.get(admin_gw.url("/kept?q=aa"), timeout=5).status_code == 200
    assert requests.get(admin_gw.url(f"/kept?q={EVIL}"), timeout=5).status_code == 404
