"""The log entry every logger sends (APISIX ``utils/log-util.lua``), and their common plugin.

Entries have APISIX's full-log shape (request, response, server, upstream, route/service ids,
consumer, client_ip, start_time and latencies) or, with ``log_format`` (the conf's, else the one
in the plugin's metadata), one key per ``$var``. ``include_req_body``/``include_resp_body`` add
the bodies (up to ``max_req_body_bytes``/``max_resp_body_bytes``), only when their
``*_expr`` holds. A request body over the limit is left out rather than truncated.

:class:`LoggerPlugin` is what http-logger, tcp-logger, udp-logger, syslog, loki-logger,
elasticsearch-logger, clickhouse-logger, kafka-logger and file-logger share: bodies read only for
the confs that log them; the log phase queues the request's context (and the time) on the
plugin's :class:`~tollway.plugins.kit_batch.BatchManager`, and the entries are built from it in
the sending task, off the request path; each logger says only how a batch is sent.
"""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import ssl
import time
from collections.abc import Callable
from typing import Annotated, Any, ClassVar
from urllib.parse import unquote_plus

import msgspec
from msgspec import Meta

from tollway.plugins.kit import Exit, PerConf, Plugin, RequestContext
from tollway.plugins.kit_batch import (
    DEFAULT_MAX_PENDING_ENTRIES,
    BatchConf,
    BatchManager,
    BatchSettings,
    Preparer,
    Sender,
)
from tollway.plugins.kit_match import Expr, ExprError, compile_expr
from tollway.plugins.kit_outbound import GATEWAY_VERSION, Endpoint, OutboundClient, request_bytes

MAX_BODY_BYTES = 512 * 1024  # APISIX log-util MAX_REQ_BODY / MAX_RESP_BODY
_STATE = "log-bodies"

Rule = Annotated[list[Any], Meta(min_length=1)]


class LogConf(BatchConf, kw_only=True):
    """The fields every batched logger has (APISIX log-util + batch processor)."""

    log_format: dict[str, Any] | None = None
    include_req_body: bool = False
    include_req_body_expr: Rule | None = None
    include_resp_body: bool = False
    include_resp_body_expr: Rule | None = None
    max_req_body_bytes: Annotated[int, Meta(ge=1)] = MAX_BODY_BYTES
    max_resp_body_bytes: Annotated[int, Meta(ge=1)] = MAX_BODY_BYTES


class LogMetadata(msgspec.Struct, kw_only=True):
    """``plugin_metadata/<logger>``: the default ``log_format`` and the backlog limit."""

    log_format: dict[str, Any] | None = None
    max_pending_entries: Annotated[int, Meta(ge=1)] = DEFAULT_MAX_PENDING_ENTRIES


# -- the entry -------------------------------------------------------------------------------


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
    up = ctx.upstream_response_time
    if up is None:
        return latency, None, latency
    upstream = up * 1000
    return latency, upstream, max(latency - upstream, 0.0)


HOSTNAME = socket.gethostname()


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
            "size": ctx.request_length,
        },
        "response": {
            "status": ctx.resp_status,
            "headers": _multi((k.lower(), v) for k, v in ctx.resp_headers or ()),
            "size": ctx.bytes_sent,
        },
        "server": {"hostname": HOSTNAME, "version": GATEWAY_VERSION},
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


class _Bodies:
    """Per conf: the body conditions, compiled once."""

    __slots__ = ("req_expr", "resp_expr")

    def __init__(self, conf: Any) -> None:
        self.req_expr: Expr | None = (
            compile_expr(conf.include_req_body_expr) if conf.include_req_body_expr else None
        )
        self.resp_expr: Expr | None = (
            compile_expr(conf.include_resp_body_expr) if conf.include_resp_body_expr else None
        )


_bodies = PerConf(_Bodies)


def check_log_conf(conf: Any) -> None:
    """The ``*_expr`` rules compile (APISIX: "failed to validate the 'vars' expression")."""
    for rule in (conf.include_req_body_expr, conf.include_resp_body_expr):
        if rule:
            try:
                compile_expr(rule)
            except ExprError as e:
                raise ValueError(f"failed to validate the 'vars' expression: {e}") from None


