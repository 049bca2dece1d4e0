"""The phases of an exchange: read the runtime once, match, run the plugins in APISIX's order,
choose the upstream.

The phases are steps (entry lists) one driver runs: ``_drive`` calls the plugins while they
answer at once and hands over to a task (``_awaiting``) at the first one that returns an
awaitable, so a request whose plugins do not wait costs no task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import msgspec

from tollway.httprules.status import PLAIN_TEXT, ROUTE_NOT_FOUND, default_page, error_page
from tollway.httprules.target import host_name, origin_form, routed_path
from tollway.plugins.kit import RequestContext, wire_value
from tollway.plugins.registry import Chain, ChainEntry
from tollway.proxy.attempt import forward, proxy
from tollway.proxy.base import ExchangeBase
from tollway.runtime.compiled import CompiledRoute, Runtime

log = logging.getLogger("tollway.proxy")

_json = msgspec.json.Encoder()
_NO_STEPS: Iterator[tuple[ChainEntry, ...]] = iter(())


def _names(headers: dict[str, Any] | None, lname: str) -> bool:
    return headers is not None and any(k.lower() == lname for k in headers)


class Phases(ExchangeBase):
    __slots__ = ()

    # -- the pipeline -------------------------------------------------------------------

    async def handle(self) -> None:
        """The whole pipeline as a coroutine (requests with a body, async plugins...)."""
        steps = self._prepare()
        if steps is not None:
            await self._awaiting(steps)

    def _prepare(self) -> Iterator[tuple[ChainEntry, ...]] | None:
        """Parse, match, pick the chains. None if the request was already answered."""
        if self.reject_status:
            self.keep_alive = False
            self.respond_error(self.reject_status)
            return None
        ctx = self._make_context()
        if ctx is None:
            self.keep_alive = False
            self.respond_error(400)
            return None
        self.ctx = ctx
        mtls = self.proto.client_cert
        if mtls is not None and not mtls[1]:
            skip = mtls[0].skip
            if skip is None or not skip.search(ctx.path):
                # APISIX verify_https_client: no client certificate -> 400
                self.respond_error(400)
                return None
        runtime = self.proto.state.compiler.runtime
        ctx.consumers = runtime.consumers
        ctx.upstream_source = runtime  # plugins choose upstreams of this runtime too
        if self.has_body:
            ctx.body_reader = self._plugin_body
        match = runtime.router.match(ctx)
        gchain = runtime.global_chain
        if match is None:
            self.chain = gchain  # the global rules' response phases still apply to the 404
            return self._not_found_steps(gchain)
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
            return None
        chain = self.chain = route.chain
        if not (
            gchain.rewrite or gchain.access or chain.rewrite or chain.access or chain.before_proxy
        ):
            # No request-phase plugin at all (the common case): no steps to drive.
            self._choose_upstream(runtime, route)
            return _NO_STEPS
        return self._steps(runtime, route, gchain)

    def _not_found_steps(self, gchain: Chain) -> Iterator[tuple[ChainEntry, ...]]:
        # APISIX runs the global rules' rewrite and access phases before its 404.
        if gchain.rewrite:
            yield gchain.rewrite
        if gchain.access:
            yield gchain.access
        self.respond(404, ROUTE_NOT_FOUND, [(b"Content-Type", PLAIN_TEXT)])

    def _steps(
        self, runtime: Runtime, route: CompiledRoute, gchain: Chain
    ) -> Iterator[tuple[ChainEntry, ...]]:
        """The plugin phases in APISIX's order, as entry lists for a driver to run (sync or
        async); a driver stops at the first entry list whose plugin answers. Ends with the
        upstream chosen in ``self.upstream`` (or the request answered)."""
        ctx = self.ctx
        assert ctx is not None
        chain = route.chain
        if gchain.rewrite:
            yield gchain.rewrite
        if chain.rewrite:
            yield chain.rewrite
        if ctx.consumer is not None:
            group = ctx.consumer.group_id
            if group is not None and group not in runtime.consumers.groups:
                # APISIX: "failed to fetch consumer group config by id" -> 503
                self.respond_error(503)
                return
            # An auth plugin identified a consumer: its group's and its own plugins now apply,
            # and the ones it adds run their rewrite phase (APISIX rewrite_in_consumer).
            merged, added = runtime.consumer_phases(route, ctx.consumer)
            if merged is not chain:
                self.chain = chain = merged
                if added:
                    yield added
        if gchain.access:
            yield gchain.access
        if chain.access:
            yield chain.access
        if self._choose_upstream(runtime, route) and chain.before_proxy:
            yield chain.before_proxy

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

    def _drive(self, steps: Iterator[tuple[ChainEntry, ...]]) -> None:
        """The phase driver: plain calls while the plugins answer at once; at the first one
        that returns an awaitable (an async plugin, or one that must wait this time: the kit's
        ``PhaseResult``), the rest runs in a task (``_awaiting``), from that very entry on."""
        ctx = self.ctx
        assert ctx is not None
        for entries in steps:
            for e in entries:
                if e.filter is not None and not e.filter.eval(ctx.var):
                    continue
                res = e.fn(e.conf, ctx)
                if res is None:
                    continue
                if type(res) is not tuple:  # an awaitable: wait for it, then go on
                    rest = entries[entries.index(e) + 1 :]
                    self._spawn(self._awaiting(steps, (res, e, rest)))
                    return
                self.plugin_exit(res, e)
                return
        route = ctx.route
        if self.response_started or self.upstream is None or route is None:
            return
        forward(self)

    async def _awaiting(
        self,
        steps: Iterator[tuple[ChainEntry, ...]],
        pending: tuple[Any, ChainEntry, tuple[ChainEntry, ...]] | None = None,
    ) -> None:
        """The driver's second half, in a task: what ``_drive`` left (``pending``: the
        awaitable it met, its entry, the entries after it in that phase), then the remaining
        steps, awaiting whatever a plugin returns to wait on; then the upstream."""
        ctx = self.ctx
        assert ctx is not None
        if pending is not None:
            awaitable, entry, rest = pending
            res = await awaitable
            if res is not None:
                self.plugin_exit(res, entry)
                return
            if await self._run_entries(rest, ctx):
                return
        for entries in steps:
            if await self._run_entries(entries, ctx):
                return
        if self.response_started or self.upstream is None or self.route is None:
            return
        await proxy(self, self.route, self.upstream)

    async def _run_entries(self, entries: tuple[ChainEntry, ...], ctx: RequestContext) -> bool:
        """Run one phase's entries, awaiting what needs it. True: a plugin ended the request."""
        for e in entries:
            if e.filter is not None and not e.filter.eval(ctx.var):
                continue
            res = e.fn(e.conf, ctx)
            if res is not None and type(res) is not tuple:
                res = await res
            if res is not None:
                self.plugin_exit(res, e)
                return True
        return False

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
                e.plugin.header_filter(e.conf, ctx)
            except Exception:
                log.debug("plugin %s header_filter failed", e.plugin.name, exc_info=True)

    def _body_filter(self, chain: Chain, ctx: RequestContext, data: bytes, eof: bool) -> bytes:
        for e in chain.body_filter:
            if e.filter is not None and not e.filter.eval(ctx.var):
                continue
            try:
                data = e.plugin.body_filter(e.conf, ctx, data, eof)
            except Exception:
                log.debug("plugin %s body_filter failed", e.plugin.name, exc_info=True)
        return data
