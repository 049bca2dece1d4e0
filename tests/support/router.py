"""A request as the pure router sees it, for unit tests (no sockets)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Req:
    path: str
    method: str = "GET"
    host: str = "localhost"
    remote_addr: str = "127.0.0.1"
    vars: dict[str, Any] = field(default_factory=dict)

    def var(self, name: str) -> Any:
        return self.vars.get(name)
