"""The dashboard at /ui/ (issue #16) in a real browser: Debian's chromium, headless, driven by
Selenium through Debian's chromedriver, against the real gateway, etcd and upstreams.

One browser and one gateway for the module (starting Chromium costs seconds on a loaded CI
machine); every wait is explicit, with a deadline. Each page's screenshot is written to
``$TOLLWAY_SCREENSHOTS`` (default ``build/screenshots``).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web

from tests.e2e.test_tls_listener import https_get, self_signed
from tests.support.etcd import EtcdServer
from tests.support.gateway import Gateway, free_port, wait_until
from tests.support.upstream import Upstream

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402

ADMIN_KEY = "dashboard-admin-key-0123456789ab"
VIEWER_KEY = "dashboard-viewer-key-0123456789a"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SHOTS = Path(os.environ.get("TOLLWAY_SCREENSHOTS", "build/screenshots"))
WAIT = 20.0  # seconds: generous for a loaded 2-core machine; a pass returns as soon as it can

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="Debian's chromium and chromium-driver are needed (scripts/ensure-system-deps.sh)",
)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, shared_etcd: EtcdServer) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("dashboard")
    g = Gateway(
        root,
        mode="etcd",
        etcd=shared_etcd.endpoint,
        prefix="/dash",
        workers=2,
        admin_key=ADMIN_KEY,
        config={
            "deployment": {
                "admin": {
                    "admin_key": [
                        {"name": "admin", "key": ADMIN_KEY, "role": "admin"},
                        {"name": "viewer", "key": VIEWER_KEY, "role": "viewer"},
                    ]
                }
            }
        },
    )
    g.start()
    yield g
    g.stop()


def admin(gw: Gateway, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(
        method, gw.admin_url(path), json=body, headers={"X-API-KEY": ADMIN_KEY}, timeout=10
    )


@pytest.fixture(scope="module")
def demo(gw: Gateway, upstream: Upstream) -> Gateway:
    """What `make run` creates: an upstream `demo` and the route `hello`, counted by a global
    prometheus rule."""
    assert admin(gw, "PUT", "/upstreams/demo", {"nodes": {upstream.addr: 1}}).status_code < 300
    r = admin(gw, "PUT", "/routes/hello", {"uri": "/hello*", "upstream_id": "demo"})
    assert r.status_code < 300
    r = admin(gw, "PUT", "/global_rules/metrics", {"plugins": {"prometheus": {}}})
    assert r.status_code < 300
    wait_until(lambda: requests.get(gw.url("/hello"), timeout=5).status_code == 200, WAIT)
    return gw


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-extensions",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(WAIT)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def ui_url(gw: Gateway, hash_: str = "") -> str:
    return f"http://127.0.0.1:{gw.admin_port}/ui/{hash_}"


def find(driver: Any, css: str, timeout: float = WAIT) -> WebElement:
    """The first element matching ``css`` once it is displayed."""

    def shown() -> WebElement | None:
        for el in driver.find_elements(By.CSS_SELECTOR, css):
            if el.is_displayed():
                return el
        return None

    el: WebElement = wait_until(shown, timeout)
    return el


def wait_text(driver: Any, css: str, pred: Callable[[str], bool], timeout: float = WAIT) -> str:
    def check() -> str | None:
        for el in driver.find_elements(By.CSS_SELECTOR, css):
            text = el.text
            if pred(text):
                return text or " "
        return None

    text: str = wait_until(check, timeout)
    return text


def page_loaded(driver: Any) -> bool:
    main = driver.find_elements(By.CSS_SELECTOR, "#app main")
    return bool(main and main[0].find_elements(By.CSS_SELECTOR, "h2")) and (
        "Loading…" not in main[0].text
    )


def console_errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def shot(driver: Any, name: str) -> None:
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def login(driver: Any, gw: Gateway, key: str) -> None:
    driver.get(ui_url(gw))
    # A tab still logged in logs out first, as a user would (clearing its storage from here
    # would race with the page, which may be saving the key again at that moment).
    if find(driver, "#key, nav #logout").get_attribute("id") == "logout":
        find(driver, "nav #logout").click()
    field = find(driver, "#key")
    field.clear()
    field.send_keys(key)
    find(driver, "#login-submit").click()
    find(driver, "nav #logout")


def fill(driver: Any, css: str, text: str) -> None:
    """A long value (a PEM) set at once, with the input event the page listens to."""
    el = find(driver, css)
    driver.execute_script(
        "arguments[0].value = arguments[1];"
        "arguments[0].dispatchEvent(new Event('input', {bubbles: true}))",
        el,
        text,
    )


def go(driver: Any, hash_: str) -> None:
    driver.execute_script("location.hash = arguments[0]", hash_)


def set_field(driver: Any, css: str, text: str) -> None:
    """Types ``text`` as a user would; emptied through an input event (WebDriver's clear()
    fires none, and the page reads its fields from input events)."""
    fill(driver, css, "")
    if text:
        find(driver, css).send_keys(text)


@pytest.fixture
def as_admin(browser: Any, demo: Gateway) -> Any:
    here = browser.current_url.startswith(ui_url(demo))
    if (
        not here
        or browser.execute_script("return sessionStorage.getItem('tollway.key')") != ADMIN_KEY
    ):
        login(browser, demo, ADMIN_KEY)
    browser.get_log("browser")  # start each test with an empty console
    return browser


class OtherIpUpstream(Upstream):
    """An upstream on 127.0.0.2: APISIX's ``node`` label is the node's IP alone, so the
    dashboard's per-node counts tell two nodes apart only by address."""

    @property
    def addr(self) -> str:
        return f"127.0.0.2:{self.port}"

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.2", self.port).start()


