"""The state of one exchange (one request and its response on a client connection).

``ExchangeBase`` declares every attribute once (with its slot); the parts of an exchange are
one chain of classes over it, each in its own module: ``phases.Phases`` (match, plugins, pick),
``response.Responding`` (the upstream's answer streamed to the client) and ``pipeline.Exchange``
(the client body, answering locally, the log phase). A chain, not mixins: mypyc compiles these
modules (``tollway.native``) and a compiled class has one base. The methods one part calls on a
later one are declared here, raising NotImplementedError until the part that defines them
overrides them (not under ``if TYPE_CHECKING:``, which mypyc does not allow in a class body).
An upstream attempt is not a part: it is an object the exchange holds (``held``:
``attempt.Http1Attempt``, ``grpc_attempt.GrpcAttempt``), run by ``driver``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

from tollway.plugins.kit import RequestContext
from tollway.plugins.registry import Chain
from tollway.proxy.contracts import ClientConnection
from tollway.runtime.compiled import CompiledRoute, CompiledUpstream
from tollway.upstream.pool import ResponseHead

_NO_TOKENS: frozenset[bytes] = frozenset()


class HeldAttempt(Protocol):
    """The upstream attempt the exchange holds (``ExchangeBase.held``: an object with its own
    state), told about the end of the answer, read timeouts and the client."""

    def upstream_done(self) -> None:
        """The response side finished the answer (``on_upstream_complete``)."""
        ...

    def upstream_failed(self, exc: BaseException | None) -> None:
        """The upstream connection failed (``on_upstream_error``)."""
        ...

    def on_read_timeout(self) -> None: ...
    def client_gone(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...


class ExchangeBase:
    __slots__ = (
        "_body_waiter",
        "_finished",
        "_out",
        "body",
        "body_bytes",
        "body_chunked",
        "body_complete",
        "body_wait_since",
        "buffered_resp",
        "chain",
        "client_addr",
        "client_closed",
        "connection_tokens",
        "content_length",
        "ctx",
        "expect_continue",
        "has_body",
        "held",
        "host_raw",
        "http_version",
        "keep_alive",
        "last_activity",
        "method",
        "proto",
        "raw_headers",
        "read_timeout",
        "reading",
        "reject_status",
        "replay",
        "resp_bytes",
        "resp_chunked",
        "resp_fields",
        "resp_no_body",
        "resp_trailers",
        "response_started",
        "sent_continue",
        "status",
        "target",
        "task",
        "upgrade",
        "upstream",
        "upstream_statuses",
        "url",
        "websocket",
    )

    def __init__(
        self,
        proto: ClientConnection,
        method: str,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        http_version: str,
        keep_alive: bool,
        host: bytes,
    ) -> None:
        self.proto = proto
        self.method = method
        self.url = url
        self.client_addr: str | None = None  # named by a trusted peer (realip)
        self.connection_tokens: frozenset[bytes] = _NO_TOKENS  # named by the client's Connection
        self.target = url  # what goes upstream when no plugin rewrites it (absolute-form fixed)
        self.raw_headers = headers
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.host_raw = host
        self.has_body = False
        self.body_chunked = False
        self.content_length = 0
        self.body: deque[bytes] | None = None  # created by the first body bytes
        self.body_bytes = 0
        self.body_complete = False
        self._body_waiter: asyncio.Future[None] | None = None
        self.body_wait_since = 0.0  # waiting for body bytes since (client_body_timeout)
        self.expect_continue = False
        self.sent_continue = False
        self.upgrade = b""
        self.websocket = False
        self.reject_status = 0
        self.replay: list[bytes] | None = None
        self.ctx: RequestContext | None = None
        self.chain: Chain | None = None
        self.status = 0
        self.response_started = False
        self.resp_chunked = False
        self.resp_no_body = False
        self.resp_bytes = 0
        self.buffered_resp: list[bytes] | None = None
        # HTTP/2: (status, fields) of a response head held until a buffered body is known.
        self.resp_fields: tuple[int, list[tuple[bytes, bytes]]] | None = None
        # The upstream's trailers (lowercase names), set before on_upstream_complete().
        self.resp_trailers: list[tuple[bytes, bytes]] | None = None
        self._out: list[bytes] = []
        self._finished = False
        self.upstream: CompiledUpstream | None = None
        self.reading = False  # waiting on the upstream: the sweep enforces read_timeout
        self.last_activity = 0.0
        self.read_timeout = 60.0
        self.client_closed = False
        self.upstream_statuses: list[str] | None = None
        self.task: asyncio.Task[None] | None = None
        self.held: HeldAttempt | None = None  # the upstream attempt under way

    # -- defined by the later parts (see the module docstring) -------------------------

    @property
    def route(self) -> CompiledRoute | None:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def respond(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    def respond_error(self, status: int) -> None:
        raise NotImplementedError

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    async def read_body(self, limit: int) -> bytes | None:
        raise NotImplementedError

    async def next_body_chunk(self) -> bytes | None:
        raise NotImplementedError

    async def _plugin_body(self, limit: int) -> bytes | None:
        raise NotImplementedError

    def _header_filter(self, chain: Chain, ctx: RequestContext) -> None:
        raise NotImplementedError

    def _body_filter(self, chain: Chain, ctx: RequestContext, data: bytes, eof: bool) -> bytes:
        raise NotImplementedError

    # the upstream connection's ResponseSink (response.Responding)
    def on_upstream_headers(self, status: int, conn: ResponseHead) -> None:
        raise NotImplementedError

    def on_upstream_body(self, data: bytes) -> None:
        raise NotImplementedError

    def on_upstream_complete(self) -> None:
        raise NotImplementedError

    def on_upstream_error(self, exc: BaseException | None) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError
