"""The floor of a Python proxy on this machine (a baseline for bench/proxy.py, not a product).

uvloop + httptools on raw protocols at both ends, one process, no routing, no plugins, no
timeouts, no streaming: each request is read whole, sent on a pooled keep-alive upstream
connection, and the answer is read whole and written back. It forwards the method, the target
and the end-to-end header fields, drops the hop-by-hop ones (RFC 9110 7.6.1) and re-frames
bodies with Content-Length. This is the design of `shared/reference/proxy-calibration.md`'s
"minproxy", which measured 0.62-0.66x nginx per proxy CPU-second there: whatever Tollway does
beyond it (a router, plugins, limits, timeouts, HTTP/2, logs) is what a gateway adds.

    python bench/minproxy.py --port 8080 --upstream 127.0.0.1:8081
"""

from __future__ import annotations

import argparse
import asyncio
import gc
from collections import deque

import httptools
import uvloop

HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)


class Upstream(asyncio.Protocol):
    """One kept-alive connection to the upstream; answers go to ``client``."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None
        self.head: list[bytes] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, client: Client, data: bytes) -> None:
        self.client = client
        self.head = []
        self.body = []
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.failed()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in HOP:
            self.head.append(name + b": " + value + b"\r\n")

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        status = self.parser.get_status_code()
        keep = self.parser.should_keep_alive()
        if keep:
            self.pool.idle.append(self)
        elif self.transport is not None:
            self.transport.close()
        if client is not None:
            client.answer(status, self.head, b"".join(self.body))

    def failed(self) -> None:
        client, self.client = self.client, None
        if self.transport is not None:
            self.transport.close()
        if client is not None:
            client.answer(502, [], b"")

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool.idle:
            self.pool.idle.remove(self)
        self.failed()


class Pool:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[Upstream] = []
        self.connecting: set[asyncio.Task[None]] = set()  # (a task needs a reference)

    async def send(self, client: Client, data: bytes) -> None:
        if self.idle:
            self.idle.pop().send(client, data)
            return
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: Upstream(self), self.host, self.port)
        except OSError:
            client.answer(502, [], b"")
            return
        conn.send(client, data)


class Client(asyncio.Protocol):
    """One client connection: requests answered in order, one at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.head: list[bytes] = []
        self.body: list[bytes] = []
        self.waiting: deque[bytes] = deque()
        self.busy = False
        self.keep = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.answer(400, [], b"")
            self.keep = False

    def on_message_begin(self) -> None:
        self.url, self.head, self.body = b"", [], []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in HOP:
            self.head.append(name + b": " + value + b"\r\n")

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        body = b"".join(self.body)
        method = self.parser.get_method()
        length = b"Content-Length: %d\r\n" % len(body) if body else b""
        data = b"".join(
            [method, b" ", self.url, b" HTTP/1.1\r\n", *self.head, length, b"\r\n", body]
        )
        self.keep = self.parser.should_keep_alive()
        if self.busy:
            self.waiting.append(data)
        else:
            self.forward(data)

    def forward(self, data: bytes) -> None:
        self.busy = True
        if self.pool.idle:  # the common case: no task
            self.pool.idle.pop().send(self, data)
        else:
            task = asyncio.ensure_future(self.pool.send(self, data))
            self.pool.connecting.add(task)
            task.add_done_callback(self.pool.connecting.discard)

    def answer(self, status: int, head: list[bytes], body: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        line = b"HTTP/1.1 %d \r\n" % status
        length = b"Content-Length: %d\r\n" % len(body)
        close = b"" if self.keep else b"Connection: close\r\n"
        self.transport.write(b"".join([line, *head, length, close, b"\r\n", body]))
        self.busy = False
        if not self.keep:
            self.transport.close()
        elif self.waiting:
            self.forward(self.waiting.popleft())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int, upstream: str) -> None:
    host, _, uport = upstream.rpartition(":")
    pool = Pool(host, int(uport))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(pool), "127.0.0.1", port, backlog=1024)
    gc.freeze()
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="host:port")
    args = ap.parse_args()
    uvloop.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
