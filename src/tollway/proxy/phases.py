"""The phases of an exchange: read the runtime once, match, run the plugins in APISIX's order,
choose the upstream.

A route's chain is compiled to what its request phases run (``Chain.pre``: the global rules'
and the route's rewrite entries; ``Chain.main``: their access entries; ``before_proxy``), with
the consumer's merge between the first two. The request phases run as plain calls (``_drive``,
``_drive_main``): the entries called one after the other with nothing in between but their
filters, then the upstream. A plugin that returns an awaitable hands the rest over to a task
(``_awaiting``), from that very entry on, so a request whose plugins do not wait costs no task.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec

from tollway.httprules.status import PLAIN_TEXT, ROUTE_NOT_FOUND, default_page, error_page
from tollway.httprules.target import host_name, origin_form, routed_path
from tollway.plugins.kit import RequestContext, wire_value
from tollway.plugins.registry import Chain, ChainEntry
from tollway.proxy.attempt import forward, proxy
from tollway.proxy.base import ExchangeBase
from tollway.regex import Regex
from tollway.runtime.compiled import CompiledRoute, Runtime

log = logging.getLogger("tollway.proxy")

_json = msgspec.json.Encoder()

# What ``_prepare`` leaves to do.
ANSWERED, FORWARD, PHASES = 0, 1, 2
# The request-phase stages, in order; a task resumes after the entries left in one of them.
_PRE, _ADDED, _MAIN, _BEFORE = 0, 1, 2, 3


def _names(headers: dict[str, Any] | None, lname: str) -> bool:
    return headers is not None and any(k.lower() == lname for k in headers)


class Phases(ExchangeBase):
    __slots__ = ()

    # -- the pipeline -------------------------------------------------------------------

    async def handle(self) -> None:
        """The whole pipeline as a coroutine (requests with a body, async plugins...)."""
        todo = self._prepare()
        if todo == PHASES:
            assert self.chain is not None
            await self._awaiting(_PRE, self.chain.pre)
        elif todo == FORWARD:
            await self._awaiting(_BEFORE, ())

    def _prepare(self) -> int:
        """Parse, match, pick the chain (``self.chain``): ANSWERED (the request was answered),
        FORWARD (no request-phase plugin: the upstream is chosen) or PHASES (to run)."""
        if self.reject_status:
            self.keep_alive = False
            self.respond_error(self.reject_status)
            return ANSWERED
        ctx = self._make_context()
        if ctx is None:
            self.keep_alive = False
            self.respond_error(400)
            return ANSWERED
        self.ctx = ctx
        mtls = self.proto.client_cert
        if mtls is not None and not mtls[1] and self._no_client_cert(mtls[0].skip, ctx):
            return ANSWERED
        runtime = self.proto.state.compiler.runtime
        ctx.consumers = runtime.consumers
        ctx.upstream_source = runtime  # plugins choose upstreams of this runtime too
        if self.has_body:
            ctx.body_reader = self._plugin_body
        match = runtime.router.match(ctx)
        if match is None:
            chain = self.chain = runtime.global_chain  # its response phases apply to the 404
            if chain.requests:  # APISIX runs the global rules' rewrite and access first
                return PHASES
            self._no_route()
            return ANSWERED
        route: CompiledRoute = match.payload
        ctx.route = route
        ctx.route_id = route.id
        ctx.route_name = route.name
        ctx.service_id = route.service_id
        ctx.matched_params = match.params
        ctx.matched_uri = route.uri
        ctx.route_hosts = route.hosts
        if route.error:
            self.respond_error(route.error)
            return ANSWERED
        chain = self.chain = route.chain
        if chain.requests:
            return PHASES
        # No request-phase plugin at all (the common case): nothing to drive. The route's own
        # upstream, with nodes, for a request that is no upgrade: ``_choose_upstream``, inlined.
        upstream = route.upstream
        if upstream is not None and upstream.servers and not self.upgrade:
            self.upstream = upstream
            return FORWARD
        return FORWARD if self._choose_upstream(runtime, route) else ANSWERED

    def _no_client_cert(self, skip: Regex | None, ctx: RequestContext) -> bool:
        """mTLS without a client certificate: answered 400 (True) unless the path is one the
        route's ``skip_mtls_uri_regex`` lets through (APISIX verify_https_client)."""
        if skip is None or not skip.search(ctx.path):
            self.respond_error(400)
            return True
        return False

    def _with_consumer(self, ctx: RequestContext) -> tuple[Chain, tuple[ChainEntry, ...]] | None:
        """An auth plugin identified a consumer: its group's and its own plugins now apply.
        ``self.chain`` becomes the merged chain (built once per route and consumer; the
        route's own when the consumer brings no plugin), returned with the rewrite entries the
        merge adds, which run now (APISIX rewrite_in_consumer); None: the request was
        answered."""
        consumer = ctx.consumer
        route = ctx.route
        assert consumer is not None and route is not None
        # (the pipeline set it to the request's Runtime: ``_prepare``)
        runtime: Runtime = ctx.upstream_source  # type: ignore[assignment]
        group = consumer.group_id
        if group is not None and group not in runtime.consumers.groups:
            # APISIX: "failed to fetch consumer group config by id" -> 503
            self.respond_error(503)
            return None
        if group is None and not consumer.plugins:
            return route.chain, ()  # nothing to merge (APISIX keeps the route's conf)
        hit = runtime.consumer_phases(route, consumer)
        self.chain = hit[0]
        return hit

    def _choose_upstream(self, runtime: Runtime, route: CompiledRoute) -> bool:
        """Sets ``self.upstream``, or answers 502/503 as APISIX does and returns False."""
        ctx = self.ctx
        assert ctx is not None
        # A plugin (traffic-split) may have chosen another upstream in rewrite/access.
        upstream = ctx.upstream_override if ctx.upstream_override is not None else route.upstream
        if upstream is None:
            if route.upstream_id is None:
                self.respond_error(503)
                return False
            upstream = runtime.upstreams.get(route.upstream_id)
            if upstream is None:
                self.respond_error(502)
                return False
        if not upstream.servers:
            self.respond_error(503)  # APISIX: "no valid upstream node"
            return False
        if self.upgrade and self.upgrade.lower() == b"websocket" and route.enable_websocket:
            self.websocket = True
        self.upstream = upstream
        return True

    def _upstream_or_404(self, ctx: RequestContext) -> bool:
        """After rewrite and access: the upstream is chosen (True), or the request was
        answered (a route-less request gets its 404 now)."""
        route = ctx.route
        if route is None:
            self._no_route()
            return False
        runtime: Runtime = ctx.upstream_source  # type: ignore[assignment]
        return self._choose_upstream(runtime, route)

    # -- the request phases as plain calls (a task from the first awaitable on) ----------

    def _stop(self, res: Any, stage: int, entries: tuple[ChainEntry, ...], k: int) -> None:
        """Entry ``k`` of a stage returned ``res``: an exit (a tuple) answers the request; an
        awaitable (an async plugin, or one that must wait this time: the kit's
        ``PhaseResult``) hands it and the rest, from the entry after it on, to a task."""
        e = entries[k]
        if type(res) is tuple:
            self.plugin_exit(res, e)
        else:
            self._spawn(self._awaiting(stage, entries[k + 1 :], res, e))

    def _consumed(self, ctx: RequestContext) -> None:
        """After the rewrite entries, a consumer with plugins or a group is known: they join
        the chain (``_with_consumer``), the rewrite entries they add run, then the access
        entries on, the merged chain's."""
        chain = self.chain
        assert chain is not None
        if ctx.route is not None:  # (no merge for the 404 a global rule's plugins run for)
            merged = self._with_consumer(ctx)
            if merged is None:
                return
            chain, added = merged
            if added and not self._run_now(added, _ADDED, ctx):
                return
        self._drive_main(chain, ctx)

    def _drive(self) -> None:
        """The request phases as plain calls while the plugins answer at once (most routes),
        then the upstream; ``_run_now`` hands the rest over to a task at the first awaitable."""
        ctx = self.ctx
        chain = self.chain
        assert ctx is not None and chain is not None
        if chain.pre and not self._run_now(chain.pre, _PRE, ctx):
            return
        consumer = ctx.consumer
        if consumer is not None and (consumer.plugins or consumer.group_id is not None):
            self._consumed(ctx)
            return
        self._drive_main(chain, ctx)

    def _drive_main(self, chain: Chain, ctx: RequestContext) -> None:
        """From the access entries on: the upstream (``_choose_upstream``, its usual case
        inline), the before_proxy entries, the request to the upstream."""
        if chain.main and not self._run_now(chain.main, _MAIN, ctx):
            return
        route = ctx.route
        if route is None:
            self._no_route()
            return
        up = ctx.upstream_override
        if up is None:
            up = route.upstream
        if up is not None and up.servers and not self.upgrade:
            self.upstream = up
        elif not self._choose_upstream(ctx.upstream_source, route):  # type: ignore[arg-type]
            return
        if chain.before_proxy and not self._run_now(chain.before_proxy, _BEFORE, ctx):
            return
        if not self.response_started and self.upstream is not None:
            forward(self)

    def _no_route(self) -> None:
        """No route matched the request (after the global rules' plugins, if any): its 404."""
        self.respond(404, ROUTE_NOT_FOUND, [(b"Content-Type", PLAIN_TEXT)])

    def _run_now(self, entries: tuple[ChainEntry, ...], stage: int, ctx: RequestContext) -> bool:
        """One stage's entries as plain calls. False: a plugin answered, or returned an
        awaitable and a task runs the rest (``_stop``)."""
        for k, e in enumerate(entries):
            flt = e.filter
            if flt is not None and not flt.eval(ctx.var):
                continue
            res = e.fn(e.conf, ctx)
            if res is not None:
                self._stop(res, stage, entries, k)
                return False
        return True

    async def _awaiting(
        self,
        stage: int,
        rest: tuple[ChainEntry, ...],
        awaitable: Any = None,
        entry: ChainEntry | None = None,
    ) -> None:
        """The driver's second half, in a task: the ``awaitable`` the sync driver met (from
        ``entry``), the entries left in ``stage`` (``rest``), the stages after it, awaiting
        whatever a plugin returns to wait on; then the upstream."""
        ctx = self.ctx
        assert ctx is not None
        if awaitable is not None:
            res = await awaitable
            if res is not None:
                assert entry is not None
                self.plugin_exit(res, entry)
                return
        if not await self._run_entries(rest, ctx):
            return
        if stage == _PRE and ctx.consumer is not None and ctx.route is not None:
            merged = self._with_consumer(ctx)
            if merged is None or not await self._run_entries(merged[1], ctx):
                return
        chain = self.chain
        assert chain is not None
        if stage < _MAIN and not await self._run_entries(chain.main, ctx):
            return
        if stage < _BEFORE:
            if not self._upstream_or_404(ctx):
                return
            if not await self._run_entries(chain.before_proxy, ctx):
                return
        if self.response_started or self.upstream is None or self.route is None:
            return
        await proxy(self, self.route, self.upstream)

    async def _run_entries(self, entries: tuple[ChainEntry, ...], ctx: RequestContext) -> bool:
        """Run one stage's entries, awaiting what needs it. False: a plugin ended the request."""
        for e in entries:
            if e.filter is not None and not e.filter.eval(ctx.var):
                continue
            res = e.fn(e.conf, ctx)
            if res is not None and type(res) is not tuple:
                res = await res
            if res is not None:
                self.plugin_exit(res, e)
                return False
        return True

    @property
    def route(self) -> CompiledRoute | None:
        return self.ctx.route if self.ctx is not None else None

    def _make_context(self) -> RequestContext | None:
        url = self.url
        if not url.startswith(b"/"):  # absolute-form or asterisk-form
            origin = origin_form(url, self.method)
            if origin is None:
                return None
            url = self.target = origin[0]
            if origin[1] is not None:
                self.host_raw = origin[1]
        raw = url.decode("latin-1")
        raw_path, _, query = raw.partition("?")
        p = self.proto
        if (
            "%" in raw_path
            or "/." in raw_path
            or "//" in raw_path
            or ";" in raw_path
            or "\\" in raw_path
            or (raw_path[-1] == "/" and len(raw_path) > 1)
        ):
            compiler = p.state.compiler
            routed = routed_path(
                raw_path, query, servlet=compiler.servlet_uri, tail_slash=compiler.tail_slash
            )
            if routed is None:
                return None
            path = routed[0]
            if routed[1] is not None:
                # The upstream gets the path the router and plugins saw (no ../ bypass).
                self.target = routed[1]
        else:
            path = raw_path
        # Keep-alive clients send the same Host again and again: parse it once per connection.
        cached = p.host_cache
        if cached is not None and cached[0] == self.host_raw:
            host = cached[1]
        else:
            found = host_name(self.host_raw)
            if found is None:
                return None
            host = found
            p.host_cache = (self.host_raw, host)
        return RequestContext(
            self.method,
            raw,
            path,
            query,
            self.raw_headers,
            host,
            p.remote_addr if self.client_addr is None else self.client_addr,
            p.remote_port,
            p.server_addr,
            p.server_port,
            p.scheme,
            time.time(),
            self.http_version,
        )

    def plugin_exit(self, res: Any, entry: ChainEntry) -> None:
        status = res[0]
        body = res[1] if len(res) > 1 else None
        extra = res[2] if len(res) > 2 else None
        if entry.error_response is not None and status >= 400:
            body = entry.error_response
        headers: list[tuple[bytes, bytes]] = []
        if isinstance(body, dict | list):
            data = _json.encode(body) + b"\n"
            # APISIX sets no type: nginx's default (as its docs show for a key-auth 401)
            headers.append((b"Content-Type", PLAIN_TEXT))
        elif body is None:
            data = b""
            if default_page(status) and not _names(extra, "content-type"):
                # APISIX exits with ngx.exit(status): nginx answers with its own page for it
                data = error_page(status)
                headers.append((b"Content-Type", b"text/html"))
        else:
            data = body.encode() if isinstance(body, str) else bytes(body)
        for k, v in (extra or {}).items():
            headers.append((k.encode("latin-1"), wire_value(str(v)).encode("latin-1")))
        self.respond(status, data, headers)

    def _header_filter(self, chain: Chain, ctx: RequestContext) -> None:
        for e in chain.header_filter:
            if e.filter is not None and not e.filter.eval(ctx.var):
                continue
            try:
                e.fn(e.conf, ctx)
            except Exception:
                log.debug("plugin %s header_filter failed", e.plugin.name, exc_info=True)

    def _body_filter(self, chain: Chain, ctx: RequestContext, data: bytes, eof: bool) -> bytes:
        for e in chain.body_filter:
            if e.filter is not None and not e.filter.eval(ctx.var):
                continue
            try:
                data = e.fn(e.conf, ctx, data, eof)
            except Exception:
                log.debug("plugin %s body_filter failed", e.plugin.name, exc_info=True)
        return data
