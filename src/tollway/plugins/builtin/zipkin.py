"""zipkin (APISIX priority 12011): B3 propagation and spans reported as Zipkin v2 JSON.

As APISIX's zipkin plugin (``zipkin.lua``, ``zipkin/codec.lua``, ``zipkin/reporter.lua``):

* the client's B3 context is read from the single ``b3`` header (``{trace}-{span}[-{sampled}
  [-{parent}]]`` or ``0``; removed before the upstream; one without a span id is a 400; ``d``
  means debug: sampled, and ``X-B3-Flags: 1`` goes upstream) or else from ``X-B3-TraceId``,
  ``X-B3-SpanId``, ``X-B3-ParentSpanId``, ``X-B3-Sampled``; an id of the wrong length or not hex
  is ignored (a new trace starts);
* the decision: ``X-B3-Flags: 1`` or sampled ``1``/``true`` samples, ``0``/``false`` does not,
  otherwise ``sample_ratio``;
* the request span ``apisix.request`` (kind SERVER, the client's span as parent) has children:
  with ``span_version: 2`` ``apisix.proxy`` (until the response head) and
  ``apisix.response_span`` (until the log phase); with ``span_version: 1`` ``apisix.rewrite``,
  ``apisix.access`` and ``apisix.proxy`` with its child ``apisix.body_filter``;
* the upstream gets ``X-B3-TraceId``, ``X-B3-SpanId`` (the proxy span's when sampled, else the
  request span's), ``X-B3-ParentSpanId`` and ``X-B3-Sampled`` (``1``/``0``);
* sampled spans are POSTed to ``endpoint`` as a Zipkin v2 JSON array with ``localEndpoint``
  ``{serviceName: service_name, ipv4: server_addr (default: the address the request came to),
  port}``, the request span's tags ``component``, ``http.method``, ``http.url``,
  ``http.status_code``, ``apisix.response_source`` and its ``remoteEndpoint`` (the client), in
  batches (APISIX's reporter: 1000, 5 s inactive, 60 s at most, no retry) built off the request
  path by the shared batch processor;
* with ``plugin_attr.zipkin.set_ngx_var``, the variables ``zipkin_context_traceparent``,
  ``zipkin_trace_id`` and ``zipkin_span_id`` (for the access log).
"""

from __future__ import annotations

import random
import re
import time
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tollway.plugins.kit import Exit, PerConf, Plugin, RequestContext
from tollway.plugins.kit_batch import BatchManager, BatchSettings, Preparer, Sender
from tollway.plugins.kit_outbound import Endpoint, OutboundClient, request_bytes

_URI = r"^[^\/]+:\/\/([\da-zA-Z.-]+|\[[\da-fA-F:]+\])(:\d+)?"  # APISIX core.schema.uri_def
_IPV4 = r"^[0-9]{1,3}.[0-9]{1,3}.[0-9]{1,3}.[0-9]{1,3}$"  # APISIX's pattern, as written


class Conf(msgspec.Struct):
    endpoint: Annotated[str, Meta(pattern=_URI)]
    sample_ratio: Annotated[float, Meta(ge=0.00001, le=1)]
    service_name: str = "APISIX"
    server_addr: Annotated[str, Meta(pattern=_IPV4)] | None = None
    span_version: Literal[1, 2] = 2


STATE_KEY = "zipkin"
_HEX = re.compile(r"^[0-9a-fA-F]+$")


class B3Error(ValueError):
    pass


def parse_b3(value: str) -> tuple[str | None, str | None, str | None, str | None]:
    """The single ``b3`` header: (trace id, span id, sampled, parent span id)."""
    if value == "0":
        return None, None, "0", None
    pieces = value.split("-", 3)
    if not pieces[0]:
        raise B3Error("missing trace_id")
    if len(pieces) < 2 or not pieces[1]:
        raise B3Error("missing span_id")
    sampled = pieces[2] if len(pieces) > 2 else None
    parent = pieces[3] if len(pieces) > 3 else None
    return pieces[0], pieces[1], sampled, parent


def valid_context(trace_id: str | None, span_id: str | None, parent_id: str | None) -> bool:
    """zipkin/codec.lua: a trace id of 16 or 32 hex digits, span ids of 16; otherwise the
    context is ignored and a new trace starts."""
    if trace_id is None:
        return False
    if len(trace_id) not in (16, 32) or not _HEX.match(trace_id):
        return False
    for sid in (span_id, parent_id):
        if sid is not None and (len(sid) != 16 or not _HEX.match(sid)):
            return False
    return True


