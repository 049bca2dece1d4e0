"""opentelemetry (APISIX priority 12009): one server span per request, exported as OTLP/HTTP.

Per request (rewrite): the W3C ``traceparent``/``tracestate`` the client sent are read (an
invalid one is ignored, as a missing one); the sampler decides; the request gets a new span id
(and, without a parent, a new trace id: random, or the client's ``X-Request-Id`` when
``trace_id_source: x-request-id`` and it is 32 hex digits); the upstream gets ``traceparent``
``00-<trace>-<span>-<01|00>`` and the client's ``tracestate`` as it was. In the log phase a
sampled span is queued with what the request already has; its attributes and the protobuf are
built in the exporting task, off the request path.

The span is APISIX's: named ``<METHOD>`` or ``<METHOD> <route uri>``, kind SERVER, started at
the request's start, with ``net.host.name``, ``http.method``, ``http.scheme``, ``http.target``,
``http.user_agent``, ``http.request.method``, ``url.scheme``, ``url.path``,
``user_agent.original``, ``apisix.route_id``/``apisix.route_name``/``http.route`` (matched
routes), ``apisix.service_id``, ``apisix.response_source``, ``http.status_code`` and
``http.response.status_code``, status ERROR ("<source> error: <status>") from 500 on, then the
``additional_attributes`` (variables) and ``additional_header_prefix_attributes`` (headers,
``prefix*`` for all with the prefix). Tollway adds ``apisix.consumer_name`` when a consumer was
identified.

The instance settings (``trace_id_source``, ``resource``, ``collector``, ``batch_span_processor``,
``set_ngx_var``) come from ``plugin_metadata/opentelemetry`` (APISIX 3.x, changeable at run
time), else from ``plugin_attr.opentelemetry`` in config.yaml (APISIX 2.13+; its defaults are
APISIX's config-default). Spans are batched by the shared batch processor: a batch leaves at
``max_export_batch_size`` spans, ``inactive_timeout`` seconds after the last or ``batch_timeout``
after the first; at most ``max_queue_size`` spans wait or are in flight, more are dropped and
counted (whatever ``drop_on_queue_full`` says: memory stays bounded). A batch is POSTed to
``http://<collector.address>/v1/traces`` as ``application/x-protobuf``
(``ExportTraceServiceRequest``), retried twice a second apart.
"""

from __future__ import annotations

import logging
import random
import re
import time
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from tollway.plugins.kit import Plugin, RequestContext
from tollway.plugins.kit_batch import BatchManager, BatchSettings, Preparer, Sender
from tollway.plugins.kit_log import HOSTNAME
from tollway.plugins.kit_outbound import Endpoint, OutboundClient, request_bytes

log = logging.getLogger("tollway.plugins")

Fraction = Annotated[float, Meta(ge=0, le=1)]
Scalar = bool | int | float | str


class RatioOptions(msgspec.Struct):
    fraction: Fraction = 0


class RootSampler(msgspec.Struct):
    name: Literal["always_on", "always_off", "trace_id_ratio"] = "always_off"
    options: RatioOptions = msgspec.field(default_factory=RatioOptions)


class SamplerOptions(msgspec.Struct):
    fraction: Fraction = 0
    root: RootSampler | None = None


class Sampler(msgspec.Struct):
    name: Literal["always_on", "always_off", "trace_id_ratio", "parent_base"] = "always_off"
    options: SamplerOptions = msgspec.field(default_factory=SamplerOptions)


class Conf(msgspec.Struct):
    sampler: Sampler = msgspec.field(default_factory=Sampler)
    additional_attributes: list[Annotated[str, Meta(min_length=1)]] | None = None
    additional_header_prefix_attributes: list[Annotated[str, Meta(min_length=1)]] | None = None


class Collector(msgspec.Struct):
    address: Annotated[str, Meta(min_length=1)] = "127.0.0.1:4318"
    request_timeout: Annotated[int, Meta(ge=1)] = 3
    request_headers: dict[str, Scalar] | None = None


