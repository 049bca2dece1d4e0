"""uri-blocker (APISIX priority 2900): reject requests whose ``request_uri`` matches a rule.

The rules are OR-ed into one regex searched (unanchored) in the raw request URI, query included,
and then in the normalised one (path with dot segments resolved and escapes decoded, then the
query): ``/./internal/x`` cannot slip past ``^/internal/`` (APISIX's fix for CVE-2021-43557).
The rules run on RE2 (:mod:`tollway.regex`): one RE2 cannot compile is refused when written.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from tollway.plugins.kit import Exit, PerConf, Plugin, RequestContext
from tollway.plugins.kit_match import Regex, RegexError, compile_regex

Rule = Annotated[str, Meta(min_length=1, max_length=4096)]


class Conf(msgspec.Struct):
    block_rules: list[Rule]
    rejected_code: Annotated[int, Meta(ge=200)] = 403
    rejected_msg: Annotated[str, Meta(min_length=1)] | None = None
    case_insensitive: bool = False

    def __post_init__(self) -> None:
        if len(set(self.block_rules)) != len(self.block_rules):
            raise ValueError('property "block_rules" validation failed: expected unique items')
        for rule in self.block_rules:
            try:
                compile_regex(rule)
            except RegexError as e:
                raise ValueError(f"failed to compile block rule {rule}: {e}") from None
        try:
            _compile(self)  # the rules OR-ed, as requests will run them (RE2 has a size limit)
        except RegexError as e:
            raise ValueError(f"failed to compile block rules: {e}") from None


def _compile(conf: Conf) -> Regex | None:
    if not conf.block_rules:
        return None
    return compile_regex("|".join(conf.block_rules), ignore_case=conf.case_insensitive)


_regex = PerConf(_compile)


class UriBlocker(Plugin):
    name = "uri-blocker"
    priority = 2900
    schema = Conf

    def rewrite(self, conf: Conf, ctx: RequestContext) -> Exit:
        rx = _regex(conf)
        if rx is None:
            return None
        raw, path = ctx.request_uri, ctx.path
        if not rx.search(raw):
            if raw.startswith(path) and (len(raw) == len(path) or raw[len(path)] == "?"):
                return None  # already normal: nothing else to search (the common case)
            if not rx.search(f"{path}?{ctx.query}" if ctx.query else path):
                return None
        if conf.rejected_msg is not None:
            return conf.rejected_code, {"error_msg": conf.rejected_msg}
        return conf.rejected_code, None


PLUGINS = [UriBlocker]