@pytest.fixture(scope="module")
def far_upstream() -> Iterator[Upstream]:
    up = OtherIpUpstream("far").start()
    yield up
    up.stop()


# -- the tests ------------------------------------------------------------------------------


def test_login_then_the_demo_route_is_listed(browser: Any, demo: Gateway) -> None:
    driver = browser
    driver.get(ui_url(demo))
    find(driver, "#key")
    shot(driver, "login")
    field = find(driver, "#key")
    field.send_keys("not-the-key")
    find(driver, "#login-submit").click()
    assert "wrong apikey" in wait_text(driver, "#login-error", bool)
    # the refused login is the one console error expected (Chromium logs every 401)
    assert [e["message"] for e in console_errors(driver)] == [
        f"{ui_url(demo)}session - Failed to load resource: the server responded with a status "
        "of 401 (Unauthorized)"
    ]
    login(driver, demo, ADMIN_KEY)
    assert find(driver, "#role").text == "admin"
    go(driver, "#/routes")
    row = find(driver, "table.items tr[data-id='hello']")
    assert "/hello*" in row.text and "upstream demo" in row.text
    shot(driver, "routes")
    assert console_errors(driver) == []


PAGES = [
    "#/",
    "#/routes",
    "#/routes/hello",
    "#/routes/hello/edit",
    "#/routes/new",
    "#/services",
    "#/upstreams",
    "#/upstreams/demo",
    "#/upstreams/demo/edit",
    "#/consumers",
    "#/consumers/jack",
    "#/consumer_groups",
    "#/plugin_configs",
    "#/global_rules",
    "#/global_rules/metrics",
    "#/ssls",
    "#/plugin_metadata",
    "#/protos",
    "#/secrets",
    "#/stream_routes",
    "#/upstreams/new",
    "#/services/new",
    "#/consumers/new",
    "#/consumers/jack/credentials/new",
    "#/ssls/new",
    "#/plugin_metadata/new",
    "#/protos/new",
    "#/secrets/new",
]


def test_every_page_renders_without_console_errors(as_admin: Any, demo: Gateway) -> None:
    driver = as_admin
    r = admin(demo, "PUT", "/consumers", {"username": "jack", "plugins": {}})
    assert r.status_code < 300
    r = admin(
        demo, "PUT", "/consumers/jack/credentials/k1", {"plugins": {"key-auth": {"key": "k"}}}
    )
    assert r.status_code < 300
    for hash_ in PAGES:
        go(driver, hash_)
        # every page ends up with its heading and without a loading placeholder
        wait_until(lambda: page_loaded(driver), WAIT)
        find(driver, "#app main h2")
        name = hash_.strip("#/").replace("/", "-") or "overview"
        shot(driver, name)
        assert console_errors(driver) == [], hash_
    go(driver, "#/stream_routes")
    find(driver, "#stream-off")
    go(driver, "#/consumers/jack")
    assert find(driver, "tr[data-id='k1']").text.startswith("k1")


