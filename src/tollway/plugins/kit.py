"""The plugin kit: what a plugin may see and do during a request.

A plugin is a class with a ``name``, a ``priority`` and a config ``schema`` (a msgspec Struct),
and any of the phase methods below. ``rewrite``/``access``/``before_proxy`` may end the request by
returning ``(status, body)`` or ``(status, body, headers)``: a dict/list body is sent as JSON with
a trailing newline (APISIX's ``core.response.exit``). Phase methods may be plain functions or
coroutines; the chain is compiled once per route version, so none of this is decided per request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from operator import attrgetter
from typing import Any, ClassVar, Generic, Protocol, TypeVar
from urllib.parse import parse_qsl

import msgspec
from mypy_extensions import mypyc_attr

from tollway.plugins.kit_head import EarlyHeaders, HeaderGroup, ResponseHead

Exit = tuple[int, Any] | tuple[int, Any, dict[str, str]] | None
# rewrite/access/before_proxy may be coroutines (e.g. limit-req delays a request).
PhaseResult = Exit | Awaitable[Exit]

C = TypeVar("C")
T = TypeVar("T")

PHASES = ("rewrite", "access", "before_proxy", "header_filter", "body_filter", "log")

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


_CTL_TO_SP = str.maketrans({"\r": " ", "\n": " ", "\0": " "})


def wire_value(value: str) -> str:
    """A header value a plugin sets, as it may go on the wire: CR, LF and NUL become SP (RFC
    9110 5.5 lets a recipient replace them so), so no value can start another header line; text
    beyond latin-1 becomes the latin-1 reading of its UTF-8 bytes, so heads are written with
    one latin-1 encode and carry UTF-8, as nginx passes what it was given. Every header setter
    of the kit applies it: what a plugin sets is safe to write, whatever its source."""
    if not value.isprintable():  # one C pass; HTAB and other controls are rare but legal
        value = value.translate(_CTL_TO_SP)
    if not value.isascii():
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "surrogateescape").decode("latin-1")
    return value


def header_names_error(headers: Any) -> str | None:
    """For a plugin's header edits (a name -> value map, a list of names, or the
    ``{add, set, remove}`` form): what is wrong with a name, or None. A name must be an RFC 9110
    5.1 token, so no configured name can break the head it is written into."""
    if isinstance(headers, dict) and headers and set(headers) <= {"add", "set", "remove"}:
        for part in headers.values():
            err = header_names_error(part)
            if err is not None:
                return err
        return None
    for name in headers or ():
        if not isinstance(name, str) or not name or not set(name) <= _TCHAR:
            return f"invalid header name {name!r}: a header name is a token (RFC 9110 5.1)"
    return None


class PerConf(Generic[C, T]):
    """State a plugin derives from its conf once (compiled regexes, templates...). Confs are
    decoded once per route version and live as long as it, so they are keyed by identity."""

    __slots__ = ("_build", "_cache")

    def __init__(self, build: Callable[[C], T]) -> None:
        self._build = build
        self._cache: dict[int, tuple[C, T]] = {}

    def __call__(self, conf: C) -> T:
        hit = self._cache.get(id(conf))
        if hit is not None and hit[0] is conf:
            return hit[1]
        value = self._build(conf)
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[id(conf)] = (conf, value)
        return value


# Compiled by mypyc (tollway.native); every plugin is an interpreted subclass.
@mypyc_attr(allow_interpreted_subclasses=True)
class Plugin:
    """Base class. Subclasses override only the phases they use."""

    name: ClassVar[str] = ""
    priority: ClassVar[int] = 0
    version: ClassVar[float] = 0.1
    schema: ClassVar[type[msgspec.Struct] | None] = None
    consumer_schema: ClassVar[type[msgspec.Struct] | None] = None
    metadata_schema: ClassVar[type[msgspec.Struct] | None] = None
    type: ClassVar[str] = ""  # "auth" for authentication plugins
    run_policy: ClassVar[str] = ""
    # For auth plugins: the field of the consumer's conf that identifies the consumer
    # ("key" for key-auth, "username" for basic-auth...). Used to index consumers.
    consumer_key_field: ClassVar[str | None] = None

    def check(self, conf: Any) -> None:
        """Extra checks beyond the schema; raise ValueError with the reason."""

    # Phases (defaults are no-ops, detected and skipped when compiling the chain).
    def rewrite(self, conf: Any, ctx: RequestContext) -> PhaseResult:
        return None

    def access(self, conf: Any, ctx: RequestContext) -> PhaseResult:
        return None

    def before_proxy(self, conf: Any, ctx: RequestContext) -> PhaseResult:
        return None

    def header_filter(self, conf: Any, ctx: RequestContext) -> None:
        return None

    def body_filter(self, conf: Any, ctx: RequestContext, chunk: bytes, eof: bool) -> bytes:
        return chunk

    def log(self, conf: Any, ctx: RequestContext) -> None:
        return None

    def init(self, attr: dict[str, Any]) -> None:
        """Called once per process with ``plugin_attr.<name>`` from config.yaml."""

    metadata: Any = None  # the latest plugin_metadata/<name>, decoded with metadata_schema

    def set_metadata(self, metadata: Any) -> None:
        """Called in every worker, off the request path, when ``plugin_metadata/<name>`` is
        loaded, changes or goes (None). The default keeps it in ``self.metadata``: the latest,
        for work off the request path (a batch sender); a request reads ``metadata_for``."""
        self.metadata = metadata

    def metadata_for(self, ctx: RequestContext) -> Any:
        """``plugin_metadata/<name>`` as it was in the runtime this request started with (a
        change that lands while the request awaits does not show up halfway through it)."""
        source = ctx.upstream_source
        if source is None:
            return self.metadata
        return source.plugin_metadata.get(self.name)

    def needs_body_buffer(self, conf: Any) -> bool:
        """True if body_filter needs the whole response body (it then gets it once, eof=True)."""
        return False

    def phase_method(self, phase: str, conf: Any) -> Any:
        """The callable that runs ``phase`` for ``conf`` (default: the method of that name), or
        None when this conf does not need the phase. A plugin may return a coroutine function
        only for the confs that need one (hmac-auth reads the request body only with
        ``validate_request_body``), so the other routes stay on the synchronous path."""
        return getattr(self, phase)

    async def aclose(self) -> None:
        """Release what the plugin holds in this process (client sessions, background tasks);
        awaited once when the worker stops gracefully."""


class Consumer:
    """A consumer as auth plugins see it: ``auth_conf`` is the decoded conf that matched."""

    __slots__ = (
        "auth_conf",
        "credential_id",
        "group_id",
        "header_edits",
        "labels",
        "plugins",
        "username",
        "version",
    )

    def __init__(
        self,
        username: str,
        auth_conf: Any,
        plugins: dict[str, Any],
        group_id: str | None = None,
        labels: dict[str, str] | None = None,
        version: int = 0,
        credential_id: str | None = None,
    ) -> None:
        self.username = username
        self.auth_conf = auth_conf
        self.credential_id = credential_id  # when the matching conf is a credential's
        self.plugins = plugins
        self.group_id = group_id
        self.labels = labels
        self.version = version
        # attach_consumer's upstream header edits, made at its first request (a consumer is
        # rebuilt when it changes)
        self.header_edits: ConsumerHeaders | None = None


class ConsumerHeaders:
    """The upstream header edits of one consumer (APISIX consumer.attach_consumer), made once:
    ``edits``: (name, lowercase name, clean value or None to remove); ``sets``: the edit list
    of a request that sent none of the names to remove (the usual case); ``drops``: those
    names, lowercase, as the client's fields hold them."""

    __slots__ = ("drop_lengths", "drops", "edits", "sets")

    def __init__(self, c: Consumer) -> None:
        custom_id = c.labels.get("custom_id") if c.labels else None
        self.edits = tuple(
            (name, name.lower(), wire_value(value) if value is not None else None)
            for name, value in (
                ("X-Consumer-Username", c.username),
                ("X-Credential-Identifier", c.credential_id),
                ("X-Consumer-Custom-Id", custom_id),
            )
        )
        self.sets: list[tuple[str, str | None, bool]] = [
            (name, value, False) for name, _, value in self.edits if value is not None
        ]
        self.drops = frozenset(ln.encode() for _, ln, value in self.edits if value is None)
        self.drop_lengths = frozenset(len(name) for name in self.drops)


