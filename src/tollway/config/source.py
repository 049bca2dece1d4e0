"""The ConfigSource interface: where config items come from.

A source delivers one full load, then incremental batches, to a ConfigSink. Every value is the raw
JSON bytes stored in etcd (or produced from apisix.yaml); ``None`` means the key was deleted.
Revisions are etcd revisions (for the yaml source: a counter bumped per file reload).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as read from the source. ``value`` is None for a deletion."""

    key: str
    value: bytes | None
    mod_revision: int = 0
    create_revision: int = 0


class ConfigSink(Protocol):
    def load(self, revision: int, kvs: list[KeyValue]) -> None:
        """A full load: ``kvs`` is every key under the prefix at ``revision``, in key order."""

    def apply(self, revision: int, changes: list[KeyValue]) -> None:
        """Incremental changes, in revision order, all at or below ``revision``."""


class ConfigSource(abc.ABC):
    """Runs until cancelled, feeding the sink. Must keep retrying on errors, never raise them."""

    @abc.abstractmethod
    async def run(self, sink: ConfigSink) -> None: ...

    async def aclose(self) -> None:
        return None