def test_list_search_and_paging(as_admin: Any, demo: Gateway, upstream: Upstream) -> None:
    """The Admin API's own filters (name, uri, label) and paging (page, page_size 10)."""
    driver = as_admin
    for i in range(12):
        body = {"name": f"paged-{i:02}", "uri": f"/paged/{i}", "labels": {"batch": "b1"}}
        body["upstream"] = {"nodes": {upstream.addr: 1}}
        assert admin(demo, "PUT", f"/routes/paged-{i:02}", body).status_code < 300
    go(driver, "#/routes")
    find(driver, "table.items tr[data-id='hello']")
    set_field(driver, "input[name='filter-name']", "paged-")
    find(driver, "#search").click()
    wait_text(driver, "#total", lambda t: t == "12")
    wait_until(lambda: len(driver.find_elements(By.CSS_SELECTOR, "table.items tbody tr")) == 10)
    assert "page 1 of 2" in find(driver, ".pager").text
    find(driver, ".pager button:last-child").click()
    wait_until(lambda: len(driver.find_elements(By.CSS_SELECTOR, "table.items tbody tr")) == 2)
    set_field(driver, "input[name='filter-name']", "")
    set_field(driver, "input[name='filter-uri']", "/paged/1")  # /paged/1, /paged/10, /paged/11
    find(driver, "#search").click()
    wait_text(driver, "#total", lambda t: t == "3")
    ids = {r.get_attribute("data-id") for r in driver.find_elements(By.CSS_SELECTOR, "tbody tr")}
    assert ids == {"paged-01", "paged-10", "paged-11"}
    # APISIX's exact filter= (routes and stream routes)
    set_field(driver, "input[name='filter-uri']", "")
    set_field(driver, "input[name='filter-filter']", "upstream_id=demo")
    find(driver, "#search").click()
    wait_text(driver, "#total", lambda t: t == "1")
    find(driver, "table.items tr[data-id='hello']")
    shot(driver, "routes-search")
    assert console_errors(driver) == []


def test_create_route_through_the_form_and_the_data_plane_serves_it(
    as_admin: Any, demo: Gateway, upstream: Upstream
) -> None:
    driver = as_admin
    go(driver, "#/routes")
    find(driver, "#create").click()
    set_field(driver, "#f-id", "from-ui")
    set_field(driver, "#f-uri", "/made-in-ui")
    set_field(driver, "#f-methods", "GET, POST")
    set_field(driver, "#f-upstream-nodes", f"{upstream.addr} 1")
    set_field(driver, "#f-json", '{"labels": {"made": "ui"}}')
    find(driver, "#save").click()
    assert find(driver, "#item-id").text == "from-ui"
    stored = admin(demo, "GET", "/routes/from-ui").json()["value"]
    assert stored["uri"] == "/made-in-ui" and stored["methods"] == ["GET", "POST"]
    assert stored["labels"] == {"made": "ui"}
    assert stored["upstream"]["nodes"] == {upstream.addr: 1}

    def served() -> bool:
        r = requests.get(demo.url("/made-in-ui"), timeout=5)
        return r.status_code == 200 and r.json()["path"] == "/made-in-ui"

    wait_until(served, WAIT)
    assert console_errors(driver) == []


def test_consumer_and_credential_through_forms(as_admin: Any, demo: Gateway) -> None:
    driver = as_admin
    go(driver, "#/consumers/new")
    set_field(driver, "#f-username", "ann")
    set_field(driver, "#f-desc", "made in the dashboard")
    find(driver, "#save").click()
    assert find(driver, "#item-id").text == "ann"
    go(driver, "#/consumers/ann/credentials/new")
    set_field(driver, "#f-id", "ann-key")
    fill(driver, "#f-json", '{"plugins": {"key-auth": {"key": "ann-secret"}}}')
    find(driver, "#save").click()
    assert find(driver, "#item-id").text == "ann-key"
    stored = admin(demo, "GET", "/consumers/ann/credentials/ann-key").json()["value"]
    assert "key-auth" in stored["plugins"]
    assert admin(demo, "GET", "/consumers/ann").json()["value"]["desc"] == "made in the dashboard"
    go(driver, "#/consumers/ann")
    find(driver, "tr[data-id='ann-key']")
    assert console_errors(driver) == []


