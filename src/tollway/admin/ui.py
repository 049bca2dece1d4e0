"""The dashboard (APISIX 3.13+ serves its own at ``/ui/`` on the Admin API port;
``deployment.admin.enable_admin_ui``, on by default as there).

What is served, all from the installed package (no CDN, nothing fetched at run time):

* the login page: ``/ui/`` (``index.html``), ``login.js``, ``style.css``, ``favicon.svg``,
  answered without a key;
* the application (``/ui/app/...``): only with the session cookie a login sets;
* ``POST /ui/session`` (the key in ``X-API-KEY``): checks the key, answers its role and sets
  ``tollway_ui``, a random session id (HttpOnly, SameSite=Strict, Path=/ui/) that only unlocks
  the application's files. The key itself stays in the tab's sessionStorage and goes to the
  Admin API in the ``X-API-KEY`` header: never in a URL, never in a cookie;
* ``GET /ui/api/live`` (``X-API-KEY`` header, any role): what the Admin API has no endpoint for:
  node health, the workers' request counters per route, the config revision each worker applied.

Every answer carries a strict Content-Security-Policy (scripts, styles and connections from this
origin only, no inline code, no framing). Nothing here changes the config: writes go through the
Admin API with the header, which a cross-site page cannot send without the key.
"""

from __future__ import annotations

import json
import mimetypes
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tollway.admin.keys import AdminKey

if TYPE_CHECKING:
    from tollway.instance import InstanceView

ASSETS = Path(__file__).with_name("ui_assets")
PREFIX = "/ui"
PUBLIC = frozenset({"index.html", "login.js", "style.css", "favicon.svg"})
COOKIE = "tollway_ui"
SESSION_TTL = 12 * 3600.0
MAX_SESSIONS = 1000
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
WRONG_KEY = {"error_msg": "failed to check token", "description": "wrong apikey"}
_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def role_of(keys: list[AdminKey], token: str | None, *, required: bool) -> str | None:
    """The role of a key, None when it is not one (constant-time compare, as check_token)."""
    if not required:
        return "admin"
    if not token:
        return None
    role = None
    for k in keys:
        if secrets.compare_digest(k.key.encode(), token.encode()):
            role = role or k.role
    return role


class Sessions:
    """Random session ids -> (role, expiry). In memory: a restart logs everyone out, and the
    page logs in again from the key kept in the tab."""

    def __init__(self, ttl: float = SESSION_TTL, cap: int = MAX_SESSIONS) -> None:
        self.ttl = ttl
        self.cap = cap
        self._by_id: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def open(self, role: str, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        sid = secrets.token_urlsafe(32)
        self._by_id[sid] = (role, now + self.ttl)
        while len(self._by_id) > self.cap:
            self._by_id.popitem(last=False)
        return sid

    def role(self, sid: str | None, now: float | None = None) -> str | None:
        if not sid:
            return None
        entry = self._by_id.get(sid)
        if entry is None:
            return None
        now = time.monotonic() if now is None else now
        if entry[1] <= now:
            del self._by_id[sid]
            return None
        return entry[0]

    def close(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)


def resolve_asset(rel: str) -> Path | None:
    """The packaged file for a URL path under /ui/, never outside the assets directory."""
    if not rel or rel.endswith("/"):
        rel += "index.html"
    parts = rel.split("/")
    if any(p in ("", ".", "..") or "\\" in p or p.startswith(".") for p in parts):
        return None
    path = ASSETS.joinpath(*parts)
    return path if path.is_file() else None


def _reply(status: int, body: Any) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body, separators=(",", ":")) + "\n",
        content_type="application/json",
        headers=SECURITY_HEADERS,
    )


