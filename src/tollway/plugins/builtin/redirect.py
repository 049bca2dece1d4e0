"""redirect (APISIX priority 900): answer with a redirect to ``uri`` (``$var`` templates), to a
``regex_uri`` substitution, or from http to https.

``http_to_https`` answers 301 for GET/HEAD and 308 otherwise, to ``https://$host$request_uri``
with APISIX's ``plugin_attr.redirect.https_port`` (``Redirect.https_port``; omitted when unset or
443), which defaults to the first ``apisix.ssl.listen`` port (settings.plugin_attr).
``regex_uri`` is ngx.re.sub (``$N`` / ``${N}`` / ``$$``) on RE2 (:mod:`tollway.regex`); the pair is
checked when written, as APISIX test-runs ngx.re.sub with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import quote

import msgspec
from msgspec import Meta

from tollway.plugins.builtin.interpolate import compile_template
from tollway.plugins.kit import Exit, PerConf, Plugin, RequestContext
from tollway.plugins.kit_match import (
    Regex,
    RegexError,
    Replacement,
    compile_regex,
    compile_replacement,
)

_URI_PATTERN = r"(\\\$[0-9a-zA-Z_]+)|\$\{([0-9a-zA-Z_]+)\}|\$([0-9a-zA-Z_]+)|(\$|[^$\\]+)"


class Conf(msgspec.Struct):
    ret_code: Annotated[int, Meta(ge=200)] = 302
    uri: Annotated[str, Meta(min_length=2, pattern=_URI_PATTERN)] | None = None
    regex_uri: Annotated[list[str], Meta(min_length=2, max_length=2)] | None = None
    http_to_https: bool | None = None
    encode_uri: bool = False
    append_query_string: bool = False

    def __post_init__(self) -> None:
        given = [x is not None for x in (self.uri, self.regex_uri, self.http_to_https)]
        if sum(given) != 1:
            raise ValueError(
                "value should match only one schema, but matches "
                + ("none" if not any(given) else "more than one")
            )
        if self.regex_uri is not None:
            try:
                _pair(self.regex_uri)
            except RegexError as e:
                raise ValueError(f"invalid regex_uri({self.regex_uri[0]}), err: {e}") from None
        if self.http_to_https and self.append_query_string:
            raise ValueError(
                "only one of `http_to_https` and `append_query_string` can be configured."
            )


def _pair(regex_uri: list[str]) -> tuple[Regex, Replacement]:
    rx = compile_regex(regex_uri[0])
    return rx, compile_replacement(regex_uri[1], rx.groups)


class Compiled:
    __slots__ = ("regex", "uri")

    def __init__(self, conf: Conf) -> None:
        self.uri: Callable[[Callable[[str], Any]], str] | None = (
            compile_template(conf.uri) if conf.uri is not None else None
        )
        self.regex = _pair(conf.regex_uri) if conf.regex_uri is not None else None


_compiled = PerConf(Compiled)


def https_location(ctx: RequestContext, port: int | None) -> str:
    if port is None or port == 443 or not 0 < port <= 65535:
        return f"https://{ctx.host}{ctx.request_uri}"
    return f"https://{ctx.host}:{port}{ctx.request_uri}"


def location(conf: Conf, ctx: RequestContext) -> str | None:
    """The new location, or None when a ``regex_uri`` does not match (the request goes on)."""
    comp = _compiled(conf)
    if comp.uri is not None:
        new_uri = comp.uri(ctx.var)
    elif comp.regex is not None:
        rx, template = comp.regex
        sub = rx.sub(template, ctx.path)
        if sub is None:
            return None
        new_uri = sub
    else:
        return None
    qpos = new_uri.find("?")
    if conf.encode_uri:
        path, rest = (new_uri[:qpos], new_uri[qpos:]) if qpos >= 0 else (new_uri, "")
        new_uri = quote(path, safe="/:@!$&'()*+,;=-._~") + rest
    if conf.append_query_string and ctx.query:
        new_uri += ("&" if qpos >= 0 else "?") + ctx.query
    return new_uri


class Redirect(Plugin):
    name = "redirect"
    priority = 900
    schema = Conf
    https_port: int | None = None  # plugin_attr.redirect.https_port

    def init(self, attr: dict[str, Any]) -> None:
        port = attr.get("https_port")
        self.https_port = port if isinstance(port, int) else None

    def rewrite(self, conf: Conf, ctx: RequestContext) -> Exit:
        if conf.http_to_https:
            scheme = ctx.get_header("x-forwarded-proto") or ctx.scheme
            if scheme != "http":
                return None
            code = 301 if ctx.method in ("GET", "HEAD") else 308
            return code, None, {"Location": https_location(ctx, self.https_port)}
        new_uri = location(conf, ctx)
        if new_uri is None:
            return None
        return conf.ret_code, None, {"Location": new_uri}


PLUGINS = [Redirect]
