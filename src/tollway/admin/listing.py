"""GET-list filters and paging (APISIX ``v3_adapter.lua``). Pure: a list of nodes in, the
filtered page and the total out.

Invariants: ``total`` counts after filtering and before paging; paging happens only when both
``page`` and ``page_size`` are numbers; paging sorts by ``createdIndex``, otherwise etcd key
order is kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from tollway.regex import RegexError, compile_regex

PAGE_SIZE_ERROR = "page_size must be between 10 and 500"


class PageSizeError(ValueError):
    """page_size outside [10, 500]: APISIX answers 400 with a plain-text body."""


def _number(text: str | None) -> float | None:
    """A finite number, else None (``inf``, ``nan``, ``1e400`` are no page numbers: int() of
    them raised, a 500)."""
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _search(pattern: str, text: Any) -> bool:
    if not isinstance(text, str):
        return False
    try:  # RE2 (tollway.regex): a filter in a query string cannot stall the Admin API
        return compile_regex(pattern).search(text)
    except RegexError:
        return False


def _matches(value: Any, args: Mapping[str, str], exact: dict[str, str]) -> bool:
    if not isinstance(value, dict):
        return not args.get("name") and "label" not in args and not args.get("uri") and not exact
    if "name" in args and not _search(args["name"], value.get("name")):
        return False
    if "label" in args:
        labels = value.get("labels")
        if not isinstance(labels, dict) or args["label"] not in labels:
            return False
    if "uri" in args:
        uris = [value.get("uri"), *(value.get("uris") or [])]
        if not any(_search(args["uri"], u) for u in uris):
            return False
    for key, want in exact.items():
        got = value.get(key)
        if got is None or str(got) != want:
            return False
    return True


def parse_filter(text: str | None) -> dict[str, str]:
    """``filter=service_id%3D1%26upstream_id%3D2`` (already url-decoded once by the query
    parser) -> {"service_id": "1", "upstream_id": "2"}; only these two keys are honoured."""
    if not text:
        return {}
    pairs = parse_qsl(text, keep_blank_values=True)
    return {k: v for k, v in pairs if k in ("service_id", "upstream_id")}


def filter_and_page(
    nodes: list[dict[str, Any]], args: Mapping[str, str], *, exact_filter: bool
) -> tuple[int, list[dict[str, Any]]]:
    """``nodes`` are ``{key, value, createdIndex, modifiedIndex}``. ``exact_filter``: the
    ``filter=`` argument applies (routes and stream_routes only)."""
    exact = parse_filter(args.get("filter")) if exact_filter else {}
    out = [n for n in nodes if _matches(n.get("value"), args, exact)]
    total = len(out)
    page = _number(args.get("page"))
    size = _number(args.get("page_size"))
    if page is None or size is None:
        return total, out
    if size < 10 or size > 500:
        raise PageSizeError(PAGE_SIZE_ERROR)
    page_i = max(int(page), 1) if page >= 1 else 1
    size_i = int(size)
    out.sort(key=lambda n: n.get("createdIndex", 0))
    start = (page_i - 1) * size_i
    return total, out[start : start + size_i]
