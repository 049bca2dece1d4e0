"""Former home of the HTTP/1.1 constants and helpers, now in :mod:`tollway.httprules`.

Kept so that existing imports (a plugin imports ``IDEMPOTENT``-era names from here) go on working
until every importer uses ``tollway.httprules``.
"""

from __future__ import annotations

from tollway.httprules.fields import (
    HOP_BY_HOP,
    PLAIN_CONNECTION,
    RESPONSE_DROP,
    connection_tokens,
)
from tollway.httprules.methods import IDEMPOTENT
from tollway.httprules.status import (
    ERROR_PAGES,
    GATEWAY_STATUS_LINES,
    NGINX_REASONS,
    PLAIN_TEXT,
    REASONS,
    ROUTE_NOT_FOUND,
    SERVER_HEADER,
    STATUS_LINES,
    error_page,
    status_line,
)
from tollway.httprules.target import quote_path, target_bytes

__all__ = [
    "ERROR_PAGES",
    "GATEWAY_STATUS_LINES",
    "HOP_BY_HOP",
    "IDEMPOTENT",
    "NGINX_REASONS",
    "PLAIN_CONNECTION",
    "PLAIN_TEXT",
    "REASONS",
    "RESPONSE_DROP",
    "ROUTE_NOT_FOUND",
    "SERVER_HEADER",
    "STATUS_LINES",
    "connection_tokens",
    "error_page",
    "quote_path",
    "status_line",
    "target_bytes",
]