def _apply(h: dict[str, str], lname: str, value: str | None, append: bool) -> None:
    """One upstream header edit on the header map (``RequestContext._header_op``'s rules)."""
    if value is None:
        h.pop(lname, None)
    elif append and lname in h:
        h[lname] = f"{h[lname]}, {value}"
    else:
        h[lname] = value


def request_length(ctx: RequestContext) -> int:
    """``ctx.request_length`` as a plain function: a log plugin that counts every request calls
    it without the property's descriptor call."""
    n = len(ctx.method) + len(ctx.request_uri) + 14  # "M U HTTP/1.1\r\n" + "\r\n"
    for k, v in ctx.raw_headers:
        n += len(k) + len(v) + 4  # "k: v\r\n"
    return n + ctx.request_body_bytes


class RouteIdentity(Protocol):
    """The matched route as plugins see it (``ctx.matched_route``): who it is, read-only."""

    @property
    def id(self) -> str: ...

    @property
    def key(self) -> str:
        """Its etcd key (``/apisix/routes/<id>``): what counters are scoped by."""
        ...

    @property
    def name(self) -> str | None: ...

    @property
    def service_id(self) -> str | None: ...

    @property
    def plugins(self) -> Mapping[str, Any]:
        """The raw plugin confs of the route merged with its service and plugin config."""
        ...