class DashboardUI:
    def __init__(self, keys: list[AdminKey], key_required: bool, sup: InstanceView | None) -> None:
        self.keys = keys
        self.key_required = key_required
        self.sup = sup
        self.sessions = Sessions()
        self._files: dict[Path, bytes] = {}

    def header_role(self, request: web.Request) -> str | None:
        return role_of(self.keys, request.headers.get("X-API-KEY"), required=self.key_required)

    async def asset(self, request: web.Request) -> web.StreamResponse:
        rel = request.match_info.get("tail", "")
        path = resolve_asset(rel)
        name = rel or "index.html"
        if name not in PUBLIC and self.sessions.role(request.cookies.get(COOKIE)) is None:
            return _reply(401, {"error_msg": "failed to check token", "description": "log in"})
        if path is None:
            return _reply(404, {"error_msg": "not found"})
        ctype = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "text/plain"
        if ctype.startswith("text/") or ctype.endswith("+xml"):
            ctype += "; charset=utf-8"
        body = self._files.get(path)
        if body is None:  # the package's files do not change while it runs: read each once
            body = self._files[path] = path.read_bytes()
        return web.Response(body=body, headers={**SECURITY_HEADERS, "Content-Type": ctype})

    async def redirect(self, _: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={**SECURITY_HEADERS, "Location": PREFIX + "/"})

    async def login(self, request: web.Request) -> web.StreamResponse:
        role = self.header_role(request)
        if role is None:
            return _reply(401, WRONG_KEY)
        stream = self.sup is not None and "stream" in self.sup.settings.conf.apisix.proxy_mode
        resp = _reply(200, {"role": role, "key_required": self.key_required, "stream": stream})
        resp.set_cookie(
            COOKIE,
            self.sessions.open(role),
            path=PREFIX + "/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.close(request.cookies.get(COOKIE))
        resp = _reply(200, {})
        resp.del_cookie(COOKIE, path=PREFIX + "/")
        return resp

    async def live(self, request: web.Request) -> web.StreamResponse:
        if self.header_role(request) is None:
            return _reply(401, WRONG_KEY)
        return _reply(200, live_report(self.sup))

    def register(self, app: web.Application) -> None:
        app.router.add_get(PREFIX, self.redirect)
        app.router.add_post(PREFIX + "/session", self.login)
        app.router.add_delete(PREFIX + "/session", self.logout)
        app.router.add_get(PREFIX + "/api/live", self.live)
        app.router.add_get(PREFIX + "/{tail:.*}", self.asset)


def add_ui(
    app: web.Application, keys: list[AdminKey], key_required: bool, sup: InstanceView | None
) -> None:
    """Serve the dashboard on the Admin API's app (its middleware applies: allow_admin, the
    version headers)."""
    DashboardUI(keys, key_required, sup).register(app)


# -- the live report ----------------------------------------------------------------------


def live_report(sup: InstanceView | None) -> dict[str, Any]:
    if sup is None:
        return {"time": time.time(), "config": None, "health": [], "traffic": None}
    return {
        "time": time.time(),
        "config": config_state(sup),
        "health": sup.upstreams.describe(),
        "traffic": traffic(sup),
    }


def config_state(sup: InstanceView) -> dict[str, Any]:
    src = sup.source_status()
    etcd_rev = src.etcd_revision
    return {
        "provider": sup.settings.config_provider,
        "revision": src.revision,
        "etcd_revision": etcd_rev,
        "lag": max(0, src.lag) if src.lag is not None else None,
        "from_snapshot": src.from_snapshot,
        "source_connected": src.connected,
        "rejected": src.rejected,
        "workers": [
            {
                "pid": w.pid,
                "ready": w.ready,
                "revision": w.revision,
                "lag": max(0, etcd_rev - w.revision) if etcd_rev and w.revision else None,
            }
            for w in sup.worker_status()
        ],
    }


def traffic(sup: InstanceView) -> dict[str, Any] | None:
    """The workers' running totals (the prometheus plugin's files), summed per route; None when
    the export is off. The page turns two reports into rates and quantiles."""
    from prometheus_client.multiprocess import MultiProcessCollector

    found = sup.metric_files()
    if found is None:
        return None
    files, prefix = found
    families = MultiProcessCollector.merge(files, accumulate=True)
    samples = ((s.name, s.labels, s.value) for m in families for s in m.samples)
    return summarize(samples, prefix)


def summarize(samples: Iterable[tuple[str, dict[str, str], float]], prefix: str) -> dict[str, Any]:
    """``{"routes": {route: {"status": {"2xx": n, ...}, "buckets": [[le_ms, cumulative], ...]}},
    "nodes": {node: n}}`` from APISIX's ``http_status`` counter (requests per status class, per
    upstream node) and the ``type="request"`` series of ``http_latency``."""
    status_name = prefix + "http_status"
    bucket_name = prefix + "http_latency_bucket"
    routes: dict[str, dict[str, Any]] = {}
    nodes: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    for name, labels, value in samples:
        route = labels.get("route", "")
        if name == status_name:
            entry = routes.setdefault(route, {"status": {}, "buckets": []})
            cls = (labels.get("code", "") or "?")[:1] + "xx"
            entry["status"][cls] = entry["status"].get(cls, 0) + value
            node = labels.get("node", "")
            if node:
                nodes[node] = nodes.get(node, 0) + value
        elif name == bucket_name and labels.get("type") == "request":
            routes.setdefault(route, {"status": {}, "buckets": []})
            le = float(labels.get("le", "inf"))
            per = buckets.setdefault(route, {})
            per[le] = per.get(le, 0) + value
    for route, per in buckets.items():
        routes[route]["buckets"] = [
            ["+Inf" if le == float("inf") else le, n] for le, n in sorted(per.items())
        ]
    return {"routes": routes, "nodes": nodes}
