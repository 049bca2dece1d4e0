"""The status API (APISIX 3.13+): ``/status`` and ``/status/ready`` on ``apisix.status``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tollway.checks import UnknownPluginItems
from tollway.logs import http_server_log

if TYPE_CHECKING:
    from tollway.supervisor import Supervisor


def _json(status: int, body: dict[str, Any]) -> web.Response:
    text = json.dumps(body, separators=(",", ":"))  # APISIX's cjson: {"status":"ok"}
    return web.json_response(text=text, status=status, headers={"Server": _server()})


def _server() -> str:
    from tollway import __version__

    return f"Tollway/{__version__}"


UNKNOWN_LISTED = 100  # items listed in /status/config's unknown_plugins (all are counted)


def build_status_app(sup: Supervisor) -> web.Application:
    unknown = UnknownPluginItems(sup.registry)

    async def status(_: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def ready(_: web.Request) -> web.Response:
        if sup.all_ready():
            return _json(200, {"status": "ok"})
        current = [w for w in sup.workers if w.generation == sup.generation]
        n_ready = sum(1 for w in current if w.ready)
        return _json(
            503,
            {
                "status": "error",
                "error": f"worker count: {len(current)} but status report count: {n_ready}",
            },
        )

    async def config(_: web.Request) -> web.Response:
        """Tollway's addition: what each worker has applied, and the lag behind etcd."""
        source = sup.source
        etcd_rev = getattr(source, "etcd_revision", None)
        return _json(
            200,
            {
                "revision": sup.store.revision,
                "etcd_revision": etcd_rev,
                "lag": (etcd_rev - sup.store.revision) if etcd_rev else None,
                "from_snapshot": sup.agent.from_snapshot,
                "rejected": sup.store.rejected,
                "unknown_plugins": _unknown_plugins(sup, unknown),
                "source_connected": getattr(source, "connected", None),
                "workers": [
                    {"pid": w.proc.pid, "ready": w.ready, "revision": w.revision}
                    for w in sup.workers
                ],
            },
        )

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_get("/status/config", config)
    app.router.add_get("/status/ready", ready)
    return app


def _unknown_plugins(sup: Supervisor, scan: UnknownPluginItems) -> dict[str, Any]:
    """Items naming plugins this gateway cannot run, and what is done with their requests."""
    items = scan(sup.store)
    return {
        "count": len(items),
        "action": sup.settings.conf.tollway.unknown_plugins,
        "items": [{"key": key, "plugins": names} for key, names in items[:UNKNOWN_LISTED]],
    }


async def start_status_server(sup: Supervisor) -> web.AppRunner | None:
    conf = sup.settings.conf.apisix.status
    if conf is None:
        return None
    runner = web.AppRunner(build_status_app(sup), access_log=None, logger=http_server_log())
    await runner.setup()
    site = web.TCPSite(runner, conf.ip, conf.port, reuse_address=True)
    await site.start()
    return runner
