"""http-logger (APISIX priority 410): log entries POSTed in batches to an HTTP(S) endpoint.

Entries have APISIX's ``log-util`` full-log shape (request, response, server, upstream,
route/service ids, consumer, client_ip, start_time and latencies) or, with ``log_format``, one
key per ``$var``. They are batched as APISIX's batch-processor does, per conf and per worker:

* with ``batch_max_size: 1`` every entry is sent at once, as a single JSON object;
* otherwise a batch leaves when ``batch_max_size`` entries are buffered, or at a check made every
  ``inactive_timeout`` seconds (from the first buffered entry) once no entry came for
  ``inactive_timeout`` seconds or the oldest is ``buffer_duration`` seconds old;
* a batch is a JSON array (``concat_method: json``) or one JSON object per line (``new_line``),
  POSTed with ``Content-Type`` application/json or text/plain and ``Authorization:
  <auth_header>``; a connection error or a status >= 400 is a failure, retried after
  ``retry_delay`` seconds up to ``max_retry_count`` times, then dropped.

Invariants: logging never blocks or fails a request; at most ``MAX_PENDING_ENTRIES`` entries per
worker wait (buffered or being sent), more are dropped and counted; every send is a tracked
task; at shutdown the buffers are flushed and the sends get ``conf.timeout`` to finish.

``log_format`` is the conf's, else the one in ``plugin_metadata/http-logger``. Deviations: request
and response bodies are logged up to 512 KiB (APISIX's default ``max_req_body_bytes`` /
``max_resp_body_bytes``), and a request body over that is left out rather than truncated.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal
from urllib.parse import unquote_plus

import msgspec
from msgspec import Meta

from tollway.plugins.kit import Exit, PerConf, Plugin, RequestContext
from tollway.plugins.kit_match import Expr, ExprError, compile_expr
from tollway.plugins.kit_outbound import (
    GATEWAY_VERSION,
    Endpoint,
    OutboundClient,
    RateLimitedLog,
    request_bytes,
)

log = logging.getLogger("tollway.plugins")

MAX_PENDING_ENTRIES = 100_000  # per worker, buffered or being sent
MAX_BODY_BYTES = 512 * 1024  # APISIX log-util MAX_REQ_BODY / MAX_RESP_BODY
STATE_KEY = "http-logger"
_URI = r"^[^\/]+:\/\/([\da-zA-Z.-]+|\[[\da-fA-F:]+\])(:\d+)?"  # APISIX core.schema.uri_def


class Conf(msgspec.Struct):
    uri: Annotated[str, Meta(pattern=_URI)]
    auth_header: str | None = None
    timeout: Annotated[int, Meta(ge=1)] = 3
    log_format: dict[str, Any] | None = None
    include_req_body: bool = False
    include_req_body_expr: Annotated[list[Any], Meta(min_length=1)] | None = None
    include_resp_body: bool = False
    include_resp_body_expr: Annotated[list[Any], Meta(min_length=1)] | None = None
    concat_method: Literal["json", "new_line"] = "json"
    ssl_verify: bool = False
    # batch processor
    name: str = "http logger"
    batch_max_size: Annotated[int, Meta(ge=1)] = 1000
    inactive_timeout: Annotated[int, Meta(ge=1)] = 5
    buffer_duration: Annotated[int, Meta(ge=1)] = 60
    max_retry_count: Annotated[int, Meta(ge=0)] = 0
    retry_delay: Annotated[int, Meta(ge=0)] = 1


class MetadataConf(msgspec.Struct):
    log_format: dict[str, Any] | None = None


# -- the pure core: entries -----------------------------------------------------------------


class Compiled:
    """Per conf: the body conditions and where batches go."""

    __slots__ = ("endpoint", "req_expr", "resp_expr", "target")

    def __init__(self, conf: Conf) -> None:
        self.req_expr: Expr | None = (
            compile_expr(conf.include_req_body_expr) if conf.include_req_body_expr else None
        )
        self.resp_expr: Expr | None = (
            compile_expr(conf.include_resp_body_expr) if conf.include_resp_body_expr else None
        )
        self.endpoint, self.target = Endpoint.parse(conf.uri)


_compiled = PerConf(Compiled)


def _request_uri(ctx: RequestContext) -> str:
    # APISIX resets $request_uri to the normalised $uri plus the arguments.
    return ctx.path + (f"?{ctx.query}" if ctx.query else "")


def _multi(pairs: Any) -> dict[str, Any]:
    """ngx.req.get_headers()/get_uri_args(): a repeated name gives a list of values."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            prev = out[k]
            if isinstance(prev, list):
                prev.append(v)
            else:
                out[k] = [prev, v]
        else:
            out[k] = v
    return out


