"""A RequestContext for plugin unit tests (no socket, no pipeline)."""

from __future__ import annotations

from typing import Any

import msgspec

from tollway.plugins.kit import Consumer, RequestContext


def make_ctx(
    uri: str = "/",
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    remote_addr: str = "127.0.0.1",
    host: str = "example.com",
    scheme: str = "http",
) -> RequestContext:
    path, _, query = uri.partition("?")
    raw = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    return RequestContext(
        method, uri, path, query, raw, host, remote_addr, 50000, "127.0.0.1", 9080, scheme, 0.0
    )


class FakeIndex:
    """The kit's ConsumerLookup (the runtime's ConsumerIndex), reduced to what auth plugins
    call."""

    def __init__(self) -> None:
        self.by_plugin: dict[str, dict[str, Consumer]] = {}
        self.by_name: dict[str, Consumer] = {}

    def add(self, plugin: str, key: str, consumer: Consumer) -> None:
        self.by_plugin.setdefault(plugin, {})[key] = consumer
        self.by_name[consumer.username] = consumer

    def find(self, plugin: str, key: str) -> Consumer | None:
        return self.by_plugin.get(plugin, {}).get(key)


def decode(schema: Any, raw: dict[str, Any]) -> Any:
    return msgspec.convert(raw, schema)