class SpanBatching(msgspec.Struct):
    drop_on_queue_full: bool = False
    max_queue_size: Annotated[int, Meta(ge=1)] = 1024
    batch_timeout: Annotated[float, Meta(gt=0)] = 2
    inactive_timeout: Annotated[float, Meta(gt=0)] = 1
    max_export_batch_size: Annotated[int, Meta(ge=1)] = 16


class Instance(msgspec.Struct):
    """plugin_metadata/opentelemetry (APISIX's defaults for it) and plugin_attr."""

    trace_id_source: Literal["x-request-id", "random"] = "random"
    resource: dict[str, Scalar] | None = None
    collector: Collector = msgspec.field(default_factory=Collector)
    batch_span_processor: SpanBatching = msgspec.field(default_factory=SpanBatching)
    set_ngx_var: bool = False


# APISIX config-default.yaml's plugin_attr.opentelemetry (its Authorization header left out).
ATTR_DEFAULTS: dict[str, Any] = {
    "trace_id_source": "x-request-id",
    "resource": {"service.name": "APISIX"},
}

# -- W3C trace context (https://www.w3.org/TR/trace-context/) ------------------------------

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_SAMPLED_FLAGS = frozenset(("01", "03"))


def parse_traceparent(value: str | None) -> tuple[str, str, bool] | None:
    """(trace id, parent span id, sampled) or None when absent or invalid: not lowercase hex,
    version ff, all-zero ids, or a version 00 header with more than four fields (§3.2.2)."""
    if not value:
        return None
    m = _TRACEPARENT.match(value)
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE:
        return None
    if span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id, flags in _SAMPLED_FLAGS or bool(int(flags, 16) & 1)


def ratio_sample(trace_id: str, fraction: float) -> bool:
    """trace_id_ratio: the trace id's low 64 bits under ``fraction`` of their range, so every
    service sampling by ratio decides the same for one trace."""
    return int(trace_id[16:], 16) < fraction * 18446744073709551616.0


def decide(sampler: Sampler, trace_id: str, parent_sampled: bool | None) -> bool:
    """APISIX's samplers (opentelemetry-lua's). ``parent_sampled`` is None without a parent."""
    name = sampler.name
    if name == "parent_base":
        if parent_sampled is not None:
            return parent_sampled
        root = sampler.options.root
        if root is None:
            return False
        return _plain(root.name, root.options.fraction, trace_id)
    return _plain(name, sampler.options.fraction, trace_id)


def _plain(name: str, fraction: float, trace_id: str) -> bool:
    if name == "always_on":
        return True
    if name == "trace_id_ratio":
        return ratio_sample(trace_id, fraction)
    return False


# -- the span --------------------------------------------------------------------------------

STATE_KEY = "opentelemetry"


