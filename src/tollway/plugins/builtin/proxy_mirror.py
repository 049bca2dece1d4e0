"""proxy-mirror (APISIX priority 1010): copy sampled requests to a mirror host, ignore its answers.

As APISIX: the sample is drawn and the mirror URI fixed in the rewrite phase (before
proxy-rewrite, priority 1008, changes the upstream URI); the copy leaves only when the request
is proxied (nginx ``mirror`` runs in the precontent phase, after every plugin let it through),
with the same method, headers (as plugins left them), body, and ``Host`` set to the upstream
host. The mirror's response is read and dropped.

Invariants: mirroring never delays or fails the main request beyond reading its body first
(nginx ``mirror_request_body`` does that too); at most ``MAX_IN_FLIGHT`` mirror requests per
worker, a copy beyond that is dropped and counted; every mirror task is tracked and cancelled
at shutdown (``aclose``).

Deviations: a body larger than ``MAX_MIRROR_BODY`` is not read ahead and that request is not
mirrored (counted); ``grpc://``/``grpcs://`` mirror hosts are accepted by the schema (APISIX
3.x) but not mirrored from HTTP routes; after connecting, ``send + read`` bounds the whole
exchange (nginx times each read and write). TLS to the mirror is neither verified nor sent an
SNI name (nginx's ``proxy_ssl_verify off``, ``proxy_ssl_server_name off``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal
from urllib.parse import quote

import msgspec
from msgspec import Meta
from multidict import CIMultiDict

from tollway.plugins.kit import Exit, PhaseResult, Plugin, RequestContext
from tollway.plugins.kit_outbound import (
    Endpoint,
    OutboundClient,
    PoolLimits,
    RateLimitedLog,
    request_bytes,
)

log = logging.getLogger("tollway.plugins")

_MIRROR_HOST = r"^(http(s)?|grpc(s)?):\/\/([\da-zA-Z.-]+|\[[\da-fA-F:]+\])(:\d+)?$"

MAX_IN_FLIGHT = 256  # mirror requests per worker; more are dropped, not queued
MAX_MIRROR_BODY = 1024 * 1024
DEFAULT_TIMEOUT = 60.0  # nginx proxy_*_timeout, used when plugin_attr sets none
STATE_KEY = "proxy-mirror"

# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the mirror request sets itself.
_NOT_COPIED = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        "expect",
    )
)
# RFC 3986 pchar plus "/": what a decoded $uri may keep unescaped on the request line.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


class Conf(msgspec.Struct):
    host: Annotated[str, Meta(pattern=_MIRROR_HOST)]
    path: Annotated[str, Meta(pattern=r"^/[^?&]+$")] | None = None
    path_concat_mode: Literal["replace", "prefix"] = "replace"
    sample_ratio: Annotated[float, Meta(ge=0.00001, le=1)] = 1.0


# -- the pure core --------------------------------------------------------------------------


def mirror_uri(conf: Conf, ctx: RequestContext) -> str:
    """APISIX ``enable_mirror``: the upstream URI if a plugin set one, else ``$uri$is_args$args``;
    ``path`` replaces the path (keeping the args) or, with ``prefix``, goes in front."""
    args = f"?{ctx.query}" if ctx.query else ""
    uri = ctx.up_uri or quote(ctx.path, safe=_PATH_SAFE) + args
    if conf.path is not None:
        uri = conf.path + uri if conf.path_concat_mode == "prefix" else conf.path + args
    return uri


def sampled(ratio: float, draw: float) -> bool:
    """APISIX: a ratio of 1 always mirrors; otherwise ``math.random() < sample_ratio``."""
    return ratio == 1 or draw < ratio


def mirror_headers(ctx: RequestContext) -> CIMultiDict[str]:
    """The request headers as plugins left them, without hop-by-hop ones, plus ``Host``."""
    pairs: Iterable[tuple[str, str]]
    if ctx.up_header_ops is None:
        pairs = ((k.decode("latin-1"), v.decode("latin-1")) for k, v in ctx.raw_headers)
    else:
        pairs = ctx.headers.items()
    out: CIMultiDict[str] = CIMultiDict(Host=ctx.up_host or ctx.headers.get("host") or ctx.host)
    for name, value in pairs:
        if name.lower() not in _NOT_COPIED:
            out.add(name, value)
    return out


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any, default: float = DEFAULT_TIMEOUT) -> float:
    """nginx time values as APISIX's ``plugin_attr.proxy-mirror.timeout`` gives them
    (``"60s"``, ``"500ms"``, ``"1m"``) or plain seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    m = _DURATION.match(value) if isinstance(value, str) else None
    if m is None:
        return default
    seconds = float(m.group(1)) * _UNIT[m.group(2)]
    return seconds if seconds > 0 else default


# -- the async shell ------------------------------------------------------------------------


