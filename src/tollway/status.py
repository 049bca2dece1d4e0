"""The status API (APISIX 3.13+): ``/status`` and ``/status/ready`` on ``apisix.status``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tollway.checks import UnknownPluginItems
from tollway.logs import http_server_log

if TYPE_CHECKING:
    from tollway.instance import InstanceView


def _json(status: int, body: dict[str, Any]) -> web.Response:
    text = json.dumps(body, separators=(",", ":"))  # APISIX's cjson: {"status":"ok"}
    return web.json_response(text=text, status=status, headers={"Server": _server()})


def _server() -> str:
    from tollway import __version__

    return f"Tollway/{__version__}"


UNKNOWN_LISTED = 100  # items listed in /status/config's unknown_plugins (all are counted)


def build_status_app(instance: InstanceView) -> web.Application:
    unknown = UnknownPluginItems(instance.registry)

    async def status(_: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def ready(_: web.Request) -> web.Response:
        if instance.all_ready():
            return _json(200, {"status": "ok"})
        current = [w for w in instance.worker_status() if w.current]
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
        st = instance.source_status()
        return _json(
            200,
            {
                "revision": st.revision,
                "etcd_revision": st.etcd_revision,
                "lag": st.lag,
                "from_snapshot": st.from_snapshot,
                "rejected": st.rejected,
                "unknown_plugins": _unknown_plugins(instance, unknown),
                "source_connected": st.connected,
                "workers": [
                    {"pid": w.pid, "ready": w.ready, "revision": w.revision}
                    for w in instance.worker_status()
                ],
            },
        )

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_get("/status/config", config)
    app.router.add_get("/status/ready", ready)
    return app


def _unknown_plugins(instance: InstanceView, scan: UnknownPluginItems) -> dict[str, Any]:
    """Items naming plugins this gateway cannot run, and what is done with their requests."""
    items = scan(instance.store)
    return {
        "count": len(items),
        "action": instance.settings.conf.tollway.unknown_plugins,
        "items": [{"key": key, "plugins": names} for key, names in items[:UNKNOWN_LISTED]],
    }


async def start_status_server(instance: InstanceView) -> web.AppRunner | None:
    conf = instance.settings.conf.apisix.status
    if conf is None:
        return None
    runner = web.AppRunner(build_status_app(instance), access_log=None, logger=http_server_log())
    await runner.setup()
    site = web.TCPSite(runner, conf.ip, conf.port, reuse_address=True)
    await site.start()
    return runner