class SpanStart:
    """What the rewrite phase decided, kept on the request for the log phase."""

    __slots__ = ("parent_id", "sampled", "span_id", "trace_id", "tracestate")

    def __init__(
        self,
        trace_id: str,
        span_id: str,
        parent_id: str | None,
        sampled: bool,
        tracestate: str | None,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.sampled = sampled
        self.tracestate = tracestate


def _kv(key: str, value: Any) -> KeyValue:
    kv = KeyValue(key=key)
    _set_value(kv.value, value)
    return kv


def _set_value(out: AnyValue, value: Any) -> None:
    if isinstance(value, str):
        out.string_value = value
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    else:
        out.string_value = str(value)


def _coerce(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def response_source(ctx: RequestContext) -> str:
    """APISIX get_response_source: "upstream" when the answer came from one, else "apisix"."""
    return "upstream" if ctx.upstream_status is not None else "apisix"


def span_attributes(conf: Conf, ctx: RequestContext) -> list[tuple[str, Any]]:
    method, ua = ctx.method, ctx.headers.get("user-agent")
    attrs: list[tuple[str, Any]] = [
        ("net.host.name", ctx.host),
        ("http.method", method),
        ("http.scheme", ctx.scheme),
        ("http.target", ctx.request_uri),
        ("http.user_agent", ua),
        ("http.request.method", method),
        ("url.scheme", ctx.scheme),
        ("url.path", ctx.path),
        ("user_agent.original", ua),
    ]
    if ctx.matched_route is not None:
        attrs += [
            ("apisix.route_id", ctx.route_id),
            ("apisix.route_name", ctx.route_name),
            ("http.route", ctx.matched_uri),
        ]
    if ctx.service_id is not None:
        attrs.append(("apisix.service_id", ctx.service_id))
    if ctx.consumer_name is not None:
        attrs.append(("apisix.consumer_name", ctx.consumer_name))
    attrs.append(("apisix.response_source", response_source(ctx)))
    status = ctx.resp_status
    attrs += [("http.status_code", status), ("http.response.status_code", status)]
    for key in conf.additional_attributes or ():
        attrs.append((key, _coerce(ctx.var(key))))
    for key in conf.additional_header_prefix_attributes or ():
        if len(key) >= 2 and key.endswith("*"):
            prefix = key[:-1]
            attrs += [(k, v) for k, v in ctx.headers.items() if k.startswith(prefix)]
        else:
            attrs.append((key, ctx.headers.get(key)))
    return attrs


def build_span(conf: Conf, ctx: RequestContext, start: SpanStart, end_ns: int) -> Span:
    name = ctx.method
    if ctx.matched_route is not None and ctx.matched_uri:
        name = f"{name} {ctx.matched_uri}"
    span = Span(
        trace_id=bytes.fromhex(start.trace_id),
        span_id=bytes.fromhex(start.span_id),
        name=name,
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=int(ctx.start_time * 1e9),
        end_time_unix_nano=end_ns,
        flags=0x100 | (0x200 if start.parent_id else 0) | 1,  # sampled; parent is remote
    )
    # Filled in place: upb makes a Python object per message built, ~4x slower.
    add = span.attributes.add
    for k, v in span_attributes(conf, ctx):
        if v is not None:
            kv = add()
            kv.key = k
            _set_value(kv.value, v)
    if start.parent_id:
        span.parent_span_id = bytes.fromhex(start.parent_id)
    if start.tracestate:
        span.trace_state = start.tracestate
    if ctx.resp_status >= 500:
        span.status.CopyFrom(
            Status(
                code=Status.STATUS_CODE_ERROR,
                message=f"{response_source(ctx)} error: {ctx.resp_status}",
            )
        )
    return span


def export_request(resource: Resource, spans: list[Span]) -> bytes:
    scope = ScopeSpans(scope=InstrumentationScope(name="tollway"), spans=spans)
    req = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[scope])]
    )
    return req.SerializeToString()


def resource_of(inst: Instance) -> Resource:
    attrs: dict[str, Scalar] = {"hostname": HOSTNAME, "service.name": "APISIX"}
    attrs.update(inst.resource or {})
    return Resource(attributes=[_kv(k, v) for k, v in attrs.items()])


def collector_url(address: str) -> str:
    if "://" in address:
        return address if address.rstrip("/").endswith("/v1/traces") else address + "/v1/traces"
    return f"http://{address}/v1/traces"


# -- the plugin ------------------------------------------------------------------------------


