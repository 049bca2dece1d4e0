"""limit-count's configuration (``limit_count``): msgspec Structs live in a module mypyc does not
compile (``tollway.native``), whose class annotations msgspec reads."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from tollway.plugins.builtin.limit_redis import RedisFields, check_redis

PositiveOrVar = Annotated[int, Meta(gt=0)] | str
Policy = Literal["local", "redis", "redis-cluster", "redis-sentinel"]


class Rule(msgspec.Struct):
    count: PositiveOrVar
    time_window: PositiveOrVar
    key: str
    header_prefix: str | None = None


class Conf(RedisFields):
    count: PositiveOrVar | None = None
    time_window: PositiveOrVar | None = None
    rules: list[Rule] | None = None
    window_type: Literal["fixed", "sliding"] = "fixed"
    group: str | None = None
    key: str = "remote_addr"
    key_type: Literal["var", "var_combination", "constant"] = "var"
    rejected_code: Annotated[int, Meta(ge=200, le=599)] = 503
    rejected_msg: Annotated[str, Meta(min_length=1)] | None = None
    policy: Policy = "local"
    allow_degradation: bool = False
    show_limit_quota_header: bool = True
    sync_interval: float = -1

    def __post_init__(self) -> None:
        pair = self.count is not None and self.time_window is not None
        if pair == (self.rules is not None):
            # JSON schema oneOf: {required: [count, time_window]} | {required: [rules]}
            raise ValueError(
                "value should match only one schema, but matches "
                + ("both schemas 1 and 2" if pair else "none")
            )
        seen: set[str] = set()
        for rule in self.rules or ():
            if rule.key in seen:
                raise ValueError(f"duplicate key '{rule.key}' in rules")
            seen.add(rule.key)
        check_redis(self, self.policy)
        if self.policy != "local" and self.sync_interval != -1:
            if self.sync_interval < 0.1:
                raise ValueError("sync_interval should not be smaller than 0.1")
            if isinstance(self.time_window, int) and self.sync_interval >= self.time_window:
                raise ValueError("sync_interval should be smaller than time_window")


class MetadataConf(msgspec.Struct):
    limit_header: str = "X-RateLimit-Limit"
    remaining_header: str = "X-RateLimit-Remaining"
    reset_header: str = "X-RateLimit-Reset"


DEFAULT_HEADERS = MetadataConf()


class Window(msgspec.Struct, frozen=True):
    count: int
    time_window: int
    key: str
    headers: MetadataConf