class ConsumerLookup(Protocol):
    """The consumers of the running config (``ctx.consumers``), as auth plugins find them."""

    def find(self, plugin: str, key: str) -> Consumer | None: ...

    @property
    def by_name(self) -> Mapping[str, Consumer]: ...

    @property
    def by_plugin(self) -> Mapping[str, Mapping[str, Consumer]]:
        """``find``'s tables: an auth plugin's consumers by key (one probe per request)."""
        ...


class UpstreamSource(Protocol):
    """The runtime a request started with, as plugins see it: what ``set_upstream`` resolves
    ids and inline confs with, and the ``plugin_metadata`` of that runtime."""

    @property
    def plugin_metadata(self) -> Mapping[str, Any]: ...

    def upstream_by_id(self, upstream_id: str) -> object | None: ...

    def inline_upstream(self, conf: Any) -> object | None: ...


class RequestContext:
    """Per-request state shared by the pipeline and plugins. Header names are lowercase."""

    __slots__ = (
        "_args",
        "_cookies",
        "_headers",
        "body_reader",
        "bytes_sent",
        "consumer",
        "consumer_name",
        "consumers",
        "host",
        "http_version",
        "matched_params",
        "matched_uri",
        "method",
        "path",
        "plugin_state",
        "query",
        "raw_headers",
        "remote_addr",
        "remote_port",
        "request_body_bytes",
        "request_uri",
        "resp_body_replaced",
        "resp_early",
        "resp_head",
        "resp_status",
        "route",
        "route_hosts",
        "route_id",
        "route_name",
        "scheme",
        "server_addr",
        "server_port",
        "service_id",
        "start_time",
        "up_body",
        "up_header_ops",
        "up_host",
        "up_method",
        "up_uri",
        "upstream_addr",
        "upstream_override",
        "upstream_response_time",
        "upstream_source",
        "upstream_status",
        "upstream_trailers",
        "vars_extra",
    )

    def __init__(
        self,
        method: str,
        request_uri: str,
        path: str,
        query: str,
        raw_headers: list[tuple[bytes, bytes]],
        host: str,
        remote_addr: str,
        remote_port: int,
        server_addr: str,
        server_port: int,
        scheme: str,
        start_time: float,
        http_version: str = "1.1",
    ) -> None:
        self.method = method
        self.http_version = http_version  # "1.1" or "1.0", as the client spoke
        self.request_uri = request_uri
        self.path = path
        self.query = query
        self.raw_headers = raw_headers
        self.host = host
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        self.server_addr = server_addr
        self.server_port = server_port
        self.scheme = scheme
        self.start_time = start_time
        self._headers: dict[str, str] | None = None
        self._args: dict[str, str] | None = None
        self._cookies: dict[str, str] | None = None
        # The server's compiled route: not plugin API (``matched_route`` is).
        self.route: Any = None
        self.route_id: str | None = None
        self.route_name: str | None = None
        self.service_id: str | None = None
        self.matched_params: dict[str, str] | None = None
        self.matched_uri: str | None = None
        self.route_hosts: tuple[str, ...] | None = None  # the matched route's hosts (lowercase)
        self.consumer: Consumer | None = None
        self.consumers: ConsumerLookup | None = None  # set by the pipeline
        self.upstream_source: UpstreamSource | None = None  # set by the pipeline
        # ``async (limit) -> bytes | None``: the pipeline's request body reader (None: no body).
        self.body_reader: Any = None
        self.upstream_override: Any = None  # what set_upstream chose: not plugin API
        self.consumer_name: str | None = None
        self.plugin_state: dict[str, Any] | None = None
        self.vars_extra: dict[str, Any] | None = None
        # Upstream request edits (None = unchanged).
        self.up_uri: str | None = None
        self.up_method: str | None = None
        self.up_host: str | None = None
        # (name as given, value or None to remove, append) in call order; the final values
        # are in ``headers``.
        self.up_header_ops: list[tuple[str, str | None, bool]] | None = None
        self.up_body: bytes | None = None  # a replaced request body (set_upstream_body)
        # Response (valid from header_filter on).
        self.resp_status = 0
        # The head header_filter plugins edit (the proxy sets it; ``resp_headers`` as text).
        self.resp_head: ResponseHead | None = None
        # Response headers set in access (``set_early_headers``): the answer's head gets them.
        self.resp_early: tuple[EarlyHeaders, ...] | None = None
        self.resp_body_replaced: bytes | None = None
        self.upstream_addr: str | None = None
        self.upstream_status: str | None = None
        # The upstream's trailers (HTTP/2: gRPC's grpc-status...), lowercase names; set before
        # the last body_filter call (eof).
        self.upstream_trailers: list[tuple[bytes, bytes]] | None = None
        # Set for the log phase: body bytes read from the client and sent to it, and the
        # seconds the answering upstream attempt took (nginx $upstream_response_time).
        self.request_body_bytes = 0
        self.bytes_sent = 0
        self.upstream_response_time: float | None = None

    # -- request ------------------------------------------------------------------------

    @property
    def headers(self) -> dict[str, str]:
        """Request headers, lowercase names; repeated headers joined with ', '. With the
        upstream edits plugins made (``up_header_ops``): decoded on first use, the edits made
        before it applied in their order (``attach_consumer`` records them without it)."""
        h = self._headers
        if h is None:
            h = {}
            for k, v in self.raw_headers:
                name = k.decode("latin-1").lower()
                val = v.decode("latin-1")
                h[name] = f"{h[name]}, {val}" if name in h else val
            for name, value, append in self.up_header_ops or ():
                _apply(h, name.lower(), value, append)
            self._headers = h
        return h

    @property
    def request_length(self) -> int:
        """nginx ``$request_length``: request line, headers and body, measured from the parsed
        request (the client's exact whitespace and line folding are not seen)."""
        return request_length(self)

    def get_header(self, name: str) -> str | None:
        """One request header (``headers``' value), found in the client's fields without
        decoding the others while no plugin asked for them all or edited one."""
        lname = name.lower()
        return self.header_by(lname, lname.encode() if lname.isascii() else None)

    def header_by(self, lname: str, wanted: bytes | None) -> str | None:
        """``get_header`` for a name prepared once (a plugin's conf): ``lname`` lowercase, and
        ``wanted`` its bytes (None when it is not ASCII: no client field can match it raw)."""
        if wanted is None or self._headers is not None or self.up_header_ops is not None:
            return self.headers.get(lname)
        # (a loop: for the few fields of a request, cheaper than C iterators over them)
        n = len(wanted)
        found: str | None = None
        for k, v in self.raw_headers:
            if len(k) == n and (k == wanted or k.lower() == wanted):
                val = v.decode("latin-1")
                found = val if found is None else f"{found}, {val}"
        return found

    @property
    def args(self) -> dict[str, str]:
        """Query arguments (first value wins, as nginx's $arg_x)."""
        a = self._args
        if a is None:
            a = {}
            for k, v in parse_qsl(self.query, keep_blank_values=True):
                a.setdefault(k, v)
            self._args = a
        return a

    @property
    def cookies(self) -> dict[str, str]:
        c = self._cookies
        if c is None:
            c = {}
            raw = self.headers.get("cookie")
            if raw:
                for part in raw.split(";"):
                    k, sep, v = part.strip().partition("=")
                    if sep and k not in c:
                        c[k] = v
            self._cookies = c
        return c

    def var(self, name: str) -> Any:
        """nginx/APISIX variables: arg_x, http_x, cookie_x, uri_param_x, uri, host, ..."""
        getter = _VARS.get(name)
        if getter is not None:
            return getter(self)
        if name.startswith("http_"):
            # nginx matches $http_x_y against X-Y and, with APISIX's underscores_in_headers,
            # against X_Y too.
            key = name[5:]
            found = self.headers.get(key.replace("_", "-"))
            return found if found is not None or "_" not in key else self.headers.get(key)
        if name.startswith("arg_"):
            return self.args.get(name[4:])
        if name.startswith("cookie_"):
            return self.cookies.get(name[7:])
        if name.startswith("uri_param_"):
            p = self.matched_params
            return p.get(name[10:]) if p else None
        extra = self.vars_extra
        return extra.get(name) if extra else None

    def set_var(self, name: str, value: Any) -> None:
        if self.vars_extra is None:
            self.vars_extra = {}
        self.vars_extra[name] = value

    async def read_body(self, limit: int) -> bytes | None:
        """The whole request body if it is at most ``limit`` bytes (b"" when there is none),
        else None. It is still sent to the upstream. Only in rewrite/access/before_proxy."""
        reader = self.body_reader
        if reader is None:
            return b""
        data: bytes | None = await reader(limit)
        return data

    # -- the matched route ---------------------------------------------------------------

    @property
    def matched_route(self) -> RouteIdentity | None:
        """The route this request matched (None before matching and on a 404)."""
        route: RouteIdentity | None = self.route
        return route

    def is_route_conf(self, conf: Any) -> bool:
        """``conf`` is the very object in the matched route's own chain (its plugins merged with
        its service and plugin config), not an equal one from a global rule or a consumer."""
        own = getattr(self.route, "own_chain", None)
        if own is None:
            return self.route is not None
        return any(e.conf is conf for e in (*own.rewrite, *own.access, *own.log))

    # -- consumers (auth plugins) -------------------------------------------------------

    def find_consumer(self, plugin: str, key: str) -> Consumer | None:
        """The consumer whose ``plugin`` conf has ``consumer_key_field`` == key."""
        index = self.consumers
        return index.find(plugin, key) if index is not None else None

    def consumer_by_name(self, username: str) -> Consumer | None:
        """The consumer called ``username`` (APISIX ``consumer.get_anonymous_consumer``)."""
        index = self.consumers
        return index.by_name.get(username) if index is not None else None

    def attach_consumer(self, consumer: Consumer) -> None:
        """Identify the request's consumer; its (and its group's) plugins then apply."""
        self.consumer = consumer
        self.consumer_name = consumer.username
        # APISIX consumer.attach_consumer: the upstream learns who called; a header the client
        # sent under these names is replaced or removed, never passed on.
        # (set_request_header for each, with names and values made once per consumer)
        plan = consumer.header_edits
        if plan is None:
            plan = consumer.header_edits = ConsumerHeaders(consumer)
        if self._headers is None and self.up_header_ops is None:
            # Nothing decoded or edited yet (the usual case): unless the client sent a name to
            # remove, the edits are the consumer's own list, and ``headers`` applies them if a
            # plugin asks for the map.
            drops = plan.drops
            lens = plan.drop_lengths  # (only a field of such a length is lowercased)
            for k, _ in self.raw_headers if drops else ():
                if len(k) in lens and k.lower() in drops:
                    break
            else:
                self.up_header_ops = plan.sets.copy()
                return
        h = self.headers
        ops = self.up_header_ops
        for name, lname, value in plan.edits:
            if value is not None:
                h[lname] = value
            elif lname in h:
                del h[lname]
            else:
                continue  # nothing to remove (the usual case): no edit at all
            if ops is None:
                ops = self.up_header_ops = []
            ops.append((name, value, False))

    # -- choosing another upstream (traffic-split) -------------------------------------

    def set_upstream(self, upstream_id: str | None = None, conf: Any = None) -> bool:
        """Send this request to another upstream: a configured one by id, or an inline
        upstream conf (a dict as in a route's ``upstream``; compiled once per conf and cached).
        False if the id does not exist or the conf is invalid."""
        source = self.upstream_source
        if source is None:
            return False
        up = source.upstream_by_id(upstream_id) if upstream_id is not None else None
        if upstream_id is None and conf is not None:
            up = source.inline_upstream(conf)
        if up is None:
            return False
        self.upstream_override = up
        return True

    # -- upstream request edits ---------------------------------------------------------

    def set_upstream_uri(self, uri: str) -> None:
        self.up_uri = uri

    def set_upstream_method(self, method: str) -> None:
        self.up_method = method

    def set_upstream_host(self, host: str) -> None:
        self.up_host = host

    def set_upstream_body(self, body: bytes) -> None:
        """Send ``body`` upstream instead of the client's (whose bytes are read and dropped),
        with its own Content-Length (APISIX ``ngx.req.set_body_data``). rewrite/access only."""
        self.up_body = body

    def set_request_header(self, name: str, value: str | None) -> None:
        """Set (replace) or, with None, remove a header sent to the upstream."""
        self._header_op(name, value, False)

    def add_request_header(self, name: str, value: str) -> None:
        self._header_op(name, value, True)

    def _header_op(self, name: str, value: str | None, append: bool) -> None:
        h = self.headers
        lname = name.lower()
        if value is not None:
            value = wire_value(value)
        elif lname not in h:
            return  # nothing to remove (attach_consumer's usual case): no edit at all
        if self.up_header_ops is None:
            self.up_header_ops = []
        self.up_header_ops.append((name, value, append))  # name as the plugin spelled it
        _apply(h, lname, value, append)

    # -- response (header_filter) -------------------------------------------------------

    @property
    def resp_headers(self) -> list[tuple[str, str]] | None:
        """The response head as (name, value) text (decoded on first use: the header methods
        below are cheaper when a plugin needs one header)."""
        head = self.resp_head
        return head.pairs() if head is not None else None

    @resp_headers.setter
    def resp_headers(self, pairs: list[tuple[str, str]] | None) -> None:
        self.resp_head = ResponseHead(pairs=pairs) if pairs is not None else None

    def get_response_header(self, name: str) -> str | None:
        head = self.resp_head
        return head.get(name.lower()) if head is not None else None

    def set_response_header(self, name: str, value: str | None) -> None:
        head = self.resp_head
        if head is None:
            head = self.resp_head = ResponseHead()
        head.set(name, wire_value(value) if value is not None else None)

    def set_response_headers(self, headers: Mapping[str, str | None]) -> None:
        """``set_response_header`` for each item, in one call (a group of headers, such as
        limit-count's quota headers)."""
        head = self.resp_head
        if head is None:
            head = self.resp_head = ResponseHead()
        head.set_all(headers, wire_value)

    def set_response_group(self, group: HeaderGroup, values: tuple[str, ...]) -> None:
        """``set_response_header`` for each of ``group``'s names with the value at its place:
        the names were checked once (a ``HeaderGroup`` is built with the plugin's conf)."""
        head = self.resp_head
        if head is None:
            head = self.resp_head = ResponseHead()
        joined = "".join(values)
        if not (joined.isprintable() and joined.isascii()):
            values = tuple(wire_value(v) for v in values)
        head.set_group(group, values)

    def set_early_headers(self, headers: EarlyHeaders) -> None:
        """Response headers known in access (APISIX ``core.response.set_header`` there): set
        on the answer whatever it is, the upstream's or a local one, replacing the
        upstream's headers of those names. The response writes them while it writes its head,
        with no header_filter phase; header_filter plugins see them as set already."""
        early = self.resp_early
        # a tuple: one entry (the usual case) is one small object, not a list and its items
        self.resp_early = (headers,) if early is None else (*early, headers)

    def get_upstream_trailer(self, name: str) -> str | None:
        """A trailer field of the upstream's response (gRPC's ``grpc-status``), or None. Known
        from the last body_filter call (``eof``) on; a plugin that needs it before it answers
        asks for the whole body (``needs_body_buffer``) and may then still set ``resp_status``
        there."""
        wanted = name.lower().encode("latin-1")
        for k, v in self.upstream_trailers or ():
            if k == wanted:
                return v.decode("latin-1")
        return None

    def add_response_header(self, name: str, value: str) -> None:
        head = self.resp_head
        if head is None:
            head = self.resp_head = ResponseHead()
        head.add(name, wire_value(value))