def test_invalid_value_shows_the_admin_api_message_next_to_the_field(
    as_admin: Any, demo: Gateway, upstream: Upstream
) -> None:
    driver = as_admin
    go(driver, "#/routes/new")
    set_field(driver, "#f-id", "bad-one")
    set_field(driver, "#f-uri", "/bad")
    set_field(driver, "#f-methods", "FETCH")
    set_field(driver, "#f-upstream-nodes", f"{upstream.addr} 1")
    find(driver, "#save").click()
    message = wait_text(driver, "[data-field='methods'] .field-error", bool)
    # the Admin API's own words, next to the field they name
    assert 'property "methods" validation failed' in message
    shot(driver, "invalid-value")
    assert admin(demo, "GET", "/routes/bad-one").status_code == 404
    # invalid JSON in the editor: said there, nothing sent
    set_field(driver, "#f-methods", "GET")
    set_field(driver, "#f-json", "{not json")
    find(driver, "#save").click()
    assert "invalid JSON" in wait_text(driver, "#f-json-error", bool)
    assert admin(demo, "GET", "/routes/bad-one").status_code == 404


def test_ssl_private_key_is_write_only(
    as_admin: Any, demo: Gateway, tmp_path: Path, upstream: Upstream
) -> None:
    driver = as_admin
    cert, key = self_signed(tmp_path, "ui.test", "DNS:ui.test,DNS:ui2.test")
    go(driver, "#/ssls/new")
    set_field(driver, "#f-id", "ui-cert")
    set_field(driver, "#f-snis", "ui.test")
    fill(driver, "#f-cert", cert)
    fill(driver, "#f-key", key)
    find(driver, "#save").click()
    assert find(driver, "#item-id").text == "ui-cert"
    assert "ui.test" in find(driver, "#item-json").text
    assert "PRIVATE KEY" not in driver.page_source
    # an edit that leaves the key empty keeps the stored one (a PATCH)
    go(driver, "#/ssls/ui-cert/edit")
    wait_until(
        lambda: "BEGIN CERTIFICATE" in (find(driver, "#f-cert").get_attribute("value") or "")
    )
    assert find(driver, "#f-key").get_attribute("value") == ""
    assert "PRIVATE KEY" not in driver.page_source
    set_field(driver, "#f-snis", "ui.test, ui2.test")
    find(driver, "#save").click()
    wait_text(driver, "#item-json", lambda t: "ui2.test" in t)
    assert admin(demo, "GET", "/ssls/ui-cert").json()["value"]["snis"] == ["ui.test", "ui2.test"]
    # the listener serves the new name with the key it kept
    route = {"uri": "/tls", "upstream": {"nodes": {upstream.addr: 1}}}
    assert admin(demo, "PUT", "/routes/tls", route).status_code < 300
    wait_until(
        lambda: https_get(demo.tls_port, "ui2.test", cert, "/tls").startswith(b"HTTP/1.1 200"), WAIT
    )
    shot(driver, "ssl")
    assert console_errors(driver) == []


def test_delete_shows_the_protection_message(as_admin: Any, demo: Gateway) -> None:
    driver = as_admin
    go(driver, "#/upstreams/demo")
    find(driver, "#delete").click()
    find(driver, "#confirm-delete").click()
    message = wait_text(driver, "#delete-error", bool)
    assert "is still using it" in message, message
    assert admin(demo, "GET", "/upstreams/demo").status_code == 200


