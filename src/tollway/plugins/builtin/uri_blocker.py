"""uri-blocker (APISIX priority 2900): reject requests whose ``request_uri`` matches a rule.

The rules are OR-ed into one regex searched (unanchored) in the raw request URI, query included,
and then in the normalised one (path with dot segments resolved and escapes decoded, then the
query): ``/./internal/x`` cannot slip past ``^/internal/`` (APISIX's fix for CVE-2021-43557).
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
from msgspec import Meta

from tollway.plugins.kit import Exit, PerConf, Plugin, RequestContext

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
                re.compile(rule)
            except re.error as e:
                raise ValueError(f"failed to compile block rule {rule}: {e}") from None


def _compile(conf: Conf) -> re.Pattern[str] | None:
    flags = re.IGNORECASE if conf.case_insensitive else 0
    return re.compile("|".join(conf.block_rules), flags) if conf.block_rules else None


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
        if rx.search(raw) is None:
            if raw.startswith(path) and (len(raw) == len(path) or raw[len(path)] == "?"):
                return None  # already normal: nothing else to search (the common case)
            if rx.search(f"{path}?{ctx.query}" if ctx.query else path) is None:
                return None
        if conf.rejected_msg is not None:
            return conf.rejected_code, {"error_msg": conf.rejected_msg}
        return conf.rejected_code, None


PLUGINS = [UriBlocker]