def var_getter(name: str) -> Callable[[RequestContext], Any]:
    """``ctx.var(name)`` as a function found once (a plugin's conf names the variable): the
    built-in variables' own getters skip the lookup per request."""
    getter = _VARS.get(name)
    if getter is not None:
        return getter
    if name.startswith("http_"):  # as ``RequestContext.var`` reads it, the names found once
        key = name[5:]
        dashed = key.replace("_", "-")
        if dashed == key:
            return lambda c: c.headers.get(key)

        def either(c: RequestContext) -> str | None:
            found = c.headers.get(dashed)
            return found if found is not None else c.headers.get(key)

        return either
    return lambda c: c.var(name)


def _request_line(c: RequestContext) -> str:
    return f"{c.method} {c.request_uri} HTTP/1.1"


def _addr_part(addr: str | None, i: int) -> str | None:
    """``host:port`` (IPv6 in brackets) -> the host (0) or the port (1)."""
    if not addr:
        return None
    host, _, port = addr.rpartition(":")
    if i:
        return port
    return host[1:-1] if host.startswith("[") else host


# (a plain attribute: the C-level ``attrgetter``, not a Python frame per call)
_VARS: dict[str, Callable[[RequestContext], Any]] = {
    "uri": attrgetter("path"),
    "request_uri": attrgetter("request_uri"),
    "host": attrgetter("host"),
    "remote_addr": attrgetter("remote_addr"),
    "remote_port": lambda c: str(c.remote_port),
    "server_addr": attrgetter("server_addr"),
    "server_port": lambda c: str(c.server_port),
    "request_method": attrgetter("method"),
    "scheme": attrgetter("scheme"),
    "query_string": lambda c: c.query or None,
    "args": lambda c: c.query or None,
    "is_args": lambda c: "?" if c.query else "",
    "request": _request_line,
    "route_id": attrgetter("route_id"),
    "route_name": attrgetter("route_name"),
    "service_id": attrgetter("service_id"),
    "consumer_name": attrgetter("consumer_name"),
    "matched_uri": attrgetter("matched_uri"),
    "http_host": lambda c: c.headers.get("host"),
    "content_type": lambda c: c.headers.get("content-type"),
    "content_length": lambda c: c.headers.get("content-length"),
    "upstream_addr": attrgetter("upstream_addr"),
    "server_protocol": lambda c: f"HTTP/{c.http_version}",
    # APISIX's balancer_ip / balancer_port: the node picked for this request
    "balancer_ip": lambda c: _addr_part(c.upstream_addr, 0),
    "balancer_port": lambda c: _addr_part(c.upstream_addr, 1),
    "upstream_status": attrgetter("upstream_status"),
    "upstream_response_time": lambda c: (
        f"{c.upstream_response_time:.3f}" if c.upstream_response_time is not None else None
    ),
    "request_length": lambda c: str(c.request_length),
    "status": lambda c: str(c.resp_status) if c.resp_status else None,
    "upstream_uri": lambda c: c.up_uri or c.request_uri,
}
