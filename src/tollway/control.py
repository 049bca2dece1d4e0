"""The control API (APISIX ``apisix/control/v1.lua``) on ``apisix.control``, default 127.0.0.1:9090.

Served by the supervisor, which holds the instance's config and health checkers, so every worker
reports the same states (in APISIX each worker answers from its shared dict):

* ``GET /v1/healthcheck``: every upstream with checks, routes first, then services, then
  upstreams: ``[{name, type, nodes: [{ip, port, status, counter}]}]`` (``{}`` when none);
* ``GET /v1/healthcheck/{routes|services|upstreams}/{id}``: one of them; 404
  ``{"error_msg": "routes[1] not found"}`` or ``"no checker for routes[1]"``, 400 for another type;
  both answer an HTML table when the ``Accept`` header asks for text/html;
* ``GET /v1/schema``: ``{main: {route, service, upstream...}, plugins: {...}, stream_plugins}``;
* ``GET /v1/routes``, ``/v1/services``, ``/v1/upstreams`` and ``/v1/route/{id}``,
  ``/v1/service/{id}``, ``/v1/upstream/{id}``: the items as the instance serves them
  (``{key, value, createdIndex, modifiedIndex}``), 404 ``{"error_msg": "route[1] not found"}``;
* ``GET /v1/plugin_metadatas`` and ``/v1/plugin_metadata/{name}``;
* ``POST /v1/gc``: a garbage collection in the supervisor; ``PUT /v1/plugins/reload``: ``done``.

Disabled by ``apisix.enable_control: false``. A port already in use is logged and the instance
runs on.
"""

from __future__ import annotations

import gc
import html
import json
import logging
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from tollway.errors import ConfigError
from tollway.logs import http_server_log

if TYPE_CHECKING:
    from tollway.instance import InstanceView

log = logging.getLogger("tollway.control")

DEFAULT_IP = "127.0.0.1"
DEFAULT_PORT = 9090
_ORDER = {"routes": 0, "services": 1, "upstreams": 2}


def _server() -> str:
    from tollway import __version__

    return f"Tollway/{__version__}"


def _json(status: int, body: Any) -> web.Response:
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return web.json_response(text=text, status=status, headers={"Server": _server()})


def _kind(name: str) -> int:
    parts = name.strip("/").split("/")
    return _ORDER.get(parts[-2], 3) if len(parts) >= 2 else 3


# /v1/<plural> and /v1/<singular>/<id> -> the collection served
_DUMPS = {"routes": "route", "services": "service", "upstreams": "upstream"}


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


def runtime_value(it: Any, registry: Any) -> Any:
    """An item as the instance serves it, the way APISIX's dumps show it: checked (schema
    defaults filled in, plugin confs too), the id a string, nodes in array form."""
    value = _no_nulls(_with_defaults(it.obj))
    if not isinstance(value, dict):
        return value
    value["id"] = it.id
    for up in (value, value.get("upstream")):
        if isinstance(up, dict) and isinstance(up.get("nodes"), dict):
            up["nodes"] = [_hash_node(a, w) for a, w in up["nodes"].items()]
    plugins = value.get("plugins")
    if isinstance(plugins, dict):
        for name, conf in plugins.items():
            try:
                decoded = registry.decode_conf(name, conf)
            except ConfigError:
                continue
            full = _no_nulls(_with_defaults(decoded))
            if isinstance(conf, dict) and "_meta" in conf:
                full["_meta"] = conf["_meta"]
            plugins[name] = full
    return value


def _with_defaults(value: Any) -> Any:
    """Builtins of a decoded object with every field, defaults included (the models omit
    defaults when they encode: Tollway stores what was written, as APISIX 3.14+)."""
    if isinstance(value, msgspec.Struct):
        return {f: _with_defaults(getattr(value, f)) for f in value.__struct_fields__}
    if isinstance(value, dict):
        return {k: _with_defaults(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_with_defaults(v) for v in value]
    return msgspec.to_builtins(value)


def _hash_node(addr: str, weight: Any) -> dict[str, Any]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        return {"host": addr, "weight": weight}
    return {"host": host, "port": int(port), "weight": weight}


def _no_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_no_nulls(v) for v in value]
    return value


