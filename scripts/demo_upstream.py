"""A small demo upstream for `make run`: answers with a JSON description of the request."""

from __future__ import annotations

import sys

from aiohttp import web


async def handle(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "upstream": "demo",
            "method": request.method,
            "path": request.path_qs,
            "headers": dict(request.headers),
            "body": body.decode("utf-8", "replace"),
        }
    )


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 1980
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
