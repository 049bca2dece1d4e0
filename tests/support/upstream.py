"""Real upstream HTTP servers on loopback for end-to-end tests (aiohttp in a thread)."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from aiohttp import web

from tests.support.gateway import free_port


class Upstream:
    """Answers every request with JSON describing it, unless told otherwise by the path:

    - ``/status/<code>``: that status;
    - ``/with-headers?Name=value...``: those response headers;
    - ``/hang``: never answers (until the server stops);
    - ``/chunked``: a chunked body in 3 parts;
    - ``/big/<n>``: n bytes;
    - ``/slow/<ms>``: answers after a delay.
    ``name`` is echoed so tests can tell nodes apart; ``hits`` counts requests.
    """

    def __init__(self, name: str = "up") -> None:
        self.name = name
        self.port = free_port()
        self.hits = 0
        self.requests: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Upstream:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("upstream did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._started.set()
        self._loop.run_forever()

    async def _serve(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:[\\s\\S]*}", self._handle)  # any path, newlines too
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=0.2, handler_cancellation=True
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        body = await request.read()
        info = {
            "name": self.name,
            "method": request.method,
            "path": request.path_qs,
            "raw_path": request.raw_path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body.decode("latin-1"),
        }
        self.requests.append(info)
        parts = request.path.strip("/").split("/")
        if parts[0] == "ws":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                await ws.send_str("echo:" + msg.data)
            return ws
        if parts[0] == "status" and len(parts) > 1:
            return web.json_response(info, status=int(parts[1]))
        if parts[0] == "with-headers":  # each query parameter a response header
            return web.json_response(info, headers=dict(request.query))
        if parts[0] == "hang":
            await asyncio.sleep(3600)
        if parts[0] == "slow" and len(parts) > 1:
            await asyncio.sleep(int(parts[1]) / 1000)
        if parts[0] == "big" and len(parts) > 1:
            return web.Response(body=b"x" * int(parts[1]))
        if parts[0] == "chunked":
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(3):
                await resp.write(f"part{i};".encode())
            await resp.write_eof()
            return resp
        return web.Response(
            body=json.dumps(info).encode(),
            content_type="application/json",
            headers={"X-Upstream": self.name},
        )

    def stop(self) -> None:
        async def _stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
