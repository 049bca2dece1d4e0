"""Request methods by their semantics.

Pure (no asyncio, no sockets).
"""

from __future__ import annotations

# RFC 9110 9.2.2: the idempotent methods (a retry after bytes reached the upstream is safe).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
