"""ua-restriction (APISIX priority 2999): allow or deny by User-Agent regexes (searched, on RE2:
:mod:`tollway.regex`)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from tollway.plugins.kit import Exit, PerConf, Plugin, RequestContext
from tollway.plugins.kit_match import Regex, RegexError, compile_regex

Patterns = Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(min_length=1)]


class Conf(msgspec.Struct):
    bypass_missing: bool = False
    allowlist: Patterns | None = None
    denylist: Patterns | None = None
    message: Annotated[str, Meta(min_length=1, max_length=1024)] = "Not allowed"

    def __post_init__(self) -> None:
        if (self.allowlist is None) == (self.denylist is None):
            raise ValueError(
                "value should match only one schema, but matches "
                + ("none" if self.allowlist is None else "both schemas 1 and 2")
            )
        for name in ("allowlist", "denylist"):
            for rule in getattr(self, name) or ():
                try:
                    compile_regex(rule)
                except RegexError as e:
                    raise ValueError(f"invalid {name}: {rule}: {e}") from None
        try:
            _compile(self)  # the rules OR-ed, as requests will run them (RE2 has a size limit)
        except RegexError as e:
            raise ValueError(f"invalid rules: {e}") from None


def _compile(conf: Conf) -> Regex:
    return compile_regex("|".join(f"(?:{r})" for r in (conf.allowlist or conf.denylist or ())))


_regex = PerConf(_compile)


def allowed(conf: Conf, user_agent: str | None) -> bool:
    if user_agent is None:
        return conf.bypass_missing
    hit = _regex(conf).search(user_agent)
    return hit if conf.allowlist is not None else not hit


class UaRestriction(Plugin):
    name = "ua-restriction"
    priority = 2999
    schema = Conf

    def access(self, conf: Conf, ctx: RequestContext) -> Exit:
        if allowed(conf, ctx.get_header("user-agent")):
            return None
        return 403, {"message": conf.message}


PLUGINS = [UaRestriction]
