"""proxy-rewrite (APISIX priority 1008): rewrite the upstream uri, method, host and headers.

``regex_uri`` pairs run as ngx.re.sub (first match, ``$N`` / ``${N}`` / ``$$`` templates) on RE2
(:mod:`tollway.regex`); a pattern RE2 cannot compile, or a template naming a group the pattern
lacks, is refused when written (APISIX test-runs ngx.re.sub with each pair)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tollway.plugins.builtin.interpolate import compile_template
from tollway.plugins.kit import Exit, PerConf, Plugin, RequestContext, header_names_error
from tollway.plugins.kit_match import (
    Regex,
    RegexError,
    Replacement,
    compile_regex,
    compile_replacement,
)

Method = Literal[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
    "MKCOL", "COPY", "MOVE", "PROPFIND", "LOCK", "UNLOCK",
]  # fmt: skip


class Headers(msgspec.Struct, forbid_unknown_fields=True):
    add: dict[str, str] | None = None
    set: dict[str, str] | None = None
    remove: list[str] | None = None


class Conf(msgspec.Struct):
    """APISIX 3.x's schema: other properties are allowed (and ignored)."""

    uri: Annotated[str, Meta(min_length=1, max_length=4096, pattern=r"^\/.*")] | None = None
    regex_uri: Annotated[list[str], Meta(min_length=2)] | None = None
    host: Annotated[str, Meta(pattern=r"^[0-9a-zA-Z-.]+(:\d{1,5})?$")] | None = None
    method: Method | None = None
    scheme: str | None = None
    headers: dict[str, Any] | None = None
    use_real_request_uri_unsafe: bool = False

    def __post_init__(self) -> None:
        if (
            self.uri is None
            and self.regex_uri is None
            and self.host is None
            and self.method is None
            and self.headers is None
            and not self.use_real_request_uri_unsafe
        ):
            raise ValueError("expect object to have at least 1 properties")
        if self.regex_uri is not None:
            if len(self.regex_uri) % 2:
                raise ValueError("The length of regex_uri should be an even number")
            pairs = self.regex_uri
            for pat, tpl in zip(pairs[::2], pairs[1::2], strict=True):
                try:
                    _pair(pat, tpl)
                except RegexError as e:  # APISIX test-runs ngx.re.sub with the pair
                    raise ValueError(f"invalid regex_uri({pat}, {tpl}): {e}") from None


class Compiled:
    __slots__ = ("headers_add", "headers_remove", "headers_set", "regex", "uri")

    def __init__(self, conf: Conf) -> None:
        self.uri = compile_template(conf.uri) if conf.uri is not None else None
        rx = conf.regex_uri or []
        self.regex = [_pair(rx[i], rx[i + 1]) for i in range(0, len(rx), 2)]
        h = conf.headers or {}
        add: dict[str, Any] = {}
        set_: dict[str, Any] = {}
        remove: list[str] = []
        if set(h) <= {"add", "set", "remove"} and h:
            add = h.get("add") or {}
            set_ = h.get("set") or {}
            remove = h.get("remove") or []
        else:  # legacy flat map: value "" removes the header
            for k, v in h.items():
                if v == "":
                    remove.append(k)
                else:
                    set_[k] = v
        self.headers_add = [(k, compile_template(str(v))) for k, v in add.items()]
        self.headers_set = [(k, compile_template(str(v))) for k, v in set_.items()]
        self.headers_remove = remove


def _pair(pattern: str, template: str) -> tuple[Regex, Replacement]:
    """One ``regex_uri`` pair compiled; raises RegexError."""
    rx = compile_regex(pattern)
    return rx, compile_replacement(template, rx.groups)


class ProxyRewrite(Plugin):
    name = "proxy-rewrite"
    priority = 1008
    schema = Conf

    def check(self, conf: Any) -> None:
        headers = conf.headers
        if headers and set(headers) <= {"add", "set", "remove"}:
            msgspec.convert(headers, Headers)
        err = header_names_error(headers)
        if err is not None:
            raise ValueError(f'property "headers" validation failed: {err}')

    def rewrite(self, conf: Conf, ctx: RequestContext) -> Exit:
        comp = _compiled(conf)
        var: Callable[[str], Any] = ctx.var
        if not conf.use_real_request_uri_unsafe:
            new_uri: str | None = None
            if comp.uri is not None:
                new_uri = comp.uri(var)
            elif comp.regex:
                for rx, template in comp.regex:
                    new_uri = rx.sub(template, ctx.path)
                    if new_uri is not None:
                        break
            if new_uri is not None:
                if ctx.query:
                    sep = "&" if "?" in new_uri else "?"
                    new_uri = f"{new_uri}{sep}{ctx.query}"
                ctx.set_upstream_uri(new_uri)
        if conf.method:
            ctx.set_upstream_method(conf.method)
        if conf.host:
            ctx.set_upstream_host(conf.host)
        for k, tpl in comp.headers_add:
            ctx.add_request_header(k, tpl(var))
        for k, tpl in comp.headers_set:
            ctx.set_request_header(k, tpl(var))
        for k in comp.headers_remove:
            ctx.set_request_header(k, None)
        return None


_compiled = PerConf(Compiled)


PLUGINS = [ProxyRewrite]