class OpenTelemetry(Plugin):
    name = "opentelemetry"
    priority = 12009
    schema = Conf
    metadata_schema = Instance

    def __init__(self) -> None:
        self.attr_instance = msgspec.convert(ATTR_DEFAULTS, Instance)
        self.instance = self.attr_instance
        self.spans = BatchManager(self.name)
        self.client = OutboundClient("opentelemetry")
        self._rand = random.getrandbits
        self._use_instance(self.instance)

    def init(self, attr: dict[str, Any]) -> None:
        if attr:
            merged = {**ATTR_DEFAULTS, **attr}
            self.attr_instance = msgspec.convert(merged, Instance)  # a bad one disables it
        self._use_instance(self.metadata or self.attr_instance)

    def set_metadata(self, metadata: Any) -> None:
        self.metadata = metadata
        self._use_instance(metadata if metadata is not None else self.attr_instance)

    def _use_instance(self, inst: Instance) -> None:
        """Metadata wins over plugin_attr; a new instance gets its own exporter queue (the old
        one's spans leave on its timer)."""
        self.instance = inst
        self.spans.max_pending = inst.batch_span_processor.max_queue_size
        self.by_request_id = inst.trace_id_source == "x-request-id"

    # -- rewrite: the trace context ---------------------------------------------------------

    def rewrite(self, conf: Conf, ctx: RequestContext) -> None:
        headers = ctx.headers
        parent = parse_traceparent(headers.get("traceparent"))
        span_id = "%016x" % (self._rand(64) or 1)
        if parent is not None:
            trace_id, parent_id, parent_sampled = parent
            tracestate = headers.get("tracestate")
            sampled = decide(conf.sampler, trace_id, parent_sampled)
        else:
            trace_id, parent_id, tracestate = self._new_trace_id(headers), None, None
            sampled = decide(conf.sampler, trace_id, None)
        start = SpanStart(trace_id, span_id, parent_id, sampled, tracestate)
        state = ctx.plugin_state
        if state is None:
            state = ctx.plugin_state = {}
        state[STATE_KEY] = start
        traceparent = f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"
        ctx.set_request_header("traceparent", traceparent)  # the client's tracestate goes on
        if self.instance.set_ngx_var:
            ctx.set_var("opentelemetry_context_traceparent", traceparent)
            ctx.set_var("opentelemetry_trace_id", trace_id)
            ctx.set_var("opentelemetry_span_id", span_id)

    def _new_trace_id(self, headers: dict[str, str]) -> str:
        if self.by_request_id:
            rid = headers.get("x-request-id")
            if rid:
                rid = rid.lower()
                if rid != _ZERO_TRACE and _HEX32.match(rid):
                    return rid
        return "%032x" % (self._rand(128) or 1)

    # -- log: queue the span ------------------------------------------------------------------

    def log(self, conf: Conf, ctx: RequestContext) -> None:
        state = ctx.plugin_state
        start = state.get(STATE_KEY) if state else None
        if start is None or not start.sampled:
            return
        spans = self.spans
        if spans.full():
            return
        ctx.body_reader = None  # the request is over: the queue keeps no connection alive
        spans.push(self.instance, (conf, ctx, start, time.time_ns()), self._start)

    def _start(self, inst: Instance) -> tuple[BatchSettings, Sender, Preparer]:
        bsp = inst.batch_span_processor
        settings = BatchSettings(
            "opentelemetry",
            batch_max_size=bsp.max_export_batch_size,
            inactive_timeout=bsp.inactive_timeout,
            buffer_duration=bsp.batch_timeout,
            max_retry_count=2,
            retry_delay=1,
        )

        def prepare(batch: list[tuple[Conf, RequestContext, SpanStart, int]]) -> list[Any]:
            return [build_span(*item) for item in batch]

        return settings, self._sender(inst), prepare

    def _sender(self, inst: Instance) -> Sender:
        endpoint, target = Endpoint.parse(collector_url(inst.collector.address))
        resource = resource_of(inst)
        headers = [("Host", endpoint.host), ("Content-Type", "application/x-protobuf")]
        for k, v in (inst.collector.request_headers or {}).items():
            headers.append((k, str(v).lower() if isinstance(v, bool) else str(v)))
        timeout = inst.collector.request_timeout

        async def send(spans: list[Span]) -> None:
            body = export_request(resource, spans)
            status = await self.client.send(
                endpoint,
                request_bytes("POST", target, headers, body),
                connect_timeout=timeout,
                timeout=timeout,
            )
            if status >= 300:
                raise ConnectionError(f"the collector answered {status}")

        return send

    async def aclose(self) -> None:
        await self.spans.aclose(self.instance.collector.request_timeout)
        self.client.close()


PLUGINS = [OpenTelemetry]