def _span_id() -> str:
    return "%016x" % (_bits(64) or 1)


def _trace_id() -> str:
    return "%032x" % (_bits(128) or 1)


_bits = random.getrandbits


class Trace:
    """One request's ids and phase times (seconds), kept on the request."""

    __slots__ = (
        "access_end",
        "client_span",
        "headers_at",
        "proxy_id",
        "request_id",
        "rewrite_end",
        "sampled",
        "spans_v1",
        "trace_id",
    )

    def __init__(self, trace_id: str, client_span: str | None, sampled: bool) -> None:
        self.trace_id = trace_id
        self.client_span = client_span  # the request span's parent
        self.request_id = _span_id()
        self.proxy_id = _span_id()
        self.sampled = sampled
        self.rewrite_end = 0.0
        self.access_end = 0.0
        self.headers_at = 0.0
        self.spans_v1: tuple[str, str, str] | None = None  # rewrite, access, body_filter ids


def _us(t: float) -> int:
    return int(t * 1_000_000)


class _Span:
    """Builds Zipkin v2 span objects for one request and conf."""

    __slots__ = ("local", "out", "trace_id")

    def __init__(self, trace_id: str, local: dict[str, Any]) -> None:
        self.trace_id = trace_id
        self.local = local
        self.out: list[dict[str, Any]] = []

    def add(self, name: str, span_id: str, parent: str | None, start: float, end: float) -> None:
        span: dict[str, Any] = {
            "traceId": self.trace_id,
            "name": name,
            "id": span_id,
            "timestamp": _us(start),
            "duration": max(int((end - start) * 1_000_000), 0),
            "localEndpoint": self.local,
            "remoteEndpoint": None,
            "tags": {},
        }
        if parent is not None:
            span["parentId"] = parent
        self.out.append(span)


def build_spans(conf: Conf, ctx: RequestContext, tr: Trace, end: float) -> list[dict[str, Any]]:
    local = {
        "serviceName": conf.service_name,
        "ipv4": conf.server_addr or ctx.server_addr,
        "port": ctx.server_port,
    }
    b = _Span(tr.trace_id, local)
    start = ctx.start_time
    b.add("apisix.request", tr.request_id, tr.client_span, start, end)
    request = b.out[0]
    request["kind"] = "SERVER"
    request["remoteEndpoint"] = {"ipv4": ctx.remote_addr, "port": ctx.remote_port}
    request["tags"] = {
        "component": "apisix",
        "http.method": ctx.method,
        "http.url": ctx.request_uri,
        "http.status_code": str(ctx.resp_status),
        "apisix.response_source": "upstream" if ctx.upstream_status is not None else "apisix",
    }
    headers_at = tr.headers_at or end
    if conf.span_version == 2:
        b.add("apisix.proxy", tr.proxy_id, tr.request_id, start, headers_at)
        b.add("apisix.response_span", _span_id(), tr.request_id, headers_at, end)
    else:
        rewrite_id, access_id, body_id = tr.spans_v1 or (_span_id(), _span_id(), _span_id())
        b.add("apisix.rewrite", rewrite_id, tr.request_id, start, tr.rewrite_end or start)
        b.add("apisix.access", access_id, tr.request_id, tr.rewrite_end, tr.access_end)
        b.add("apisix.proxy", tr.proxy_id, tr.request_id, tr.access_end, end)
        b.add("apisix.body_filter", body_id, tr.proxy_id, headers_at, end)
    return b.out


def _endpoint(conf: Conf) -> tuple[Endpoint, str]:
    return Endpoint.parse(conf.endpoint)


_endpoints = PerConf(_endpoint)

# APISIX zipkin/reporter.lua's processor.
SETTINGS = BatchSettings(
    "zipkin_report", batch_max_size=1000, inactive_timeout=5, buffer_duration=60
)