def request_headers(ctx: RequestContext) -> dict[str, Any]:
    if ctx.up_header_ops is not None:
        return dict(ctx.headers)  # as plugins left them (repeated ones joined)
    return _multi((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in ctx.raw_headers)


def query_args(query: str) -> dict[str, Any]:
    """ngx.req.get_uri_args(): ``a`` alone is true, ``a=`` is "", values unescaped."""
    pairs: list[tuple[str, Any]] = []
    for part in query.split("&"):
        if not part:
            continue
        k, sep, v = part.partition("=")
        if not k:
            continue
        pairs.append((unquote_plus(k), unquote_plus(v) if sep else True))
    return _multi(pairs)


def latencies(ctx: RequestContext, now: float) -> tuple[float, float | None, float]:
    """APISIX ``latency_details_in_ms``: total, upstream (None without one) and APISIX's own."""
    latency = (now - ctx.start_time) * 1000
    up = getattr(ctx, "upstream_response_time", None)
    if up is None:
        return latency, None, latency
    upstream = up * 1000
    return latency, upstream, max(latency - upstream, 0.0)


_HOSTNAME = socket.gethostname()


def full_log(ctx: RequestContext, now: float) -> dict[str, Any]:
    """APISIX ``log_util.get_full_log``."""
    uri = _request_uri(ctx)
    latency, upstream_latency, apisix_latency = latencies(ctx, now)
    route = ctx.matched_route
    entry: dict[str, Any] = {
        "request": {
            "url": f"{ctx.scheme}://{ctx.host}:{ctx.server_port}{uri}",
            "uri": uri,
            "method": ctx.method,
            "headers": request_headers(ctx),
            "querystring": query_args(ctx.query),
            "size": getattr(ctx, "request_length", 0),
        },
        "response": {
            "status": ctx.resp_status,
            "headers": _multi((k.lower(), v) for k, v in ctx.resp_headers or ()),
            "size": getattr(ctx, "bytes_sent", 0),
        },
        "server": {"hostname": _HOSTNAME, "version": GATEWAY_VERSION},
        "upstream": ctx.upstream_addr,
        "service_id": (ctx.service_id or "") if route is not None else ctx.host,
        "route_id": ctx.route_id,
        "client_ip": ctx.remote_addr,
        "start_time": ctx.start_time * 1000,
        "latency": latency,
        "upstream_latency": upstream_latency,
        "apisix_latency": apisix_latency,
    }
    if ctx.consumer_name is not None:
        entry["consumer"] = {"username": ctx.consumer_name}
    return {k: v for k, v in entry.items() if v is not None}


def custom_log(log_format: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    """APISIX ``get_custom_format_log``: ``"$var"`` values are variables, others literals."""
    entry: dict[str, Any] = {}
    for key, value in log_format.items():
        if isinstance(value, str) and value.startswith("$"):
            got = ctx.var(value[1:])
            if got is not None:
                entry[key] = got
        else:
            entry[key] = value
    if ctx.matched_route is not None:
        if ctx.service_id is not None:
            entry["service_id"] = ctx.service_id
        entry["route_id"] = ctx.route_id
    return entry


def encode_batch(entries: list[dict[str, Any]], concat_method: str, batch_max_size: int) -> bytes:
    """APISIX http-logger: one object when batches hold one entry, else a JSON array or one
    object per line."""
    if batch_max_size == 1:
        return msgspec.json.encode(entries[0])
    if concat_method == "json":
        return msgspec.json.encode(entries)
    return b"\n".join(msgspec.json.encode(e) for e in entries)


# -- the pure core: batching ----------------------------------------------------------------


class BatchBuffer:
    """APISIX batch-processor's buffer and timer decisions; the clock is passed in."""

    __slots__ = ("batch_max_size", "buffer_duration", "entries", "first_t", "inactive", "last_t")

    def __init__(self, batch_max_size: int, inactive_timeout: float, buffer_duration: float):
        self.batch_max_size = batch_max_size
        self.inactive = inactive_timeout
        self.buffer_duration = buffer_duration
        self.entries: list[dict[str, Any]] = []
        self.first_t = 0.0
        self.last_t = 0.0

    def push(self, entry: dict[str, Any], now: float) -> list[dict[str, Any]] | None:
        """The batch to send now, if this entry completes one."""
        if self.batch_max_size == 1:
            return [entry]
        self.entries.append(entry)
        if len(self.entries) == 1:
            self.first_t = now
        self.last_t = now
        if len(self.entries) >= self.batch_max_size:
            return self.take()
        return None

    def due(self, now: float) -> bool:
        """At a timer check: flush now (and stop the timer) rather than check again later."""
        return now - self.last_t >= self.inactive or now - self.first_t >= self.buffer_duration

    def take(self) -> list[dict[str, Any]]:
        batch, self.entries = self.entries, []
        return batch


# -- the async shell ------------------------------------------------------------------------

Sender = Callable[[list[dict[str, Any]]], Awaitable[None]]


class BatchProcessor:
    """One conf's buffer in one worker: its timer and the tasks sending its batches."""

    def __init__(self, conf: Conf, send: Sender, owner: HttpLogger) -> None:
        self.conf = conf
        self.buffer = BatchBuffer(conf.batch_max_size, conf.inactive_timeout, conf.buffer_duration)
        self.send = send
        self.owner = owner
        self.timer: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def push(self, entry: dict[str, Any]) -> None:
        batch = self.buffer.push(entry, time.monotonic())
        if batch:
            self._dispatch(batch)
        if self.conf.batch_max_size > 1 and self.timer is None:
            self._arm()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.conf.inactive_timeout, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.buffer.due(time.monotonic()):
            self.flush()
            if not self.tasks:
                self.owner.forget(self)
            return
        self._arm()

    def flush(self) -> None:
        batch = self.buffer.take()
        if batch:
            self._dispatch(batch)

    def _dispatch(self, batch: list[dict[str, Any]]) -> None:
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not self.tasks and self.timer is None and not self.buffer.entries:
            self.owner.forget(self)

    async def _run(self, batch: list[dict[str, Any]]) -> None:
        conf = self.conf
        try:
            for attempt in range(conf.max_retry_count + 1):
                try:
                    await self.send(batch)
                    return
                except (OSError, ValueError) as e:
                    self.owner.warn(
                        logging.WARNING,
                        "Batch Processor[%s] failed to process entries: %s",
                        conf.name,
                        e or type(e).__name__,
                    )
                if attempt < conf.max_retry_count:
                    await asyncio.sleep(conf.retry_delay)
            self.owner.dropped += len(batch)
            self.owner.warn(
                logging.WARNING,
                "Batch Processor[%s] exceeded the max_retry_count[%d] dropping the entries",
                conf.name,
                conf.max_retry_count + 1,
            )
        finally:
            self.owner.pending -= len(batch)

    async def aclose(self, grace: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.flush()
        tasks = list(self.tasks)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)


class HttpLogger(Plugin):
    name = "http-logger"
    priority = 410
    schema = Conf
    metadata_schema = MetadataConf

    def __init__(self) -> None:
        self.processors: dict[int, BatchProcessor] = {}
        self.client = OutboundClient("http-logger")
        self.pending = 0
        self.dropped = 0
        self.warn = RateLimitedLog(log)

    def check(self, conf: Conf) -> None:
        for rule in (conf.include_req_body_expr, conf.include_resp_body_expr):
            if rule:
                try:
                    compile_expr(rule)
                except ExprError as e:
                    raise ValueError(f"failed to validate the 'vars' expression: {e}") from None

    # -- bodies: read only for the confs that log them --------------------------------------

    def phase_method(self, phase: str, conf: Any) -> Any:
        if phase == "rewrite":
            return self.rewrite if conf.include_req_body else None
        if phase == "body_filter":
            return self.body_filter if conf.include_resp_body else None
        return super().phase_method(phase, conf)

    async def rewrite(self, conf: Conf, ctx: RequestContext) -> Exit:
        comp = _compiled(conf)
        if comp.req_expr is not None and not comp.req_expr.eval(ctx.var):
            return None
        body = await ctx.read_body(MAX_BODY_BYTES)
        if body is not None:
            _state(ctx)["req_body"] = body.decode("utf-8", "replace")
        return None

    def header_filter(self, conf: Conf, ctx: RequestContext) -> None:
        # Present so that the response headers reach the log phase (ctx.resp_headers).
        return None

    def body_filter(self, conf: Conf, ctx: RequestContext, chunk: bytes, eof: bool) -> bytes:
        state = _state(ctx)
        kept = state.get("resp_body")
        if kept is None:
            comp = _compiled(conf)
            if comp.resp_expr is not None and not comp.resp_expr.eval(ctx.var):
                state["resp_body"] = False
                return chunk
            kept = state["resp_body"] = bytearray()
        if kept is not False and len(kept) < MAX_BODY_BYTES:
            kept += chunk[: MAX_BODY_BYTES - len(kept)]
        return chunk

    # -- the log phase ----------------------------------------------------------------------

    def log(self, conf: Conf, ctx: RequestContext) -> None:
        if self.pending >= MAX_PENDING_ENTRIES:
            self.dropped += 1
            self.warn(logging.WARNING, "http-logger: too many pending entries, dropping")
            return
        entry = self.entry(conf, ctx, time.time())
        proc = self.processors.get(id(conf))
        if proc is None or proc.conf is not conf:
            proc = self.processors[id(conf)] = BatchProcessor(conf, self._sender(conf), self)
        self.pending += 1
        proc.push(entry)

    def entry(self, conf: Conf, ctx: RequestContext, now: float) -> dict[str, Any]:
        meta = self.metadata
        log_format = conf.log_format or (meta.log_format if meta is not None else None)
        if log_format:  # the route's, else plugin_metadata's (APISIX log-util)
            entry = custom_log(log_format, ctx)
        else:
            entry = full_log(ctx, now)
            state = ctx.plugin_state.get(STATE_KEY) if ctx.plugin_state else None
            if state:
                if "req_body" in state:
                    entry["request"]["body"] = state["req_body"]
                kept = state.get("resp_body")
                if kept:
                    entry["response"]["body"] = kept.decode("utf-8", "replace")
        if entry.get("route_id") is None:
            entry["route_id"] = "no-matched"
        return entry

    def _sender(self, conf: Conf) -> Sender:
        comp = _compiled(conf)
        headers = [
            ("Host", comp.endpoint.host),
            ("Content-Type", "application/json" if conf.concat_method == "json" else "text/plain"),
        ]
        if conf.auth_header is not None:
            headers.append(("Authorization", conf.auth_header))

        async def send(batch: list[dict[str, Any]]) -> None:
            body = encode_batch(batch, conf.concat_method, conf.batch_max_size)
            status = await self.client.send(
                comp.endpoint,
                request_bytes("POST", comp.target, headers, body),
                connect_timeout=conf.timeout,
                timeout=conf.timeout * 2,
                verify=conf.ssl_verify,
            )
            if status >= 400:
                raise ConnectionError(
                    f"server returned status code[{status}] host[{comp.endpoint.host}] "
                    f"port[{comp.endpoint.port}]"
                )

        return send

    def forget(self, proc: BatchProcessor) -> None:
        if self.processors.get(id(proc.conf)) is proc:
            del self.processors[id(proc.conf)]

    async def aclose(self) -> None:
        procs = list(self.processors.values())
        self.processors.clear()
        for proc in procs:
            await proc.aclose(proc.conf.timeout)
        self.client.close()


def _state(ctx: RequestContext) -> dict[str, Any]:
    state = ctx.plugin_state
    if state is None:
        state = ctx.plugin_state = {}
    mine: dict[str, Any] | None = state.get(STATE_KEY)
    if mine is None:
        mine = state[STATE_KEY] = {}
    return mine


PLUGINS = [HttpLogger]