def test_edit_upstream_nodes_and_traffic_moves(
    as_admin: Any, demo: Gateway, upstream: Upstream, far_upstream: Upstream
) -> None:
    upstream2 = far_upstream
    driver = as_admin
    assert admin(demo, "PUT", "/upstreams/mover", {"nodes": {upstream.addr: 1}}).status_code < 300
    r = admin(demo, "PUT", "/routes/mover", {"uri": "/move/*", "upstream_id": "mover"})
    assert r.status_code < 300

    def served_by(name: str) -> bool:
        return all(
            requests.get(demo.url("/move/x"), timeout=5).json()["name"] == name for _ in range(5)
        )

    wait_until(lambda: served_by("up1"), WAIT)
    go(driver, "#/upstreams/mover/edit")
    nodes = find(driver, "#f-nodes")
    wait_until(lambda: upstream.addr in (nodes.get_attribute("value") or ""), WAIT)
    set_field(driver, "#f-nodes", f"{upstream2.addr} 1")
    find(driver, "#save").click()
    assert find(driver, "#item-id").text == "mover"
    wait_until(lambda: served_by("far"), WAIT)
    before = upstream.hits
    for _ in range(20):
        assert requests.get(demo.url("/move/x"), timeout=5).json()["name"] == "far"
    assert upstream.hits == before
    # the upstream's page counts the requests per node IP, from the workers' metrics
    wait_text(
        driver,
        "table.per-node tr[data-node='127.0.0.2'] .node-total",
        lambda t: t.isdigit() and int(t) >= 20,
    )
    # and the overview charts the route
    go(driver, "#/")
    wait_text(driver, ".traffic[data-route='mover'] .total", lambda t: t.isdigit() and int(t) >= 25)
    find(driver, ".traffic[data-route='mover'] .chart canvas")
    shot(driver, "overview-traffic")
    assert console_errors(driver) == []


def test_route_page_charts_rate_status_and_latency(
    as_admin: Any, demo: Gateway, upstream: Upstream
) -> None:
    """Requests that take 60 ms land in the (50, 100] ms bucket: p50 and p99 are read from the
    workers' histograms between two reports, as Prometheus' histogram_quantile."""
    driver = as_admin
    route = {"uri": "/slow/*", "upstream": {"nodes": {upstream.addr: 1}}}
    assert admin(demo, "PUT", "/routes/slow", route).status_code < 300
    wait_until(lambda: requests.get(demo.url("/slow/1"), timeout=5).status_code == 200, WAIT)
    go(driver, "#/routes/slow")
    find(driver, ".traffic[data-route='slow'] .chart canvas")

    def measured() -> bool:
        # keep traffic flowing while the page polls, until one interval has seen it
        for _ in range(3):
            assert requests.get(demo.url("/slow/60"), timeout=5).status_code == 200
        p50 = driver.find_element(By.CSS_SELECTOR, ".traffic[data-route='slow'] .p50").text
        return p50 not in ("", "\u2013") and 50 <= float(p50) <= 100

    wait_until(measured, WAIT, interval=0.2)
    p99 = float(find(driver, ".traffic[data-route='slow'] .p99").text)
    assert 50 <= p99 <= 100
    assert float(find(driver, ".traffic[data-route='slow'] .rps").text) > 0
    shot(driver, "route-traffic")
    # the overview: every worker applied the served revision, no lag, not from the snapshot
    go(driver, "#/")
    served = wait_text(driver, "#revision", str.isdigit)
    wait_until(
        lambda: (
            [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".worker-revision")]
            == [served, served]
        )
    )
    assert find(driver, "#lag").text == "0"
    assert find(driver, "#snapshot").text == "live config"
    assert console_errors(driver) == []


def test_killed_node_shows_unhealthy(as_admin: Any, demo: Gateway, upstream: Upstream) -> None:
    driver = as_admin
    doomed = Upstream("doomed").start()
    try:
        checks = {
            "active": {
                "type": "http",
                "http_path": "/status/200",
                "timeout": 1,
                "healthy": {"interval": 1, "successes": 1},
                "unhealthy": {"interval": 1, "tcp_failures": 1, "http_failures": 1},
            }
        }
        body = {"nodes": {upstream.addr: 1, doomed.addr: 1}, "checks": checks}
        assert admin(demo, "PUT", "/upstreams/checked", body).status_code < 300
        r = admin(demo, "PUT", "/routes/checked", {"uri": "/checked", "upstream_id": "checked"})
        assert r.status_code < 300
        go(driver, "#/upstreams/checked")
        row = f"table.health tr[data-node='{doomed.addr}'] .status"
        wait_text(driver, row, lambda t: t == "healthy")
        doomed.stop()
        started = time.monotonic()
        # one probe interval (1 s) plus the probe's timeout, with room for a loaded machine
        wait_text(driver, row, lambda t: t == "unhealthy", timeout=10)
        print(f"\nkilled node shown unhealthy after {time.monotonic() - started:.1f}s")
        shot(driver, "upstream-health")
        assert console_errors(driver) == []
    finally:
        doomed.stop()


