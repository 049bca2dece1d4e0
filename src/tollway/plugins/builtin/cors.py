"""cors (APISIX priority 4000): CORS response headers; every OPTIONS request is answered 200.

The rewrite phase answers any OPTIONS request with 200 and an empty body (APISIX does so whether
or not it is a preflight) and remembers the request's Origin; header_filter adds the headers to
whatever response goes out. An Origin that is not allowed simply gets no
``Access-Control-Allow-Origin`` (no rejection).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from tollway.plugins.kit import Exit, PerConf, Plugin, RequestContext
from tollway.plugins.kit_match import Regex, RegexError, compile_regex

ORIGINS_PATTERN = r"^(\*|\*\*|null|\w+://[^,]+(,\w+://[^,]+)*)$"
Origins = Annotated[str, Meta(pattern=ORIGINS_PATTERN)]
RegexList = Annotated[list[Annotated[str, Meta(min_length=1, max_length=4096)]], Meta(min_length=1)]
ALL_METHODS = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE"


class Conf(msgspec.Struct):
    allow_origins: Origins = "*"
    allow_methods: str = "*"
    allow_headers: str = "*"
    expose_headers: str | None = None
    max_age: int = 5
    allow_credential: bool = False
    allow_origins_by_regex: RegexList | None = None
    allow_origins_by_metadata: RegexList | None = None
    timing_allow_origins: Origins | None = None
    timing_allow_origins_by_regex: RegexList | None = None

    def __post_init__(self) -> None:
        if self.allow_credential and "*" in (
            self.allow_origins,
            self.allow_methods,
            self.allow_headers,
            self.expose_headers,
            self.timing_allow_origins,
        ):
            raise ValueError("you can not set '*' for other option when 'allow_credential' is true")
        for field in ("allow_origins_by_regex", "timing_allow_origins_by_regex"):
            rules = getattr(self, field)
            if rules is None:
                continue
            if len(set(rules)) != len(rules):
                raise ValueError("expected unique items but items are duplicated")
            try:
                for rule in rules:
                    compile_regex(rule)
                _regex(rules)  # OR-ed, as requests will run them (RE2 has a size limit)
            except RegexError as e:
                raise ValueError(f'property "{field}" validation failed: {e}') from None


class MetadataConf(msgspec.Struct):
    allow_origins: dict[str, Origins] | None = None


class Compiled:
    __slots__ = ("origins", "regex", "timing_origins", "timing_regex")

    def __init__(self, conf: Conf) -> None:
        self.origins = _origin_set(conf.allow_origins)
        self.regex = _regex(conf.allow_origins_by_regex)
        self.timing_origins = (
            _origin_set(conf.timing_allow_origins) if conf.timing_allow_origins else None
        )
        self.timing_regex = _regex(conf.timing_allow_origins_by_regex)


def _origin_set(origins: str) -> frozenset[str] | None:
    """A comma-separated list becomes a set to match exactly; ``*``/``**``/one origin: None."""
    return frozenset(origins.split(",")) if "," in origins else None


def _regex(rules: list[str] | None) -> Regex | None:
    # APISIX concatenates the rules with "|" and searches (ngx.re.find, unanchored); RE2 runs
    # them here (tollway.regex).
    return compile_regex("|".join(rules)) if rules else None


_compiled = PerConf(Compiled)


def allowed_origin(
    allow_origins: str, origins: frozenset[str] | None, req_origin: str | None
) -> str | None:
    """The Access-Control-Allow-Origin value for a request Origin under ``allow_origins``
    (APISIX ``process_with_allow_origins``), or None when the origin is not allowed."""
    value: str | None = allow_origins
    if allow_origins == "**":
        value = req_origin or "*"
    if origins is not None:
        return req_origin if req_origin in origins else None
    return value


def _matches(req_origin: str | None, allowed: str | None) -> bool:
    return allowed is not None and (allowed == "*" or req_origin == allowed)


def decide_origin(
    conf: Conf,
    comp: Compiled,
    req_origin: str | None,
    meta_origins: dict[str, str] | None = None,
) -> str | None:
    """The Allow-Origin to send, or None for none (APISIX cors): with
    ``allow_origins_by_metadata``, the origins ``plugin_metadata/cors`` lists under those keys,
    then ``allow_origins`` unless it is ``*``; without it, ``allow_origins``; the regexes when
    nothing matched. Only a value that is ``*`` or equals the Origin is sent."""
    allow: str | None = None
    if conf.allow_origins_by_metadata is not None:
        for key in conf.allow_origins_by_metadata:
            listed = (meta_origins or {}).get(key)
            if listed is not None and req_origin is not None:
                value = allowed_origin(listed, _origin_set(listed), req_origin)
                if _matches(req_origin, value):
                    return req_origin
        if conf.allow_origins != "*":
            allow = allowed_origin(conf.allow_origins, comp.origins, req_origin)
    elif conf.allow_origins_by_regex is None:
        allow = allowed_origin(conf.allow_origins, comp.origins, req_origin)
    if not _matches(req_origin, allow) and conf.allow_origins_by_regex is not None:
        rx = comp.regex
        allow = req_origin if req_origin is not None and rx and rx.search(req_origin) else None
    return allow if _matches(req_origin, allow) else None


def decide_timing_origin(conf: Conf, comp: Compiled, req_origin: str | None) -> str | None:
    if conf.timing_allow_origins_by_regex is not None:
        rx = comp.timing_regex
        if req_origin is not None and rx is not None and rx.search(req_origin):
            return req_origin
        return None
    if conf.timing_allow_origins is None:
        return None
    value = allowed_origin(conf.timing_allow_origins, comp.timing_origins, req_origin)
    return value if _matches(req_origin, value) else None


def cors_headers(
    conf: Conf,
    comp: Compiled,
    req_origin: str | None,
    request_headers: str | None,
    meta_origins: dict[str, str] | None = None,
) -> list[tuple[str, str]]:
    """The headers to add to the response, in order (``Vary`` is added, the rest are set)."""
    out: list[tuple[str, str]] = []
    if conf.allow_origins != "*":
        out.append(("Vary", "Origin"))
    allow = decide_origin(conf, comp, req_origin, meta_origins)
    if allow is not None:
        out.append(("Access-Control-Allow-Origin", allow))
        methods = ALL_METHODS if conf.allow_methods == "**" else conf.allow_methods
        out.append(("Access-Control-Allow-Methods", methods))
        out.append(("Access-Control-Max-Age", str(conf.max_age)))
        if conf.expose_headers:
            out.append(("Access-Control-Expose-Headers", conf.expose_headers))
        if conf.allow_headers != "**":
            out.append(("Access-Control-Allow-Headers", conf.allow_headers))
        elif request_headers is not None:
            out.append(("Access-Control-Allow-Headers", request_headers))
        if conf.allow_credential:
            out.append(("Access-Control-Allow-Credentials", "true"))
    timing = decide_timing_origin(conf, comp, req_origin)
    if timing is not None:
        out.append(("Timing-Allow-Origin", timing))
    return out


class Cors(Plugin):
    name = "cors"
    priority = 4000
    schema = Conf
    metadata_schema = MetadataConf

    def _meta_origins(self, ctx: RequestContext) -> dict[str, str] | None:
        meta = self.metadata_for(ctx)
        return meta.allow_origins if meta is not None else None

    def rewrite(self, conf: Conf, ctx: RequestContext) -> Exit:
        origin = ctx.get_header("origin")
        if ctx.method == "OPTIONS":
            # The headers go with the answer itself, so they are there even where no
            # header_filter runs for this chain (global rules).
            headers = cors_headers(
                conf,
                _compiled(conf),
                origin,
                ctx.get_header("access-control-request-headers"),
                self._meta_origins(ctx),
            )
            _state(ctx)[self.name] = _DONE
            return 200, None, dict(headers)
        # Kept before later plugins can change the request headers (APISIX does the same).
        _state(ctx)[self.name] = origin
        return None

    def header_filter(self, conf: Conf, ctx: RequestContext) -> None:
        state = ctx.plugin_state
        if state is not None and self.name in state:
            origin = state[self.name]
            if origin is _DONE:
                return
        else:  # rewrite did not run (an earlier plugin answered)
            origin = ctx.get_header("origin")
        headers = cors_headers(
            conf,
            _compiled(conf),
            origin,
            ctx.get_header("access-control-request-headers"),
            self._meta_origins(ctx),
        )
        for name, value in headers:
            if name == "Vary":
                ctx.add_response_header(name, value)
            else:
                ctx.set_response_header(name, value)


_DONE = object()


def _state(ctx: RequestContext) -> dict[str, object]:
    state = ctx.plugin_state
    if state is None:
        state = ctx.plugin_state = {}
    return state


PLUGINS = [Cors]
