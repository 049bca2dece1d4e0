"""A real gRPC server (grpcio's ``grpc.aio``, in a thread) for the gRPC proxying tests.

The ``Echo`` service (``grpc_echo/echo.proto``) has every call kind. What a call does is in its
message: ``text`` is echoed (prefixed with the server's name), ``count`` is how many messages a
server stream sends, ``delay_ms`` delays each answer. ``text == "fail"`` ends the call with
INVALID_ARGUMENT "bad input"; ``text == "hang"`` never answers. The request's ``x-echo``
metadata comes back as initial metadata (``x-echo``) and trailing metadata (``x-trailer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from tests.support.gateway import free_port
from tests.support.grpc_echo import echo_pb2, echo_pb2_grpc

Msg = echo_pb2.Msg


def frame(message: Any) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    data: bytes = message.SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


def unframe(data: bytes) -> list[Any]:
    """The messages in a run of gRPC length-prefixed messages."""
    out = []
    while data:
        n = int.from_bytes(data[1:5], "big")
        out.append(Msg.FromString(data[5 : 5 + n]))
        data = data[5 + n :]
    return out


class _Echo(echo_pb2_grpc.EchoServicer):  # type: ignore[misc]
    def __init__(self, server: GrpcServer) -> None:
        self.server = server

    async def _prelude(self, context: grpc.aio.ServicerContext) -> None:
        self.server.calls += 1
        md = dict(context.invocation_metadata() or ())
        self.server.metadata.append(md)
        if "x-echo" in md:
            await context.send_initial_metadata((("x-echo", md["x-echo"]),))
            context.set_trailing_metadata((("x-trailer", md["x-echo"]),))

    async def _answer(self, msg: Any, context: grpc.aio.ServicerContext) -> Any:
        if msg.delay_ms:
            await asyncio.sleep(msg.delay_ms / 1000)
        if msg.text == "fail":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad input")
        if msg.text == "hang":
            await asyncio.Event().wait()
        return Msg(text=f"{self.server.name}:{msg.text}", count=msg.count)

    async def Unary(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._prelude(context)
        return await self._answer(request, context)

    async def ServerStream(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        await self._prelude(context)
        for i in range(request.count):
            yield await self._answer(
                Msg(text=f"{request.text}{i}", delay_ms=request.delay_ms), context
            )

    async def ClientStream(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> Any:
        await self._prelude(context)
        texts = [m.text async for m in request_iterator]
        return Msg(text=f"{self.server.name}:{'+'.join(texts)}", count=len(texts))

    async def Bidi(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        await self._prelude(context)
        async for m in request_iterator:
            yield await self._answer(m, context)


class GrpcServer:
    """``GrpcServer(name).start()``: the Echo service on 127.0.0.1:``port`` (TLS with
    ``tls=(cert_pem, key_pem)``). ``calls`` counts calls, ``metadata`` lists what each got."""

    def __init__(
        self, name: str = "grpc", *, port: int = 0, tls: tuple[bytes, bytes] | None = None
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self.tls = tls
        self.calls = 0
        self.metadata: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._server: grpc.aio.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> GrpcServer:
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._serve())
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("gRPC server did not start")
        return self

    async def _serve(self) -> None:
        server = grpc.aio.server()
        echo_pb2_grpc.add_EchoServicer_to_server(_Echo(self), server)
        if self.tls is not None:
            creds = grpc.ssl_server_credentials([(self.tls[1], self.tls[0])])
            server.add_secure_port(self.addr, creds)
        else:
            server.add_insecure_port(self.addr)
        await server.start()
        self._server = server

    def stop(self, grace: float | None = None) -> None:
        """Stop: in-flight calls are cancelled (the connections reset) unless ``grace``."""
        server, self._server = self._server, None
        if server is None:
            return
        fut = asyncio.run_coroutine_threadsafe(server.stop(grace), self._loop)
        with contextlib.suppress(Exception):
            fut.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> GrpcServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def self_signed(directory: Path) -> tuple[bytes, bytes]:
    """A self-signed certificate for 127.0.0.1 / localhost (the openssl CLI): (cert, key) PEM."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", "key.pem", "-out", "cert.pem", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        cwd=directory, check=True, capture_output=True,
    )  # fmt: skip
    return (directory / "cert.pem").read_bytes(), (directory / "key.pem").read_bytes()


class GrpcServerProcess:
    """The Echo service in a process of its own, to be killed (SIGKILL) mid-call: no GOAWAY,
    no trailers, the connection just drops."""

    def __init__(self, name: str = "proc", port: int = 0) -> None:
        self.name = name
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GrpcServerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.grpc_server", self.name, str(self.port)],
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("gRPC server process did not start")
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


if __name__ == "__main__":
    _s = GrpcServer(sys.argv[1], port=int(sys.argv[2])).start()
    print("ready", flush=True)
    threading.Event().wait()
