"""proxy-rewrite (APISIX priority 1008): rewrite the upstream uri, method, host and headers."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tollway.plugins.builtin.interpolate import compile_template
from tollway.plugins.kit import Exit, PerConf, Plugin, RequestContext

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
                    err = _template_error(re.compile(pat), tpl)
                except re.error as e:
                    err = str(e)
                if err is not None:  # APISIX test-runs ngx.re.sub with the pair
                    raise ValueError(f"invalid regex_uri({pat}, {tpl}): {err}")


class Compiled:
    __slots__ = ("headers_add", "headers_remove", "headers_set", "regex", "uri")

    def __init__(self, conf: Conf) -> None:
        self.uri = compile_template(conf.uri) if conf.uri is not None else None
        rx = conf.regex_uri or []
        self.regex = [(re.compile(rx[i]), _template(rx[i + 1])) for i in range(0, len(rx), 2)]
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


def _template(t: str) -> tuple[str | int, ...]:
    """An APISIX replacement (``$1`` / ``${1}``, ``$$`` for a dollar) split once into literals
    and group numbers."""
    parts: list[str | int] = []
    pos = 0
    for m in _DOLLAR.finditer(t):
        ref = m.group(1) or "$"  # a lone "$" was refused when the conf was checked
        parts += (t[pos : m.start()], "$" if ref == "$" else int(ref.strip("{}")))
        pos = m.end()
    parts.append(t[pos:])
    return tuple(p for p in parts if p != "")


_DOLLAR = re.compile(r"\$(\d+|\{\d+\}|\$)?")


def _template_error(rx: re.Pattern[str], t: str) -> str | None:
    """Why ngx.re.sub would refuse the template ``t`` for ``rx`` (None: it is fine): a ``$``
    must start ``$N``, ``${N}`` or ``$$``, and N must be a group of the regex."""
    for m in _DOLLAR.finditer(t):
        ref = m.group(1)
        if ref is None:
            return "invalid capturing variable name"
        if ref != "$" and int(ref.strip("{}")) > rx.groups:
            return f"capture group {ref.strip('{}')} is out of range"
    return None


def _substitute(rx: re.Pattern[str], template: tuple[str | int, ...], path: str) -> str | None:
    """``path`` with the first match of ``rx`` replaced (ngx.re.sub), or None if none."""
    m = rx.search(path)
    if m is None:
        return None
    out = [path[: m.start()]]
    for p in template:
        out.append(p if isinstance(p, str) else (m.group(p) or ""))
    out.append(path[m.end() :])
    return "".join(out)


class ProxyRewrite(Plugin):
    name = "proxy-rewrite"
    priority = 1008
    schema = Conf

    def check(self, conf: Any) -> None:
        headers = conf.headers
        if headers and set(headers) <= {"add", "set", "remove"}:
            msgspec.convert(headers, Headers)

    def rewrite(self, conf: Conf, ctx: RequestContext) -> Exit:
        comp = _compiled(conf)
        var: Callable[[str], Any] = ctx.var
        if not conf.use_real_request_uri_unsafe:
            new_uri: str | None = None
            if comp.uri is not None:
                new_uri = comp.uri(var)
            elif comp.regex:
                for rx, template in comp.regex:
                    new_uri = _substitute(rx, template, ctx.path)
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