def build_control_app(instance: InstanceView) -> web.Application:
    prefix = instance.settings.etcd.prefix
    # APISIX names a checker by its config key: "/apisix/routes/1" from etcd, "/routes/1" in
    # standalone mode.
    strip = len(prefix) if instance.settings.config_provider != "etcd" else 0

    def described(key: str | None = None) -> list[dict[str, Any]]:
        stats = instance.upstreams.describe(key)
        if strip:
            stats = [{**s, "name": s["name"][strip:]} for s in stats]
        return stats

    async def healthchecks(request: web.Request) -> web.Response:
        stats = sorted(described(), key=lambda s: _kind(s["name"]))
        if _wants_html(request):
            return _html(stats)
        return _json(200, stats if stats else {})  # an empty Lua table: {}

    async def healthcheck(request: web.Request) -> web.Response:
        src_type = request.match_info["src_type"]
        src_id = request.match_info.get("src_id", "")
        if not src_id:
            return _json(404, {"error_msg": f"missing src id for src type {src_type}"})
        if src_type not in _ORDER:
            return _json(400, {"error_msg": f"invalid src type {src_type}"})
        if instance.store[src_type].get(src_id) is None:
            return _json(404, {"error_msg": f"{src_type}[{src_id}] not found"})
        stats = described(f"{prefix}/{src_type}/{src_id}")
        if not stats:
            return _json(404, {"error_msg": f"no checker for {src_type}[{src_id}]"})
        return _html(stats) if _wants_html(request) else _json(200, stats[0])

    async def missing_id(request: web.Request) -> web.Response:
        src_type = request.match_info.get("src_type", "")
        return _json(404, {"error_msg": f"missing src id for src type {src_type}"})

    def item(it: Any) -> dict[str, Any]:
        return {
            "key": it.key,
            "value": runtime_value(it, instance.registry),
            "createdIndex": it.create_revision,
            "modifiedIndex": it.mod_revision,
        }

    async def dump_all(request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        if kind not in _DUMPS:
            raise web.HTTPNotFound()
        return _json(200, [item(it) for it in instance.store[kind].items.values()])

    async def dump_one(request: web.Request) -> web.Response:
        singular, item_id = request.match_info["singular"], request.match_info["id"]
        kind = next((k for k, v in _DUMPS.items() if v == singular), None)
        if kind is None:
            raise web.HTTPNotFound()
        it = instance.store[kind].get(item_id)
        if it is None:
            return _json(404, {"error_msg": f"{singular}[{item_id}] not found"})
        return _json(200, item(it))

    async def plugin_metadatas(_: web.Request) -> web.Response:
        return _json(200, [it.value for it in instance.store["plugin_metadata"].items.values()])

    async def plugin_metadata(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        it = instance.store["plugin_metadata"].get(name)
        if it is None:
            return _json(404, {"error_msg": f"plugin metadata[{name}] not found"})
        return _json(200, it.value)

    async def schema(_: web.Request) -> web.Response:
        from tollway.admin.meta import SCHEMA_NAMES, plugin_infos
        from tollway.model import json_schema
        from tollway.model.objects import CHASH_HEADER_KEY as HEADER_KEY
        from tollway.model.objects import CHASH_VARS_KEY as VARS_KEY

        main: dict[str, Any] = {name: json_schema(kind) for name, kind in SCHEMA_NAMES.items()}
        # what APISIX's core.schema adds beside the objects (control/v1.lua)
        main["plugins"] = {"type": "array"}
        main["upstream_hash_header_schema"] = {"type": "string", "pattern": HEADER_KEY.pattern}
        main["upstream_hash_vars_schema"] = {"type": "string", "pattern": VARS_KEY.pattern}
        return _json(
            200, {"main": main, "plugins": plugin_infos(instance.registry), "stream_plugins": {}}
        )

    async def gc_collect(_: web.Request) -> web.Response:
        gc.collect()
        return web.Response(status=200, headers={"Server": _server()})

    async def reload_plugins(request: web.Request) -> web.Response:
        if request.method != "PUT":  # APISIX routes PUT only: anything else is not found
            raise web.HTTPNotFound()
        return web.Response(text="done", headers={"Server": _server()})

    app = web.Application()
    app.router.add_get("/v1/healthcheck", healthchecks)
    app.router.add_get("/v1/healthcheck/", missing_id)
    app.router.add_get("/v1/healthcheck/{src_type}", missing_id)
    app.router.add_get("/v1/healthcheck/{src_type}/{src_id}", healthcheck)
    app.router.add_get("/v1/schema", schema)
    app.router.add_get("/v1/plugin_metadatas", plugin_metadatas)
    app.router.add_get("/v1/plugin_metadata/{name}", plugin_metadata)
    app.router.add_get("/v1/{kind}", dump_all)
    app.router.add_get("/v1/{singular}/{id}", dump_one)
    app.router.add_post("/v1/gc", gc_collect)
    app.router.add_route("*", "/v1/plugins/reload", reload_plugins)
    return app


async def start_control_server(instance: InstanceView) -> web.AppRunner | None:
    apisix = instance.settings.conf.apisix
    if not apisix.enable_control or not instance.settings.serves_proxy:
        return None
    conf = apisix.control
    ip = conf.ip if conf is not None else DEFAULT_IP
    port = conf.port if conf is not None else DEFAULT_PORT
    runner = web.AppRunner(build_control_app(instance), access_log=None, logger=http_server_log())
    await runner.setup()
    try:
        await web.TCPSite(runner, ip, port, reuse_address=True).start()
    except OSError as e:
        log.error("control API not started on %s:%d: %s", ip, port, e)
        await runner.cleanup()
        return None
    return runner
