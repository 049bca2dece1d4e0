"""The control API (APISIX ``apisix/control/v1.lua``) on ``apisix.control``, default 127.0.0.1:9090.

Served by the supervisor, which holds the instance's health checkers, so every worker reports the
same states (in APISIX each worker answers from its shared dict). Routes so far:

* ``GET /v1/healthcheck``: every upstream with checks, routes first, then services, then
  upstreams: ``[{name, type, nodes: [{ip, port, hostname, status, counter}]}]``;
* ``GET /v1/healthcheck/{routes|services|upstreams}/{id}``: one of them; 404
  ``{"error_msg": "routes[1] not found"}`` or ``"no checker for routes[1]"``, 400 for another type.

Both answer an HTML table when the ``Accept`` header asks for text/html (APISIX). Disabled by
``apisix.enable_control: false``. A port already in use is logged and the instance runs on.
"""

from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from tollway.supervisor import Supervisor

log = logging.getLogger("tollway.control")

DEFAULT_IP = "127.0.0.1"
DEFAULT_PORT = 9090
_ORDER = {"routes": 0, "services": 1, "upstreams": 2}


def _server() -> str:
    from tollway import __version__

    return f"Tollway/{__version__}"


def _json(status: int, body: Any) -> web.Response:
    return web.json_response(body, status=status, headers={"Server": _server()})


def _kind(name: str) -> int:
    parts = name.split("/")
    return _ORDER.get(parts[2], 3) if len(parts) > 2 else 3


def _html(stats: list[dict[str, Any]]) -> web.Response:
    rows = []
    i = 0
    for stat in stats:
        for node in stat["nodes"]:
            i += 1
            healthy = node["status"] in ("healthy", "mostly_healthy")
            c = node["counter"]
            cells = [
                i,
                stat["name"],
                stat["type"],
                f"{node['ip']}:{node['port']}",
                node["status"],
                c["success"],
                c["tcp_failure"],
                c["http_failure"],
                c["timeout_failure"],
            ]
            tr = "<tr>" if healthy else '<tr bgcolor="#FF0000">'
            rows.append(tr + "".join(f"<td>{html.escape(str(v))}</td>" for v in cells) + "</tr>")
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "Index",
            "Upstream",
            "Check type",
            "Host",
            "Status",
            "Success counts",
            "TCP Failures",
            "HTTP Failures",
            "TIMEOUT Failures",
        )
    )
    body = (
        "<html><head><title>Tollway upstream check status</title></head><body>"
        "<h1>Tollway upstream check status</h1>"
        '<table cellspacing="0" cellpadding="3" border="1">'
        f'<tr bgcolor="#C0C0C0">{head}</tr>{"".join(rows)}</table></body></html>'
    )
    return web.Response(text=body, content_type="text/html", headers={"Server": _server()})


def _wants_html(request: web.Request) -> bool:
    return "text/html" in request.headers.get("Accept", "")


def build_control_app(sup: Supervisor) -> web.Application:
    async def healthchecks(request: web.Request) -> web.Response:
        stats = sorted(sup.upstreams.describe(), key=lambda s: _kind(s["name"]))
        return _html(stats) if _wants_html(request) else _json(200, stats)

    async def healthcheck(request: web.Request) -> web.Response:
        src_type = request.match_info["src_type"]
        src_id = request.match_info.get("src_id", "")
        if not src_id:
            return _json(404, {"error_msg": f"missing src id for src type {src_type}"})
        if src_type not in _ORDER:
            return _json(400, {"error_msg": f"invalid src type {src_type}"})
        if sup.store[src_type].get(src_id) is None:
            return _json(404, {"error_msg": f"{src_type}[{src_id}] not found"})
        stats = sup.upstreams.describe(f"/apisix/{src_type}/{src_id}")
        if not stats:
            return _json(404, {"error_msg": f"no checker for {src_type}[{src_id}]"})
        return _html(stats) if _wants_html(request) else _json(200, stats[0])

    async def missing_id(request: web.Request) -> web.Response:
        src_type = request.match_info["src_type"]
        return _json(404, {"error_msg": f"missing src id for src type {src_type}"})

    app = web.Application()
    app.router.add_get("/v1/healthcheck", healthchecks)
    app.router.add_get("/v1/healthcheck/{src_type}", missing_id)
    app.router.add_get("/v1/healthcheck/{src_type}/{src_id}", healthcheck)
    return app


async def start_control_server(sup: Supervisor) -> web.AppRunner | None:
    apisix = sup.settings.conf.apisix
    if not apisix.enable_control or not sup.settings.serves_proxy:
        return None
    conf = apisix.control
    ip = conf.ip if conf is not None else DEFAULT_IP
    port = conf.port if conf is not None else DEFAULT_PORT
    runner = web.AppRunner(build_control_app(sup), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, ip, port, reuse_address=True).start()
    except OSError as e:
        log.error("control API not started on %s:%d: %s", ip, port, e)
        await runner.cleanup()
        return None
    return runner