class Timeouts(msgspec.Struct, frozen=True):
    connect: float = DEFAULT_TIMEOUT
    send: float = DEFAULT_TIMEOUT
    read: float = DEFAULT_TIMEOUT


class MirrorClient:
    """Sends copies from one worker with an ``OutboundClient`` (Tollway's own HTTP/1.1
    connections: about 21 us of CPU per copy against 105-135 us with aiohttp, see
    ``tollway.plugins.outbound``). Copies in flight are bounded and tracked."""

    def __init__(self, timeouts: Timeouts, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.timeouts = timeouts
        self.max_in_flight = max_in_flight
        self.tasks: set[asyncio.Task[None]] = set()
        self.client = OutboundClient(
            "proxy-mirror", PoolLimits(size=max_in_flight, idle_timeout=60.0, requests=1000)
        )
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._warn = RateLimitedLog(log)

    def submit(self, method: str, endpoint: Endpoint, request: bytes) -> bool:
        """Start a copy in the background; False (and counted) when too many are in flight."""
        if len(self.tasks) >= self.max_in_flight:
            self.dropped += 1
            self._warn(logging.WARNING, "proxy-mirror: too many mirror requests in flight")
            return False
        task = asyncio.get_running_loop().create_task(self._send(method, endpoint, request))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def _send(self, method: str, endpoint: Endpoint, request: bytes) -> None:
        t = self.timeouts
        try:
            # nginx ``proxy_ssl_verify off`` and ``proxy_ssl_server_name off``: no check, no SNI.
            await self.client.send(
                endpoint,
                request,
                head_request=method == "HEAD",
                connect_timeout=t.connect,
                timeout=t.send + t.read,
                sni=False,
            )
        except (OSError, ValueError) as e:
            self.failed += 1
            self._warn(
                logging.WARNING,
                "proxy-mirror: request to %s:%s failed: %s",
                endpoint.host,
                endpoint.port,
                e or type(e).__name__,
            )
            return
        self.sent += 1

    async def aclose(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.client.close()


class ProxyMirror(Plugin):
    name = "proxy-mirror"
    priority = 1010
    schema = Conf

    def __init__(self) -> None:
        self.client = MirrorClient(Timeouts())
        self.too_large = 0
        self._rng = random.Random()
        self._endpoints: dict[str, Endpoint] = {}

    def init(self, attr: dict[str, Any]) -> None:
        t = attr.get("timeout")
        t = t if isinstance(t, dict) else {}
        self.client.timeouts = Timeouts(
            parse_duration(t.get("connect")),
            parse_duration(t.get("send")),
            parse_duration(t.get("read")),
        )

    def _endpoint(self, host: str) -> Endpoint:
        endpoint = self._endpoints.get(host)
        if endpoint is None:
            if len(self._endpoints) > 1000:
                self._endpoints.clear()
            endpoint = self._endpoints[host] = Endpoint.parse(host)[0]
        return endpoint

    def rewrite(self, conf: Conf, ctx: RequestContext) -> Exit:
        if not sampled(conf.sample_ratio, self._rng.random()):
            return None
        if conf.host.startswith("grpc"):
            log.debug("proxy-mirror: %s is gRPC; HTTP requests are not mirrored", conf.host)
            return None
        state = ctx.plugin_state
        if state is None:
            state = ctx.plugin_state = {}
        state[STATE_KEY] = mirror_uri(conf, ctx)
        return None

    def phase_method(self, phase: str, conf: Conf) -> Any:
        if phase == "before_proxy":
            return self.before_proxy_now
        return getattr(self, phase)

    def before_proxy_now(self, conf: Conf, ctx: RequestContext) -> PhaseResult:
        """``before_proxy`` as a plain call when there is no request body to wait for (the
        pipeline's fast path); a coroutine (``before_proxy``) when there is one."""
        if ctx.body_reader is not None:
            return self.before_proxy(conf, ctx)
        state = ctx.plugin_state
        uri = state.pop(STATE_KEY, None) if state else None
        if uri is not None:
            method = ctx.up_method or ctx.method
            request = request_bytes(method, uri, mirror_headers(ctx).items(), b"")
            self.client.submit(method, self._endpoint(conf.host), request)
        return None

    async def before_proxy(self, conf: Conf, ctx: RequestContext) -> Exit:
        state = ctx.plugin_state
        uri = state.pop(STATE_KEY, None) if state else None
        if uri is None:
            return None
        body = await ctx.read_body(MAX_MIRROR_BODY)
        if body is None:
            self.too_large += 1
            log.debug("proxy-mirror: body over %d bytes, %s not mirrored", MAX_MIRROR_BODY, uri)
            return None
        method = ctx.up_method or ctx.method
        request = request_bytes(method, uri, mirror_headers(ctx).items(), body)
        self.client.submit(method, self._endpoint(conf.host), request)
        return None

    async def aclose(self) -> None:
        await self.client.aclose()


PLUGINS = [ProxyMirror]