def _state(ctx: RequestContext, plugin: str) -> dict[str, Any]:
    state = ctx.plugin_state
    if state is None:
        state = ctx.plugin_state = {}
    key = f"{_STATE}:{plugin}"
    mine: dict[str, Any] | None = state.get(key)
    if mine is None:
        mine = state[key] = {}
    return mine


def logged_request_body(ctx: RequestContext, plugin: str) -> str | None:
    """The request body ``plugin`` read for its entry (``include_req_body``), if it did."""
    state = ctx.plugin_state.get(f"{_STATE}:{plugin}") if ctx.plugin_state else None
    body: str | None = state.get("req_body") if state else None
    return body


class LoggerPlugin(Plugin):
    """A logger: subclasses set ``name``/``priority``/``schema`` and implement ``sender``
    (how one batch leaves), and may override ``item`` (what is queued for one entry)."""

    metadata_schema: ClassVar[type[msgspec.Struct] | None] = LogMetadata
    grace = 3.0  # seconds the sends get at a graceful stop

    def __init__(self) -> None:
        self.batches = BatchManager(self.name)

    def check(self, conf: Any) -> None:
        check_log_conf(conf)

    def set_metadata(self, metadata: Any) -> None:
        self.metadata = metadata
        self.batches.max_pending = (
            metadata.max_pending_entries
            if metadata is not None and hasattr(metadata, "max_pending_entries")
            else DEFAULT_MAX_PENDING_ENTRIES
        )

    # -- bodies: read only for the confs that log them --------------------------------------

    def phase_method(self, phase: str, conf: Any) -> Any:
        if phase == "rewrite":
            return self.rewrite if conf.include_req_body else None
        if phase == "body_filter":
            return self.body_filter if conf.include_resp_body else None
        if phase == "header_filter" and conf.log_format:
            # The conf's own log_format (it wins over the metadata's) logs no response headers:
            # without a header_filter the proxy passes the response head on untouched.
            return None
        return super().phase_method(phase, conf)

    async def rewrite(self, conf: Any, ctx: RequestContext) -> Exit:
        expr = _bodies(conf).req_expr
        if expr is not None and not expr.eval(ctx.var):
            return None
        body = await ctx.read_body(conf.max_req_body_bytes)
        if body is not None:
            _state(ctx, self.name)["req_body"] = body.decode("utf-8", "replace")
        return None

    def header_filter(self, conf: Any, ctx: RequestContext) -> None:
        # Present so that the response headers reach the log phase (ctx.resp_headers).
        return None

    def body_filter(self, conf: Any, ctx: RequestContext, chunk: bytes, eof: bool) -> bytes:
        state = _state(ctx, self.name)
        kept = state.get("resp_body")
        limit = conf.max_resp_body_bytes
        if kept is None:
            expr = _bodies(conf).resp_expr
            if expr is not None and not expr.eval(ctx.var):
                state["resp_body"] = False
                return chunk
            kept = state["resp_body"] = bytearray()
        if kept is not False and len(kept) < limit:
            kept += chunk[: limit - len(kept)]
        return chunk

    # -- the log phase ----------------------------------------------------------------------

    def log(self, conf: Any, ctx: RequestContext) -> None:
        batches = self.batches
        if batches.full():
            return
        # Only the context and the time are queued: the entry is built in the sending task.
        # The request is over: its body reader (and with it the connection) is not kept.
        ctx.body_reader = None
        batches.push(conf, (ctx, time.time()), self.start)

    def entry(self, conf: Any, ctx: RequestContext, now: float) -> dict[str, Any]:
        meta = self.metadata_for(ctx)
        log_format = conf.log_format or (meta.log_format if meta is not None else None)
        if log_format:  # the route's, else plugin_metadata's (APISIX log-util)
            entry = custom_log(log_format, ctx)
        else:
            entry = full_log(ctx, now)
            state = ctx.plugin_state.get(f"{_STATE}:{self.name}") if ctx.plugin_state else None
            if state:
                if "req_body" in state:
                    entry["request"]["body"] = state["req_body"]
                kept = state.get("resp_body")
                if kept:
                    entry["response"]["body"] = kept.decode("utf-8", "replace")
        if entry.get("route_id") is None:
            entry["route_id"] = "no-matched"
        return entry

    def item(self, conf: Any, ctx: RequestContext, entry: dict[str, Any]) -> Any:
        """What is queued for one entry (default: the entry itself)."""
        return entry

    def start(self, conf: Any) -> tuple[BatchSettings, Sender, Preparer]:
        def prepare(batch: list[tuple[RequestContext, float]]) -> list[Any]:
            return [self.item(conf, ctx, self.entry(conf, ctx, now)) for ctx, now in batch]

        return self.settings(conf), self.sender(conf), prepare

    def settings(self, conf: Any) -> BatchSettings:
        """The batch processor's settings for ``conf`` (default: its batch fields)."""
        return BatchSettings.of(conf)

    def sender(self, conf: Any) -> Sender:
        raise NotImplementedError

    async def aclose(self) -> None:
        await self.batches.aclose(self.grace)