def test_viewer_sees_everything_and_cannot_save(browser: Any, demo: Gateway) -> None:
    driver = browser
    login(driver, demo, VIEWER_KEY)
    try:
        assert find(driver, "#role").text == "viewer"
        go(driver, "#/routes")
        find(driver, "table.items tr[data-id='hello']")
        assert driver.find_elements(By.CSS_SELECTOR, "#create") == []
        go(driver, "#/routes/hello")
        find(driver, "#item-json")
        assert driver.find_elements(By.CSS_SELECTOR, "#edit, #delete") == []
        go(driver, "#/routes/hello/edit")
        find(driver, "#read-only")
        save = find(driver, "#save")
        assert not save.is_enabled()
        # even with the button forced on, the Admin API refuses the viewer's write
        set_field(driver, "#f-uri", "/changed-by-viewer")
        driver.execute_script("document.getElementById('save').disabled = false")
        find(driver, "#save").click()
        assert "invalid method for role viewer" in wait_text(driver, ".field-error", bool)
        assert admin(demo, "GET", "/routes/hello").json()["value"]["uri"] == "/hello*"
        shot(driver, "viewer")
    finally:
        find(driver, "#logout").click()
        find(driver, "#key")


# -- security -------------------------------------------------------------------------------


def test_nothing_answers_without_a_key_but_the_login_page(demo: Gateway) -> None:
    base = f"http://127.0.0.1:{demo.admin_port}/ui/"
    for public in ("", "index.html", "login.js", "style.css", "favicon.svg"):
        r = requests.get(base + public, timeout=5)
        assert r.status_code == 200, public
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    for private in ("app/app.js", "app/app.css", "api/live", "app/", "app/nothing.js"):
        r = requests.get(base + private, timeout=5)
        assert r.status_code == 401, private
        assert "Content-Security-Policy" in r.headers
        assert b"preact" not in r.content.lower()
    # a session unlocks the application's files; the live endpoint wants the header itself
    s = requests.Session()
    assert s.post(base + "session", timeout=5).status_code == 401
    assert s.post(base + "session", headers={"X-API-KEY": "wrong"}, timeout=5).status_code == 401
    r = s.post(base + "session", headers={"X-API-KEY": VIEWER_KEY}, timeout=5)
    assert r.json()["role"] == "viewer"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui/" in cookie
    assert VIEWER_KEY not in cookie
    assert s.get(base + "app/app.js", timeout=5).status_code == 200
    assert s.get(base + "api/live", timeout=5).status_code == 401
    assert (
        requests.get(base + "api/live", params={"api_key": ADMIN_KEY}, timeout=5).status_code == 401
    )
    live = requests.get(base + "api/live", headers={"X-API-KEY": VIEWER_KEY}, timeout=5).json()
    assert [w["revision"] for w in live["config"]["workers"]] and live["traffic"] is not None
    # no escaping the assets directory
    for evil in ("..%2f..%2fadmin%2fui.py", "app/..%2f..%2fui.py", "%2e%2e/keys.py"):
        assert s.get(base + evil, timeout=5).status_code in (400, 401, 404), evil
    s.delete(base + "session", timeout=5)
    assert s.get(base + "app/app.js", timeout=5).status_code == 401


def test_enable_admin_ui_false_serves_no_dashboard(tmp_path: Path, shared_etcd: EtcdServer) -> None:
    conf = {"deployment": {"admin": {"enable_admin_ui": False}}}
    with Gateway(tmp_path, mode="etcd", etcd=shared_etcd.endpoint, config=conf) as g:
        base = f"http://127.0.0.1:{g.admin_port}/ui/"
        assert requests.get(base, timeout=5).status_code == 404
        assert (
            requests.post(
                base + "session", headers={"X-API-KEY": g.admin_key}, timeout=5
            ).status_code
            == 404
        )
        assert (
            requests.get(
                g.admin_url("/routes"), headers={"X-API-KEY": g.admin_key}, timeout=5
            ).status_code
            == 200
        )