class Zipkin(Plugin):
    name = "zipkin"
    priority = 12011
    schema = Conf

    def __init__(self) -> None:
        self.spans = BatchManager(self.name)
        self.client = OutboundClient("zipkin")
        self.set_ngx_var = False

    def init(self, attr: dict[str, Any]) -> None:
        # plugin_attr.zipkin.set_ngx_var: the ids as variables (for the access log).
        self.set_ngx_var = bool(attr.get("set_ngx_var"))

    # -- rewrite: the B3 context ------------------------------------------------------------

    def rewrite(self, conf: Conf, ctx: RequestContext) -> Exit:
        headers = ctx.headers
        force: float | None = 1.0 if headers.get("x-b3-flags") == "1" else None
        b3 = headers.get("b3")
        if b3 is not None:
            ctx.set_request_header("b3", None)
            try:
                trace_id, span_id, sampled, parent_id = parse_b3(b3)
            except B3Error:
                return 400, None
            if sampled == "d":
                ctx.set_request_header("x-b3-flags", "1")
                sampled = "1"
        else:
            sampled = headers.get("x-b3-sampled")
            trace_id = headers.get("x-b3-traceid")
            parent_id = headers.get("x-b3-parentspanid")
            span_id = headers.get("x-b3-spanid")
        if sampled in ("1", "true"):
            force = 1.0
        elif sampled in ("0", "false"):
            force = 0.0
        ratio = conf.sample_ratio if force is None else force
        sample = random.random() < ratio
        if valid_context(trace_id, span_id, parent_id):
            tr = Trace((trace_id or "").lower(), span_id.lower() if span_id else None, sample)
        else:
            tr = Trace(_trace_id(), None, sample)
        state = ctx.plugin_state
        if state is None:
            state = ctx.plugin_state = {}
        state[STATE_KEY] = tr
        if self.set_ngx_var:
            flag = "01" if sample else "00"
            ctx.set_var("zipkin_context_traceparent", f"00-{tr.trace_id}-{tr.request_id}-{flag}")
            ctx.set_var("zipkin_trace_id", tr.trace_id)
            ctx.set_var("zipkin_span_id", tr.request_id)
        if sample and conf.span_version == 1:
            tr.rewrite_end = time.time()
            tr.spans_v1 = (_span_id(), _span_id(), _span_id())
        return None

    def access(self, conf: Conf, ctx: RequestContext) -> Exit:
        tr = _trace(ctx)
        if tr is None:
            return None
        if tr.sampled and conf.span_version == 1:
            tr.access_end = time.time()
        # The upstream learns of the proxy span when sampled, else of the request span.
        parent: str | None
        if tr.sampled:
            span_id, parent = tr.proxy_id, tr.request_id
        else:
            span_id, parent = tr.request_id, tr.client_span
        ctx.set_request_header("x-b3-traceid", tr.trace_id)
        ctx.set_request_header("x-b3-parentspanid", parent)
        ctx.set_request_header("x-b3-spanid", span_id)
        ctx.set_request_header("x-b3-sampled", "1" if tr.sampled else "0")
        return None

    def header_filter(self, conf: Conf, ctx: RequestContext) -> None:
        tr = _trace(ctx)
        if tr is not None and tr.sampled:
            tr.headers_at = time.time()

    def log(self, conf: Conf, ctx: RequestContext) -> None:
        tr = _trace(ctx)
        if tr is None or not tr.sampled:
            return
        spans = self.spans
        if spans.full():
            return
        ctx.body_reader = None  # the request is over: the queue keeps no connection alive
        spans.push(conf, (conf, ctx, tr, time.time()), self._start)

    def _start(self, conf: Conf) -> tuple[BatchSettings, Sender, Preparer]:
        def prepare(batch: list[tuple[Conf, RequestContext, Trace, float]]) -> list[Any]:
            return [span for item in batch for span in build_spans(*item)]

        return SETTINGS, self._sender(conf), prepare

    def _sender(self, conf: Conf) -> Sender:
        endpoint, target = _endpoints(conf)
        headers = [("Host", endpoint.host), ("Content-Type", "application/json")]

        async def send(spans: list[dict[str, Any]]) -> None:
            body = msgspec.json.encode(spans)
            status = await self.client.send(
                endpoint,
                request_bytes("POST", target, headers, body),
                connect_timeout=3,
                timeout=5,
            )
            if not 200 <= status < 300:
                raise ConnectionError(f"failed: {conf.endpoint} {status}")

        return send

    async def aclose(self) -> None:
        await self.spans.aclose(3.0)
        self.client.close()


def _trace(ctx: RequestContext) -> Trace | None:
    state = ctx.plugin_state
    tr: Trace | None = state.get(STATE_KEY) if state else None
    return tr


PLUGINS = [Zipkin]