def json_batch(entries: list[Any], batch_max_size: int) -> bytes:
    """APISIX's loggers: one JSON object when batches hold one entry, else a JSON array."""
    if batch_max_size == 1:
        return msgspec.json.encode(entries[0])
    return msgspec.json.encode(entries)


class HttpLoggerBase(LoggerPlugin):
    """A logger that POSTs each batch to one of its HTTP(S) endpoints (loki, elasticsearch,
    clickhouse): one outbound connection pool per plugin, closed at stop."""

    def __init__(self) -> None:
        super().__init__()
        self.client = OutboundClient(self.name)

    async def post(
        self,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        timeout: float,
        verify: bool,
    ) -> int:
        """POST ``body`` to ``url``; the status, or OSError when the receiver is unreachable."""
        endpoint, target = _parse_url(url)
        data = request_bytes("POST", target, [("Host", endpoint.host), *headers], body)
        return await self.client.send(
            endpoint, data, connect_timeout=timeout, timeout=timeout, verify=verify
        )

    async def aclose(self) -> None:
        await super().aclose()
        self.client.close()


_urls: dict[str, tuple[Endpoint, str]] = {}


def _parse_url(url: str) -> tuple[Endpoint, str]:
    hit = _urls.get(url)
    if hit is None:
        if len(_urls) > 1024:
            _urls.clear()
        hit = _urls[url] = Endpoint.parse(url)
    return hit


_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def resolve_vars(template: str, var: Callable[[str], Any]) -> str:
    """APISIX core.utils.resolve_var: ``$name`` and ``${name}`` replaced by the variable (an
    unknown one by "")."""
    if "$" not in template:
        return template

    def sub(m: re.Match[str]) -> str:
        got = var(m.group(1) or m.group(2))
        return "" if got is None else str(got)

    return _VAR.sub(sub, template)


# -- sockets (tcp-logger, udp-logger, syslog) ------------------------------------------------


@functools.cache
def _no_verify() -> ssl.SSLContext:
    """The loggers' TLS context (APISIX's loggers do not verify). Made on first use: making
    it loads the system's CA store (~80 ms), a cost at every process start otherwise."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def send_tcp(host: str, port: int, data: bytes, timeout: float, tls: bool) -> None:
    where = f"host[{host}] port[{port}]"
    async with asyncio.timeout(timeout):
        try:
            _, writer = await asyncio.open_connection(
                host, port, ssl=_no_verify() if tls else None, server_hostname=host if tls else None
            )
        except OSError as e:
            raise ConnectionError(f"failed to connect to TCP server: {where} err: {e}") from None
        try:
            writer.write(data)
            await writer.drain()
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.error: Exception | None = None

    def error_received(self, exc: Exception) -> None:
        self.error = exc


async def send_udp(host: str, port: int, datagrams: list[bytes], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    where = f"host[{host}] port[{port}]"
    async with asyncio.timeout(timeout):
        try:
            transport, proto = await loop.create_datagram_endpoint(
                _Datagram, remote_addr=(host, port)
            )
        except OSError as e:
            raise ConnectionError(f"failed to connect to UDP server: {where} err: {e}") from None
    try:
        for data in datagrams:
            transport.sendto(data)
        await asyncio.sleep(0)  # let an immediate ICMP error be reported
        if proto.error is not None:
            raise ConnectionError(f"failed to send data to UDP server: {where} {proto.error}")
    finally:
        transport.close()