class _Attacker(BaseHTTPRequestHandler):
    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_cross_site_page_cannot_change_anything(as_admin: Any, demo: Gateway) -> None:
    """Logged in in one tab, the user opens another site: its requests to the Admin API and
    to the dashboard carry no key (the key is in the dashboard's sessionStorage, the session
    cookie is SameSite=Strict and only opens /ui/ files), so nothing changes."""
    driver = as_admin
    admin_base = f"http://127.0.0.1:{demo.admin_port}"
    body = json.dumps({"uri": "/evil", "upstream": {"nodes": {"127.0.0.1:1": 1}}})
    _Attacker.page = f"""<!doctype html><body><form id=f method=POST target=sink
      action="{admin_base}/apisix/admin/routes" enctype="text/plain">
      <input name='{body[:-1]}' value='}}'></form><iframe name=sink></iframe>
      <script>
      window.results = [];
      const tries = [
        fetch("{admin_base}/apisix/admin/routes/evil", {{method: "PUT", credentials: "include", body: {json.dumps(body)}}}),
        fetch("{admin_base}/apisix/admin/routes/evil", {{method: "PUT", body: {json.dumps(body)}}}),
        fetch("{admin_base}/apisix/admin/routes", {{method: "POST", mode: "no-cors", credentials: "include", body: {json.dumps(body)}}}),
        fetch("{admin_base}/ui/api/live", {{credentials: "include"}}),
        fetch("{admin_base}/ui/app/app.js", {{credentials: "include"}}),
      ];
      Promise.allSettled(tries).then(rs => {{
        window.results = rs.map(r => r.status === "fulfilled" ? r.value.status : "error");
        document.getElementById("f").submit();
        window.done = true;
      }});
      </script></body>""".encode()
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Attacker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # "localhost" is another site than 127.0.0.1, where the dashboard runs
        driver.get(f"http://localhost:{server.server_port}/")
        wait_until(lambda: driver.execute_script("return window.done === true"), WAIT)
        results = driver.execute_script("return window.results")
        print("cross-site answers:", results)
        # readable answers (CORS lets the Admin API's be read) say 401; the rest are opaque
        assert all(r in (401, 0, "error") for r in results), results
        assert results[1] == 401, results  # the Admin API's CORS lets this answer be read
        assert results[3] in (401, "error") and results[4] in (401, "error"), results

        def form_answered() -> bool:
            return admin(demo, "GET", "/routes").status_code == 200

        wait_until(form_answered, WAIT)
        listed = admin(demo, "GET", "/routes").json()["list"]
        assert not [it for it in listed if it["value"].get("uri") == "/evil"]
        assert admin(demo, "GET", "/routes/evil").status_code == 404
    finally:
        server.shutdown()
        server.server_close()
        driver.get(ui_url(demo))
        find(driver, "nav #logout")


def test_overview_says_when_the_instance_serves_its_snapshot(
    browser: Any, tmp_path: Path, etcd: EtcdServer, upstream: Upstream
) -> None:
    """etcd down at start: the instance serves the last-known-good snapshot, and says so."""
    g = Gateway(tmp_path, mode="etcd", etcd=etcd.endpoint, admin_key=ADMIN_KEY)
    with g:
        assert (
            admin(
                g,
                "PUT",
                "/routes/snap",
                {"uri": "/snap", "upstream": {"nodes": {upstream.addr: 1}}},
            ).status_code
            < 300
        )
        wait_until(lambda: requests.get(g.url("/snap"), timeout=5).status_code == 200, WAIT)
        wait_until((tmp_path / "run" / "config-snapshot.bin").exists, WAIT)
    etcd.stop()
    with g.start(wait_ready=False):
        g.wait_ready(timeout=30)
        browser.get_log("browser")  # what the cross-site test's page logged
        login(browser, g, ADMIN_KEY)
        go(browser, "#/")
        assert "on-disk snapshot" in find(browser, "#snapshot").text
        shot(browser, "overview-snapshot")
        etcd.restart()
        wait_text(browser, "#snapshot", lambda t: t == "live config", timeout=30)
        assert console_errors(browser) == []


def test_the_key_is_never_in_a_url_or_a_log(browser: Any, demo: Gateway) -> None:
    """Runs last: every request the browser made in this module, and every log line."""
    urls = []
    for entry in browser.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    assert any("/apisix/admin/" in u for u in urls) and any("/ui/" in u for u in urls)
    for key in (ADMIN_KEY, VIEWER_KEY):
        assert not [u for u in urls if key in u]
        assert key not in demo.logs()
        for log in demo.root.rglob("*.log"):
            assert key not in log.read_text(errors="replace"), log
