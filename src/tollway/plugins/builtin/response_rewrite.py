"""response-rewrite (APISIX priority 899): rewrite status, headers and body of the response.

``filters`` are ngx.re.sub / gsub on the body bytes, on RE2 (:mod:`tollway.regex`): ``replace`` may
insert groups (``$N``, ``${N}``, ``$$``), and ``options`` are ngx.re's letters (``i``, ``m``,
``s``, ``a``, ``d`` act; ``j``, ``o``, ``u``... change nothing; ``x`` is refused). A pattern RE2
cannot compile and, unlike APISIX (which fails at request time), a ``replace`` naming a group the
pattern lacks are refused when written."""

from __future__ import annotations

import base64
import gzip
import zlib
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tollway.plugins.builtin.interpolate import compile_template
from tollway.plugins.kit import PerConf, Plugin, RequestContext, header_names_error
from tollway.plugins.kit_match import (
    Regex,
    RegexError,
    Replacement,
    compile_expr,
    compile_regex,
    compile_replacement,
)

_PCRE_FLAGS = frozenset("adDijJmosuUx")


def _inflate(data: bytes) -> bytes:
    try:
        return zlib.decompress(data)  # zlib-wrapped, as HTTP's "deflate" means
    except zlib.error:
        return zlib.decompress(data, -zlib.MAX_WBITS)  # raw deflate, as some servers send


_DECODERS = {"gzip": gzip.decompress, "x-gzip": gzip.decompress, "deflate": _inflate}


class Filter(msgspec.Struct, forbid_unknown_fields=True):
    regex: Annotated[str, Meta(min_length=1)]
    replace: str
    scope: Literal["once", "global"] = "once"
    options: str = "jo"


class Conf(msgspec.Struct, forbid_unknown_fields=True):
    status_code: Annotated[int, Meta(ge=200, le=598)] | None = None
    body: str | None = None
    body_base64: bool = False
    headers: dict[str, Any] | None = None
    vars: list[Any] | None = None
    filters: Annotated[list[Filter], Meta(min_length=1)] | None = None
    max_resp_body_size: Annotated[int, Meta(ge=0)] = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.body is not None and self.filters is not None:
            raise ValueError("body and filters cannot be used together")
        if self.body is not None and self.body_base64:
            try:
                base64.b64decode(self.body, validate=True)
            except ValueError:
                raise ValueError("invalid base64 content") from None
        h = self.headers
        if h and not set(h) & {"add", "set", "remove"}:
            # the flat (old) form, checked as APISIX's check_schema does
            for field, value in h.items():
                if not field:
                    raise ValueError("invalid field length in header")
                if not isinstance(value, str | int | float) or isinstance(value, bool):
                    raise ValueError("invalid type as header value")
        err = header_names_error(h)
        if err is not None:
            raise ValueError(f'property "headers" validation failed: {err}')
        for f in self.filters or []:
            bad = next((c for c in f.options if c not in _PCRE_FLAGS), None)
            if bad is not None:  # ngx.re's option letters
                raise ValueError(
                    f'regex "{f.regex}" validation failed: '
                    f'unknown flag "{bad}" (flags "{f.options}")'
                )
            try:
                _filter(f)
            except RegexError as e:
                raise ValueError(f'regex "{f.regex}" validation failed: {e}') from None


def _filter(f: Filter) -> tuple[Regex, Replacement, int]:
    """A filter compiled: the regex, its replacement and how many matches to replace (0: all)."""
    rx = compile_regex(f.regex, options=f.options)
    return rx, compile_replacement(f.replace, rx.groups), 0 if f.scope == "global" else 1


class Compiled:
    __slots__ = ("add", "body", "filters", "remove", "set", "vars")

    def __init__(self, conf: Conf) -> None:
        self.vars = compile_expr(conf.vars) if conf.vars else None
        self.body: bytes | None = None
        if conf.body is not None:
            self.body = base64.b64decode(conf.body) if conf.body_base64 else conf.body.encode()
        h = conf.headers or {}
        if h and set(h) <= {"add", "set", "remove"}:
            add = h.get("add") or []
            set_ = h.get("set") or {}
            remove = h.get("remove") or []
        else:
            add, set_, remove = (
                [],
                {k: v for k, v in h.items() if v != ""},
                [k for k, v in h.items() if v == ""],
            )
        self.add = [tuple(x.split(":", 1)) for x in add if ":" in x]
        self.add = [(k.strip(), compile_template(v.strip())) for k, v in self.add]
        self.set = [(k, compile_template(str(v))) for k, v in set_.items()]
        self.remove = list(remove)
        self.filters = [_filter(f) for f in conf.filters or []]


_compiled = PerConf(Compiled)


class ResponseRewrite(Plugin):
    name = "response-rewrite"
    priority = 899
    schema = Conf

    def _applies(self, comp: Compiled, ctx: RequestContext) -> bool:
        return comp.vars is None or bool(comp.vars.eval(ctx.var))

    def header_filter(self, conf: Conf, ctx: RequestContext) -> None:
        comp = _compiled(conf)
        applies = self._applies(comp, ctx)
        ctx.set_var("_response_rewrite", applies)
        if not applies:
            return
        if conf.status_code is not None:
            ctx.resp_status = conf.status_code
        modifies = comp.body is not None or bool(comp.filters)
        if comp.filters and comp.body is None:
            # filters read the body: a gzip or deflate one is decoded first (APISIX 3.x);
            # one in another encoding is left alone, headers included
            encoding = (ctx.get_response_header("Content-Encoding") or "").strip().lower()
            if encoding and encoding not in _DECODERS:
                ctx.set_var("_response_rewrite", False)
                modifies = False
            elif encoding:
                ctx.set_var("_response_rewrite_encoding", encoding)
        if modifies:
            # APISIX clear_header_as_body_modified, before the header edits: the length (the
            # pipeline re-frames the body), the encoding and the cache validators of the
            # upstream's body no longer hold.
            for name in ("Content-Length", "Content-Encoding", "Last-Modified", "ETag"):
                ctx.set_response_header(name, None)
        for k, tpl in comp.add:
            ctx.add_response_header(k, tpl(ctx.var))
        for k, tpl in comp.set:
            ctx.set_response_header(k, tpl(ctx.var))
        for k in comp.remove:
            ctx.set_response_header(k, None)

    def needs_body_buffer(self, conf: Conf) -> bool:
        return bool(conf.filters)

    def phase_method(self, phase: str, conf: Conf) -> Any:
        if phase == "body_filter" and conf.body is None and not conf.filters:
            return None  # headers or status only: the body streams through untouched
        return super().phase_method(phase, conf)

    def body_filter(self, conf: Conf, ctx: RequestContext, chunk: bytes, eof: bool) -> bytes:
        if not ctx.var("_response_rewrite"):
            return chunk
        comp = _compiled(conf)
        if comp.body is not None:
            return comp.body if eof else b""
        if comp.filters and eof:
            encoding = ctx.var("_response_rewrite_encoding")
            if encoding:
                try:
                    chunk = _DECODERS[encoding](chunk)
                except (OSError, EOFError, zlib.error):
                    return chunk  # not what it said it was: passed on as it came
            for rx, repl, count in comp.filters:
                chunk = rx.sub_bytes(repl, chunk, count)[0]
            return chunk
        return chunk


PLUGINS = [ResponseRewrite]
